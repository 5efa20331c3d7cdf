"""The built-in connectors declare the optional capabilities the services ask for (`jetl.protocols`): a renamed or
removed method would silently switch a fast path or a feature off, since a caller asks the type."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from jetl import (
    ClickHouseLoader,
    ColumnTransformer,
    ConsoleLoader,
    DatabaseExtractor,
    DedupeTransformer,
    FileExtractor,
    FileLoader,
    FilterTransformer,
    LambdaTransformer,
    TypeTransformer,
)
from jetl.protocols import (
    ArrowLoader,
    ArrowTransformer,
    CountingLoader,
    IncrementalExtractor,
    InPlaceTransformer,
    JsonTransformer,
    MergingLoader,
    OpenableLoader,
    OutputFieldsTransformer,
    OutputSchemaTransformer,
    OutputTypesTransformer,
    PartitionedExtractor,
    ReachableLoader,
    SchemaCheckingLoader,
    SeekableExtractor,
    declares_fields,
    fields_out,
    keeps_cursor,
    takes_arrow,
)

CAPABILITIES = [
    ArrowLoader,
    ArrowTransformer,
    CountingLoader,
    IncrementalExtractor,
    InPlaceTransformer,
    JsonTransformer,
    MergingLoader,
    OpenableLoader,
    OutputFieldsTransformer,
    OutputSchemaTransformer,
    OutputTypesTransformer,
    PartitionedExtractor,
    ReachableLoader,
    SchemaCheckingLoader,
    SeekableExtractor,
]


class Row(BaseModel):
    id: int
    name: str


def declared(connector: object) -> set[str]:
    return {c.__name__ for c in CAPABILITIES if isinstance(connector, c)}


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: FileExtractor(str(tmp / "*.jsonl")), {"PartitionedExtractor", "IncrementalExtractor"}),
        (
            lambda tmp: DatabaseExtractor("postgresql://u@h/db", table="t", incremental_column="id"),
            {"PartitionedExtractor", "IncrementalExtractor", "SeekableExtractor"},
        ),
        (
            lambda tmp: TypeTransformer(Row),
            {
                "JsonTransformer",
                "InPlaceTransformer",
                "OutputFieldsTransformer",
                "OutputSchemaTransformer",
                "OutputTypesTransformer",
            },
        ),
        (
            lambda tmp: ColumnTransformer(rename={"a": "b"}),
            {"ArrowTransformer", "InPlaceTransformer", "OutputFieldsTransformer", "OutputTypesTransformer"},
        ),
        (lambda tmp: DedupeTransformer(["id"]), {"OutputFieldsTransformer", "OutputTypesTransformer"}),
        (lambda tmp: FilterTransformer(bool), {"OutputFieldsTransformer", "OutputTypesTransformer"}),
        (lambda tmp: LambdaTransformer(dict), set()),
        (
            lambda tmp: ClickHouseLoader("t", order_by=["id"]),
            {
                "ArrowLoader",
                "CountingLoader",
                "MergingLoader",
                "OpenableLoader",
                "ReachableLoader",
                "SchemaCheckingLoader",
            },
        ),
        (lambda tmp: FileLoader(tmp), {"ReachableLoader", "SchemaCheckingLoader"}),
        (lambda tmp: ConsoleLoader(), set()),
    ],
)
def test_each_connector_declares_what_it_implements(make: object, expected: set[str], tmp_path: Path) -> None:
    assert declared(make(tmp_path)) == expected  # type: ignore[operator]


def test_flags_are_read_with_their_capability(tmp_path: Path) -> None:
    """A capability whose value is a flag counts only when the flag is set, as configured."""
    assert keeps_cursor(FileExtractor(str(tmp_path / "*.jsonl")))
    assert not keeps_cursor(FileExtractor(str(tmp_path / "*.jsonl"), skip_loaded=False))
    assert not keeps_cursor(DatabaseExtractor("postgresql://u@h/db", table="t"))
    assert not keeps_cursor(object())
    assert takes_arrow(ColumnTransformer(rename={"a": "b"}))
    assert not takes_arrow(ColumnTransformer(add={"c": 1}))
    assert not takes_arrow(TypeTransformer(Row))


def test_output_fields_of_a_step_that_can_tell_and_of_one_that_cannot() -> None:
    assert fields_out(TypeTransformer(Row), None) == {"id", "name"}
    assert fields_out(ColumnTransformer(rename={"id": "key"}), frozenset({"id", "name"})) == {"key", "name"}
    assert not declares_fields(LambdaTransformer(dict))
    assert fields_out(LambdaTransformer(dict), frozenset({"id"})) is None


def test_a_file_loader_cannot_reach_a_folder_without_a_parent(tmp_path: Path) -> None:
    FileLoader(tmp_path / "new").reach()  # the first batch creates it
    with pytest.raises(OSError, match="neither the folder nor its parent exists"):
        FileLoader(tmp_path / "no" / "such").reach()
