"""Pipeline modules as text, for tests that write a pipelines folder and start the services on it."""

from __future__ import annotations


def file_pipeline(name: str, *, source: str = "INPUT/*.jsonl", batch_size: int | None = None) -> str:
    """The text of a pipeline module: the files of `source` (a FileExtractor path or glob) into a FileLoader at
    `OUTPUT`, records `Row(id: int, name: str)`. `INPUT` and `OUTPUT` are placeholders the test replaces with its
    folders."""
    batch = f", batch_size={batch_size}" if batch_size is not None else ""
    return f'''
from pydantic import BaseModel
from jetl import FileExtractor, FileLoader, Pipeline

class Row(BaseModel):
    id: int
    name: str

def register_pipelines():
    return [Pipeline(name="{name}", extractors=[FileExtractor("{source}")], loader=FileLoader("OUTPUT"),
                     schema=Row{batch})]
'''
