"""Whole-batch validation of records into plain dicts, without a model instance per record.

`TypeAdapter(list[Model]).validate_python(batch)` builds one model object per record, and the stages then turn
each back into a dict (`model_dump`). For a model of plain typed fields the same validation can run on the
model's own field schemas as a typed dict, straight to dicts:

    measured on 80k records of 6 fields (int, datetime, str x3, float), gc off, CPU time per record:
    validate_python(list[Model])            2850 ns      + model_dump each   4240 ns
    the model's fields as a typed dict       960 ns      (what `RecordsAdapter.validate_python` runs)

The result is the same dicts `model_dump()` gives, by construction: the shortcut is taken only for models whose
fields are plain data (numbers, strings, dates, decimals, UUIDs, enums, literals, containers of those, with their
constraints, defaults and aliases), with no validators, serializers, computed fields, custom `__init__` or
post-init hooks, nested models or `extra="allow"`. Anything else runs the model path. So does every batch the
shortcut rejects: errors always come from the model itself, with its messages and locations.

Clean batches of a model whose fields are bare `int`, `float`, `str`, `bool`, `date` or `datetime` (optional or not,
without constraints) can travel as Arrow IPC (`Batch.encoding == "arrow"`, see `RecordsAdapter.arrow_table`): the
loader then checks the table's schema instead of re-parsing and re-validating JSON, and inserts the columns as they
are. For such a model the two checks are the same: a typed column cannot hold a value of another type.

    measured per record (40k records of the benchmark's clean schema, CPU):
    JSON out:   validate rows 0.91 + orjson 0.36 us    loader: validate_json 2.5-3.4 + Arrow arrays 1.6 us
    Arrow out:  columns 0.35 + validate columns 0.17 + Arrow arrays 0.66 + IPC 0.01 us    loader: schema check
    (125 bytes a record as JSON, 49 as Arrow IPC)
"""

from __future__ import annotations

from functools import cached_property, lru_cache
from operator import itemgetter
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic_core import SchemaValidator
from pydantic_core import core_schema as cs

from jetl.errors import TerminalError

# Core-schema node types whose validation does not depend on the surrounding model, and whose validated values
# `model_dump()` returns as they are (and orjson encodes the way pydantic's JSON serializer does).
_PLAIN = {
    "int",
    "float",
    "str",
    "bool",
    "datetime",
    "date",
    "time",
    "decimal",
    "uuid",
    "literal",
    "enum",
    "none",
    "nullable",
    "default",
    "list",
    "dict",
    "tuple",
    "set",
    "frozenset",
}
# Keys of a schema node that hold nested schemas.
_NESTED = ("schema", "items_schema", "keys_schema", "values_schema")


# Arrow type per core-schema type of a bare field (a datetime is stored as UTC microseconds, naive ones read as UTC,
# as the ClickHouse loader reads them), and the keys such a schema may have besides its type (no constraints).
_ARROW = {"int": "int64", "float": "float64", "str": "string", "bool": "bool_", "date": "date32"}
_BARE = {"type", "metadata", "ref", "microseconds_precision"}


def _arrow_column(schema: dict[str, Any]) -> tuple[Any, bool] | None:
    """(pyarrow type, nullable) of a bare field, or None."""
    import pyarrow as pa

    if schema.get("type") == "default":
        schema = schema["schema"]
    nullable = schema.get("type") == "nullable"
    if nullable:
        schema = schema["schema"]
    kind = schema.get("type")
    if set(schema) - _BARE or schema.get("microseconds_precision", "truncate") != "truncate":
        return None
    if kind == "datetime":
        return pa.timestamp("us", tz="UTC"), nullable
    if kind in _ARROW:
        return getattr(pa, _ARROW[kind])(), nullable
    return None


# Field types Arrow's JSON reader parses to what pydantic's lax JSON validation gives, or refuses (a number for a
# string, a string for a number, an int beyond 64 bits, a float for an int: it refuses, pydantic coerces or accepts,
# so the batch goes pydantic's way). `date` is not here: the reader refuses date strings for a date32 column.
_JSON_READER = {"int", "float", "str", "bool", "datetime"}


