"""The built-in connectors declare the optional capabilities the services ask for (`jetl.protocols`): a renamed or
removed method would silently switch a fast path or a feature off, since a caller asks the type."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import pytest
from pydantic import BaseModel

import jetl
import jetl.protocols as protocols
from jetl.extractors.incremental import Incremental
from jetl.protocols import declares_fields, fields_out, keeps_cursor, takes_arrow

REQUIRED = {protocols.Extractor, protocols.Transformer, protocols.Loader}
CAPABILITIES = [
    c
    for c in vars(protocols).values()
    if Protocol in getattr(c, "__mro__", ()) and c is not Protocol and c not in REQUIRED
]


class Row(BaseModel):
    id: int
    name: str


def declared(connector: object) -> set[str]:
    return {c.__name__ for c in CAPABILITIES if isinstance(connector, c)}


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: jetl.FileExtractor(str(tmp / "*.jsonl")), {"PartitionedExtractor", "IncrementalExtractor"}),
        (
            lambda tmp: jetl.DatabaseExtractor("postgresql://u@h/db", table="t", incremental=Incremental("id")),
            {"PartitionedExtractor", "IncrementalExtractor", "SeekableExtractor"},
        ),
        (
            lambda tmp: jetl.HttpExtractor("https://api.example.com/x", incremental=Incremental("at", param="since")),
            {"PartitionedExtractor", "IncrementalExtractor", "SeekableExtractor"},
        ),
        (
            lambda tmp: jetl.TypeTransformer(Row),
            {
                "JsonTransformer",
                "InPlaceTransformer",
                "OutputFieldsTransformer",
                "OutputSchemaTransformer",
                "OutputTypesTransformer",
            },
        ),
        (
            lambda tmp: jetl.ColumnTransformer(rename={"a": "b"}),
            {"ArrowTransformer", "InPlaceTransformer", "OutputFieldsTransformer", "OutputTypesTransformer"},
        ),
        (lambda tmp: jetl.DedupeTransformer(["id"]), {"OutputFieldsTransformer", "OutputTypesTransformer"}),
        (lambda tmp: jetl.FilterTransformer(bool), {"OutputFieldsTransformer", "OutputTypesTransformer"}),
        (lambda tmp: jetl.LambdaTransformer(dict), set()),
        (
            lambda tmp: jetl.ClickHouseLoader("t", order_by=["id"]),
            {
                "ArrowLoader",
                "CountingLoader",
                "EvolvingLoader",
                "ExclusiveLoader",
                "KeyedLoader",
                "LineageLoader",
                "MergingLoader",
                "OpenableLoader",
                "QueryableLoader",
                "ReachableLoader",
                "SchemaCheckingLoader",
                "VersionedLoader",
            },
        ),
        (
            lambda tmp: jetl.FileLoader(tmp),
            {
                "EvolvingLoader",
                "KeyedLoader",
                "LineageLoader",
                "ReachableLoader",
                "SchemaCheckingLoader",
                "VersionedLoader",
            },
        ),
        (
            lambda tmp: jetl.PostgresLoader("t", dsn="postgresql://postgres@127.0.0.1/test"),
            {
                "ArrowLoader",
                "CountingLoader",
                "EvolvingLoader",
                "KeyedLoader",
                "LineageLoader",
                "MergingLoader",
                "QueryableLoader",
                "ReachableLoader",
                "SchemaCheckingLoader",
                "VersionedLoader",
            },
        ),
        (
            lambda tmp: jetl.IcebergLoader("t", warehouse=tmp),
            {
                "CountingLoader",
                "KeyedLoader",
                "LineageLoader",
                "ReachableLoader",
                "SchemaCheckingLoader",
                "VersionedLoader",
            },
        ),
        (lambda tmp: jetl.ConsoleLoader(), {"EvolvingLoader"}),
    ],
)
def test_each_connector_declares_what_it_implements(make: object, expected: set[str], tmp_path: Path) -> None:
    assert declared(make(tmp_path)) == expected  # type: ignore[operator]


def test_flags_are_read_with_their_capability(tmp_path: Path) -> None:
    """A capability whose value is a flag counts only when the flag is set, as configured."""
    assert keeps_cursor(jetl.FileExtractor(str(tmp_path / "*.jsonl")))
    assert not keeps_cursor(jetl.FileExtractor(str(tmp_path / "*.jsonl"), skip_loaded=False))
    assert not keeps_cursor(jetl.DatabaseExtractor("postgresql://u@h/db", table="t"))
    assert not keeps_cursor(object())
    assert takes_arrow(jetl.ColumnTransformer(rename={"a": "b"}))
    assert not takes_arrow(jetl.ColumnTransformer(add={"c": 1}))
    assert not takes_arrow(jetl.TypeTransformer(Row))


def test_output_fields_of_a_step_that_can_tell_and_of_one_that_cannot() -> None:
    assert fields_out(jetl.TypeTransformer(Row), None) == {"id", "name"}
    assert fields_out(jetl.ColumnTransformer(rename={"id": "key"}), frozenset({"id", "name"})) == {"key", "name"}
    assert not declares_fields(jetl.LambdaTransformer(dict))
    assert fields_out(jetl.LambdaTransformer(dict), frozenset({"id"})) is None


def test_a_file_loader_cannot_reach_a_folder_without_a_parent(tmp_path: Path) -> None:
    jetl.FileLoader(tmp_path / "new").reach()  # the first batch creates it
    with pytest.raises(OSError, match="neither the folder nor its parent exists"):
        jetl.FileLoader(tmp_path / "no" / "such").reach()