HOURS_ONLY_OFFSET = "[+-][0-9]{2}$"
"""A timestamp ending in an offset of hours alone (`...T00:00:00+05`): Arrow's parser takes it, pydantic refuses it
(it wants `+05:00` or `+0500`). `arrow_from_json_lines` reads timestamp fields as text and sends a batch with any
such value pydantic's way (RE2 over the column: ~0.03 us a record, where a Python regex over the batch took 0.87)."""


def _json_lines(body: bytes, count: int) -> Any | None:
    """The `count` lines of a raw batch (`[` line `\n,` line ... `]`) as one newline-delimited buffer for Arrow's
    JSON reader, when every line opens an object, else None. Then no line is blank or `null`, which pydantic refuses
    as records and Arrow's reader would skip (letting a line of two objects keep the row count) or read as a row of
    nulls (or crash on, as the first line: pyarrow 26). The separators' commas and the brackets become spaces in a
    copy, found by numpy (0.03 us a record, where `bytes.replace` and two counts took 0.59)."""
    import numpy as np
    import pyarrow as pa

    data = np.frombuffer(body, dtype=np.uint8)
    if len(data) < 3 or data[1] != 123:  # `{`
        return None
    # A line read from a file keeps its own newline: a separator is a newline with a comma and a brace after it
    # (no line holds a newline but its last byte, so no other newline has a comma after it).
    newlines = np.flatnonzero(data[:-2] == 10)
    separators = newlines[data[newlines + 1] == 44]  # `,`
    if len(separators) != count - 1 or not (data[separators + 2] == 123).all():
        return None
    out = data.copy()
    out[0] = out[-1] = 32
    out[separators + 1] = 32
    return pa.py_buffer(out)


def _json_reader_field(schema: dict[str, Any]) -> bool:
    """Whether a field reads the same through Arrow's JSON reader: a bare type of `_JSON_READER`, not nullable unless
    its default is None (the reader cannot tell a missing key from a null; a null in a column that allows none sends
    the batch pydantic's way, which then says whether the key had a default)."""
    default = schema.get("type") == "default"
    if default:
        if set(schema) - {"type", "schema", "default", "metadata", "ref"} or "default" not in schema:
            return False
        nullable_default = schema["default"] is None
        schema = schema["schema"]
    if schema.get("type") == "nullable":
        if not (default and nullable_default) or set(schema) - {"type", "schema", "metadata", "ref"}:
            return False
        schema = schema["schema"]
    return schema.get("type") in _JSON_READER and not set(schema) - _BARE


def _plain(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    if kind not in _PLAIN or "serialization" in schema or schema.get("default_factory_takes_data"):
        return False
    for key in _NESTED:
        if key in schema and not _plain(schema[key]):
            return False
    if kind == "tuple":
        return all(_plain(s) for s in schema.get("items_schema", []))
    return True


def _fields_validator(model: type[BaseModel], by_alias: bool) -> SchemaValidator | None:
    """A list[typed dict] validator built from the model's field schemas, or None when it would not be exact."""
    schema: Any = getattr(model, "__pydantic_core_schema__", None)
    if not isinstance(schema, dict) or schema.get("type") != "model":
        return None  # model validators wrap the model schema; definitions mean nested or recursive models
    if schema.get("custom_init") or schema.get("post_init") or schema.get("root_model"):
        return None
    inner = schema.get("schema", {})
    if inner.get("type") != "model-fields" or inner.get("computed_fields"):
        return None
    decorators = model.__pydantic_decorators__
    if (
        decorators.validators
        or decorators.field_validators
        or decorators.root_validators
        or decorators.field_serializers
        or decorators.model_serializers
        or decorators.model_validators
        or decorators.computed_fields
    ):
        return None
    config = dict(schema.get("config") or {})
    if config.get("extra_fields_behavior") == "allow" or inner.get("extra_behavior") == "allow":
        return None
    fields: dict[str, Any] = {}
    for name, f in inner["fields"].items():
        if f.get("type") != "model-field" or f.get("serialization_exclude") or "exclude_if" in f:
            return None
        if by_alias and f.get("serialization_alias") not in (None, name):
            return None
        if not _plain(f["schema"]):
            return None
        fields[name] = cs.typed_dict_field(
            f["schema"], required=f["schema"]["type"] != "default", validation_alias=f.get("validation_alias")
        )
    # pydantic caches every string it reads from JSON by default ("all"); batch values are mostly unique (ids,
    # payloads), so the cache costs more than it saves: validate_json of a 40k-record batch of the benchmark,
    # per record: "all" 4.0 us, "keys" 2.8 us (orjson + validate_python 4.4 us). Only speed and memory differ.
    config.setdefault("cache_strings", "keys")
    core_config = cs.CoreConfig(**config)  # type: ignore[typeddict-item]
    td = cs.typed_dict_schema(
        fields, extra_behavior=inner.get("extra_behavior") or config.get("extra_fields_behavior"), config=core_config
    )
    return SchemaValidator(cs.list_schema(td), core_config)


class RecordsAdapter:
    """Validates a whole batch of records against a model and returns them as dicts (as `model_dump()` would)."""

    def __init__(self, model: type[BaseModel], *, by_alias: bool = False) -> None:
        self.model = model
        self.by_alias = by_alias
        self.adapter: TypeAdapter[list[Any]] = TypeAdapter(list[model])  # type: ignore[valid-type]
        self._fast = _fields_validator(model, by_alias)

    @cached_property
    def field_types(self) -> dict[str, Any]:
        """Per field, what its validation depends on (its core schema and the model's config), for a model on the
        fast path: a value validated under one of these is valid, as it is, under an equal one of another model
        (see `jetl.pipeline.output_types`). Empty off the fast path and by alias."""
        if self._fast is None or self.by_alias:
            return {}
        schema: Any = self.model.__pydantic_core_schema__
        config = {k: v for k, v in (schema.get("config") or {}).items() if k != "title"}  # a title only names
        return {name: (f["schema"], config) for name, f in schema["schema"]["fields"].items()}

    @property
    def fast(self) -> bool:
        """Whether batches skip the model instances (see the module docstring)."""
        return self._fast is not None

    def _dump(self, models: list[Any]) -> list[dict[str, Any]]:
        return [m.model_dump(by_alias=self.by_alias) for m in models]

    def validate_python(self, records: Any) -> list[dict[str, Any]]:
        """Validated records as dicts; raises the model's own ValidationError when some fail."""
        if self._fast is not None:
            try:
                out: list[dict[str, Any]] = self._fast.validate_python(records)
                return out
            except ValueError:  # ValidationError: let the model say what is wrong, in its own words
                pass
        return self._dump(self.adapter.validate_python(records))

    def validate_json(self, data: bytes) -> list[dict[str, Any]]:
        """Validated records as dicts, from a JSON array; raises the model's own ValidationError."""
        if self._fast is not None:
            try:
                out: list[dict[str, Any]] = self._fast.validate_json(data)
                return out
            except ValueError:
                pass
        return self._dump(self.adapter.validate_json(data))

    @cached_property
    def _arrow(self) -> tuple[Any, list[SchemaValidator], bool] | None:
        if self._fast is None or self.by_alias:
            return None
        import pyarrow as pa

        schema: Any = self.model.__pydantic_core_schema__
        config = cs.CoreConfig(**(schema.get("config") or {}))  # type: ignore[typeddict-item]
        inner = schema["schema"]
        fields, validators = [], []
        for name, f in inner["fields"].items():
            column = _arrow_column(f["schema"])
            if column is None or f.get("validation_alias") is not None:
                return None
            fields.append(pa.field(name, column[0], nullable=column[1]))
            validators.append(SchemaValidator(cs.list_schema(f["schema"]), config))
        # Validating column by column ignores keys the model does not name, as extra="ignore" (the default) does.
        by_column = (inner.get("extra_behavior") or config.get("extra_fields_behavior") or "ignore") == "ignore"
        return pa.schema(fields), validators, by_column

    @property
    def arrow_schema(self) -> Any | None:
        """The Arrow schema this model's batches travel in, or None when they travel as JSON (module docstring)."""
        return self._arrow[0] if self._arrow is not None else None

    def arrow_table(
        self, records: list[dict[str, Any]], *, validated: bool = False, trusted: frozenset[str] = frozenset()
    ) -> Any:
        """The records as an Arrow table of `arrow_schema`, validated column by column unless already `validated`
        (as `validate_python` returns them); the `trusted` columns hold values validated under these very field
        types already (`jetl.pipeline.output_types`), so they are not validated again (0.03-0.06 us a value).

        Raises ValueError, TypeError, KeyError or OverflowError when a record does not fit (a missing field, a value
        of another type): validate row by row then, to learn which record and why.
        """
        import pyarrow as pa

        if self._arrow is None:
            raise TypeError(f"{self.model.__name__} has no Arrow schema")
        schema, validators, by_column = self._arrow
        if not validated and not by_column:
            raise ValueError(f"{self.model.__name__} forbids extra fields: validate row by row")
        arrays = []
        for field, validator in zip(schema, validators, strict=True):
            values = list(map(itemgetter(field.name), records))  # 0.09 -> 0.07 us a value against a comprehension
            if not validated and field.name not in trusted:
                values = validator.validate_python(values)
            try:
                array = pa.array(values, type=field.type)
            except pa.ArrowException as exc:
                raise ValueError(f"field {field.name!r}: {exc}") from exc
            if array.null_count and not field.nullable:
                raise ValueError(f"field {field.name!r}: null")
            arrays.append(array)
        return pa.Table.from_arrays(arrays, schema=schema)

    @cached_property
    def _json_reader(self) -> Any | None:
        """Parse options for Arrow's JSON reader when it reads this model's batches to exactly what validating them
        gives (`arrow_from_json_lines`), else None."""
        if self._arrow is None:
            return None
        import pyarrow.json as pj

        schema: Any = self.model.__pydantic_core_schema__
        # Any setting (strict, allow_inf_nan, str_strip_whitespace, extra=forbid, ...) may change what validation
        # gives or refuses: only the defaults are known to match.
        extra = schema["schema"].get("extra_behavior")
        if set(schema.get("config") or {}) - {"title"} or extra not in (None, "ignore"):
            return None
        if not all(_json_reader_field(f["schema"]) for f in schema["schema"]["fields"].values()):
            return None
        import pyarrow as pa

        # timestamps are read as text, checked and then parsed (`arrow_from_json_lines`)
        explicit = pa.schema(
            [
                f.with_type(pa.string()) if pa.types.is_timestamp(f.type) else f
                for f in pa_schema_nullable(self._arrow[0])
            ]
        )
        return pj.ParseOptions(explicit_schema=explicit, unexpected_field_behavior="ignore")

    @property
    def reads_json_lines(self) -> bool:
        """Whether `arrow_from_json_lines` can take this model's batches."""
        return self._json_reader is not None

    def arrow_from_json_lines(self, body: bytes, count: int) -> Any | None:
        """A raw batch (`count` JSON lines joined by `messages.RAW_SEPARATOR` into an array) read by Arrow's JSON
        reader into the table of `arrow_schema` that validating it and `arrow_table` would give, or None whenever
        that is not certain: any line the reader refuses (a value pydantic would coerce, such as "12" for an int, or
        refuse), a null where the model allows none, a blank or `null` line, a line holding two objects, invalid
        UTF-8.
        The caller then validates the batch with pydantic (tests/services/transformer/test_arrow_json.py compares
        the two).

            measured on 30k raw lines of the benchmark's input read into its 6-field RawOrder (a flat pipeline of
            one TypeTransformer into ClickHouse), CPU per record, run_transformers end to end, same process:
            pydantic validate_json + arrow_table + IPC    3.3-3.8 us
            this (replace 0.38, checks 0.45, read 0.70, IPC)   1.7-1.9 us
        """
        options = self._json_reader
        if options is None or count < 1 or body[:1] != b"[" or body[-1:] != b"]":
            return None
        import pyarrow as pa
        import pyarrow.json as pj

        lines = _json_lines(body, count)
        if lines is None:  # not `count` lines joined by RAW_SEPARATOR, each opening an object
            return None
        schema = self._arrow[0] if self._arrow is not None else None
        read = pj.ReadOptions(use_threads=False, block_size=lines.size + 1)  # one block: one chunk, one thread
        try:
            table = pj.read_json(lines, read_options=read, parse_options=options)
            table.validate(full=True)  # the reader does not check UTF-8; pydantic refuses what is not
        except (pa.ArrowException, ValueError):
            return None
        if table.num_rows != count or schema is None:  # with no blank line, some line held two objects
            return None
        import pyarrow.compute as pc

        arrays = []
        for field, column in zip(schema, table.columns, strict=True):
            if column.null_count and not field.nullable:
                return None
            array = column.combine_chunks()
            if pa.types.is_timestamp(field.type):
                if pc.any(pc.match_substring_regex(array, HOURS_ONLY_OFFSET)).as_py():
                    return None
                try:
                    array = array.cast(field.type)  # the same ISO 8601 parser the reader uses for a timestamp
                except (pa.ArrowException, ValueError):
                    return None
            arrays.append(array)
        return pa.Table.from_arrays(arrays, schema=schema)

    def conform_arrow(self, table: Any) -> Any | None:
        """`table` as this model's Arrow table (its columns by name, in the schema's order, other columns left out as
        validation ignores unknown keys), or None unless that is exactly what validating its rows would give: every
        field's column present under the same type, and no null where the field allows none. For a model that
        `reads_json_lines` (bare types, default settings), where validating a value of the field's own type keeps
        it as it is."""
        import pyarrow as pa

        schema = self.arrow_schema
        if schema is None or not self.reads_json_lines:
            return None
        arrays = []
        for field in schema:
            if field.name not in table.column_names:
                return None
            column = table.column(field.name)
            if column.type != field.type or (column.null_count and not field.nullable):
                return None
            arrays.append(column.combine_chunks())
        return pa.Table.from_arrays(arrays, schema=schema)

    def check_arrow(self, table: Any) -> None:
        """Raise TerminalError unless `table` has exactly this model's Arrow schema, with no null where the model
        allows none (for a model with an Arrow schema, the same check as validating its rows)."""
        schema = self.arrow_schema
        if schema is None:
            raise TerminalError(f"{self.model.__name__} does not travel as Arrow (a field is not a bare type)")
        if not table.schema.equals(schema):
            raise TerminalError(f"Arrow batch does not match {self.model.__name__}: {table.schema} != {schema}")
        for field, column in zip(schema, table.columns, strict=True):
            if column.null_count and not field.nullable:
                raise TerminalError(f"{self.model.__name__}.{field.name}: {column.null_count} null(s)")


def pa_schema_nullable(schema: Any) -> Any:
    """`schema` with every field nullable (what the JSON reader takes: a missing key reads as null)."""
    import pyarrow as pa

    return pa.schema([f.with_nullable(True) for f in schema])


def to_ipc(table: Any) -> bytes:
    """An Arrow table as IPC stream bytes (uncompressed: 49 bytes a record of the benchmark, vs 125 as JSON)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def from_ipc(data: bytes) -> Any:
    """The Arrow table in IPC stream bytes."""
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


@lru_cache(maxsize=256)
def records_adapter(model: type[BaseModel], by_alias: bool = False) -> RecordsAdapter:
    """One adapter per model (building a validator costs milliseconds; a batch, microseconds per record)."""
    return RecordsAdapter(model, by_alias=by_alias)
