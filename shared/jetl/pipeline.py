"""A pipeline: extractors, transformers, a loader, a record schema and a schedule, declared as plain Python."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter

from jetl.errors import ConfigError
from jetl.protocols import (
    DISPOSITIONS,
    ConfirmingExtractor,
    Deletes,
    Disposition,
    EvolvingLoader,
    Extractor,
    KeyedLoader,
    Loader,
    OutputTypesTransformer,
    SchemaCheckingLoader,
    Transformer,
    VersionedLoader,
    WriteCheckingExtractor,
    WriteSpec,
    fields_out,
    keeps_cursor,
)
from jetl.schedule import Cron
from jetl.subjects import check_token


def schema_hash(model: type[BaseModel]) -> str:
    """A short stable hash of a record model's JSON schema: batches carry it so a stage can tell drift."""
    text = json.dumps(model.model_json_schema(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def output_fields(transformers: Sequence[Transformer]) -> frozenset[str] | None:
    """The field names the transformer chain emits, when every step can tell (output_fields/output_schema)."""
    fields: frozenset[str] | None = None
    for t in transformers:
        fields = fields_out(t, fields)  # None after an opaque step (a lambda): unknown before a run
    return fields


def output_types(transformers: Sequence[Transformer]) -> dict[str, Any]:
    """The fields the transformer chain emits already validated, with what their validation depended on
    (`RecordsAdapter.field_types`): each step that can tell (`output_types`) says which of its input's validated
    fields it hands on unchanged, under which names, and which it validates itself; any other step, none."""
    types: dict[str, Any] = {}
    for t in transformers:
        types = t.output_types(types) if isinstance(t, OutputTypesTransformer) else {}
    return types


def required_inputs(model: type[BaseModel]) -> dict[str, frozenset[str]]:
    """Per required field of `model`, the input keys that can fill it (its name and/or its alias)."""
    by_name = bool(model.model_config.get("populate_by_name") or model.model_config.get("validate_by_name"))
    out: dict[str, frozenset[str]] = {}
    for name, f in model.model_fields.items():
        if not f.is_required() or not isinstance(f.validation_alias, str | None):
            continue  # optional, or AliasChoices/AliasPath: a flat field name cannot be checked against those
        alias = f.validation_alias if isinstance(f.validation_alias, str) else f.alias
        out[name] = frozenset({alias, name} if alias and by_name else {alias or name})
    return out


SchemaContract = Literal["evolve", "freeze", "discard_row", "discard_value"]
SCHEMA_CONTRACTS: tuple[str, ...] = ("evolve", "freeze", "discard_row", "discard_value")
"""The contracts (`Pipeline.schema_contract`, docs/schema.md)."""


@dataclass(frozen=True)
class Contract:
    """A schema contract per field: `default` for the pipeline's drift, `fields` for some fields of its input model
    (by path, nested ones joined by dots; a field's mode covers what is nested in it). A field a record holds that
    the model does not know (a new one) takes the mode of the model field it is nested in, else `default`.

    `Contract("freeze", {"notes": "discard_value"})`: a batch is held when any field but `notes` drifts, and a
    mistyped `notes` value is dropped from its record. A mode of None reports the field's drift only. `evolve` is
    the whole pipeline's (`schema_contract="evolve"`), never one field's."""

    default: SchemaContract | None = None
    fields: Mapping[str, SchemaContract | None] = field(default_factory=dict)

    def mode_of(self, path: str) -> SchemaContract | None:
        """The mode of the drift at `path`: its own, else the nearest enclosing field's, else the default."""
        while True:
            if path in self.fields:
                return self.fields[path]
            if "." not in path:
                return self.default
            path = path.rsplit(".", 1)[0]

    def __str__(self) -> str:
        return "; ".join([str(self.default), *(f"{k}: {v}" for k, v in self.fields.items())])


@dataclass
class Pipeline:
    """One pipeline. Build it in `register_pipelines()` of a `pipelines/<name>_pipeline.py` module."""

    name: str
    extractors: Sequence[Extractor]
    loader: Loader
    schema: type[BaseModel]
    transformers: Sequence[Transformer] = ()
    schedule: Cron | None = None
    batch_size: int = 10_000
    description: str = ""
    source_file: str = ""
    code_hash: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    primary_key: Sequence[str] = ()
    """Schema fields naming a row: with a key, loading a row again replaces it (the loader merges by key), so a row
    extracted twice is one row in the destination. Without one, loads append: a row extracted twice is there twice."""
    disposition: Disposition | None = None
    """How a run's rows land (`jetl.protocols.Disposition`): append, merge, replace or history. Default: merge with
    a primary key, append without one."""
    deletes: Deletes | str | None = None
    """Which records are delete markers (a bool field's name, or `Deletes(field, value)`): under merge a marker
    removes its key, under history it closes it."""
    schema_contract: SchemaContract | Contract | None = None
    """What a batch whose records drift from the input model becomes (docs/schema.md): None, drift is reported and
    the model decides as ever (new fields are ignored, values it refuses are dead-lettered); "freeze", the batch is
    held whole in the dead-letter stream and the run fails naming the drift; "discard_row", drifted records are
    dropped (counted as filtered); "discard_value", new fields' and mistyped values are dropped, the records kept;
    "evolve", new fields become columns and types widen (`jetl.evolution`), each change a migration. A `Contract`
    gives fields their own mode beside the pipeline's.
    Every record of every batch is checked under a contract; without one, a clean batch is sampled."""

    def __post_init__(self) -> None:
        check_token(self.name, "pipeline name")
        if isinstance(self.extractors, Extractor):
            self.extractors = [self.extractors]
        if not self.extractors:
            raise ConfigError(f"pipeline {self.name!r}: declare at least one extractor")
        for ex in self.extractors:
            if not isinstance(ex, Extractor):
                raise ConfigError(f"pipeline {self.name!r}: {ex!r} does not implement the Extractor protocol")
        for tr in self.transformers:
            if not isinstance(tr, Transformer):
                raise ConfigError(f"pipeline {self.name!r}: {tr!r} does not implement the Transformer protocol")
        if not isinstance(self.loader, Loader):
            raise ConfigError(f"pipeline {self.name!r}: {self.loader!r} does not implement the Loader protocol")
        if not (isinstance(self.schema, type) and issubclass(self.schema, BaseModel)):
            raise ConfigError(f"pipeline {self.name!r}: schema must be a pydantic model class")
        if not 1 <= self.batch_size <= 1_000_000:
            raise ConfigError(f"pipeline {self.name!r}: batch_size must be between 1 and 1,000,000")
        self._merge_by_key()
        self._check_contract()
        if isinstance(self.loader, SchemaCheckingLoader):
            self.loader.check_schema(self.schema)
        self._check_output_fields()

    @property
    def contract(self) -> Contract | None:
        """The schema contract, per field (a pipeline-wide mode is a `Contract` with no fields)."""
        c = self.schema_contract
        return c if isinstance(c, Contract) or c is None else Contract(c)

    @property
    def write_spec(self) -> WriteSpec:
        """How the loader writes and reads back this pipeline's rows."""
        deletes = Deletes(self.deletes) if isinstance(self.deletes, str) else self.deletes
        return WriteSpec(self.disposition or "append", tuple(self.primary_key), deletes)

    def _merge_by_key(self) -> None:
        """Tell the loader its disposition (one row per primary key under merge); fail at start-up when it cannot."""
        if isinstance(self.primary_key, str):
            self.primary_key = [self.primary_key]
        self.primary_key = list(self.primary_key)
        if self.disposition is None:
            self.disposition = "merge" if self.primary_key else "append"
        where = f"pipeline {self.name!r}"
        if self.disposition not in DISPOSITIONS:
            raise ConfigError(f"{where}: disposition must be one of {list(DISPOSITIONS)}, got {self.disposition!r}")
        unknown = [k for k in self.primary_key if k not in self.schema.model_fields]
        if unknown:
            raise ConfigError(f"{where}: primary_key field {unknown[0]!r} is not a field of {self.schema.__name__}")
        spec = self.write_spec
        if spec.disposition in ("merge", "history") and not spec.key:
            raise ConfigError(f"{where}: disposition {spec.disposition!r} needs a primary_key")
        if spec.deletes is not None:
            if spec.disposition not in ("merge", "history"):
                raise ConfigError(f"{where}: delete markers apply to merge and history, not {spec.disposition!r}")
            if spec.deletes.field not in self.schema.model_fields:
                raise ConfigError(
                    f"{where}: the delete marker {spec.deletes.field!r} is not a field of {self.schema.__name__}"
                )
        for extractor in self.extractors:
            if isinstance(extractor, WriteCheckingExtractor):
                extractor.check_write(spec)
            if isinstance(extractor, ConfirmingExtractor) and len(self.extractors) > 1:
                # its run reads a log up to a marker and tells the source once every batch is published: a sibling
                # that reads whole (or plans its shares apart) would split what one run confirms (docs/cdc.md)
                raise ConfigError(
                    f"{where}: {type(extractor).__name__} reads a change log and must be the pipeline's only "
                    "extractor: one pipeline per table (docs/cdc.md)"
                )
        if isinstance(self.loader, VersionedLoader):
            self.loader.write_as(spec)
        elif spec.disposition == "merge" and spec.deletes is None and isinstance(self.loader, KeyedLoader):
            self.loader.merge_on(list(spec.key))
        elif spec.disposition != "append":
            raise ConfigError(
                f"{where}: {self.loader!r} cannot keep one row per key or write the {spec.disposition!r} disposition; "
                "use a ClickHouseLoader or a FileLoader, or declare no primary_key (append mode)"
            )

    def _check_contract(self) -> None:
        """Fail at start-up on a contract that is not one, or one with no model to hold the records to."""
        from jetl.transformers.type_ import TypeTransformer

        where = f"pipeline {self.name!r}"
        if isinstance(self.schema_contract, Contract) and not self.schema_contract.fields:
            self.schema_contract = self.schema_contract.default  # one mode for the pipeline: said as its name
        contract = self.contract
        if contract is None:
            return
        modes = [contract.default, *contract.fields.values()]
        bad = next((m for m in modes if m is not None and m not in SCHEMA_CONTRACTS), None)
        if bad is not None:
            raise ConfigError(
                f"{where}: schema_contract must be one of {list(SCHEMA_CONTRACTS)} or a Contract of them, got {bad!r}"
            )
        if contract.fields and "evolve" in modes:
            raise ConfigError(
                f"{where}: 'evolve' is the whole pipeline's contract (schema_contract=\"evolve\"), not one field's "
                "beside others"
            )
        if self.transformers and not isinstance(self.transformers[0], TypeTransformer):
            raise ConfigError(
                f"{where}: a schema_contract holds raw records to the model of a leading TypeTransformer, or to the "
                "schema when there are no transformers; this pipeline has neither"
            )
        if self.schema_contract == "evolve":
            t = self.transformers
            first = t[0] if t else None
            if isinstance(first, TypeTransformer) and (len(t) > 1 or first.model is not self.schema or first.by_alias):
                raise ConfigError(
                    f"{where}: schema_contract 'evolve' evolves the schema, so the records must be read by it: no "
                    "transformers, or one TypeTransformer of the schema (without by_alias)"
                )
            if any(f.alias or f.validation_alias for f in self.schema.model_fields.values()):
                raise ConfigError(f"{where}: schema_contract 'evolve' names columns by the records' keys: no aliases")
            if not isinstance(self.loader, EvolvingLoader):
                raise ConfigError(f"{where}: schema_contract 'evolve': {self.loader!r} cannot evolve its destination")
        if contract.fields:
            self._check_contract_fields(contract)

    def input_model(self) -> tuple[type[BaseModel], bool] | None:
        """The model the raw records are checked against (schema drift, contracts), with whether its fields are read
        by alias: the first transformer's when that is a TypeTransformer, the schema's when there are no
        transformers; None otherwise (transformers shape the records before any model sees them, and no model says
        what they should be)."""
        from jetl.transformers.type_ import TypeTransformer

        first = self.transformers[0] if self.transformers else None
        if isinstance(first, TypeTransformer):
            return first.model, first.by_alias
        if not self.transformers:
            return self.schema, False
        return None

    def _check_contract_fields(self, contract: Contract) -> None:
        """Fail at start-up on a per-field mode for a field the input model does not have (a typo would otherwise
        leave the field under the default mode without a word)."""
        from jetl.transformers.shape import model_paths

        model = self.input_model()
        assert model is not None  # _check_contract refused a contract without one
        known = model_paths(*model)
        for path in contract.fields:
            if path not in known:
                raise ConfigError(
                    f"pipeline {self.name!r}: schema_contract names field {path!r}, which its input model "
                    f"{model[0].__name__} does not have (its fields: {', '.join(known)})"
                )

    def _check_output_fields(self) -> None:
        """Fail at start-up when the transformers' last known output lacks a field the schema requires."""
        fields = output_fields(self.transformers)
        if fields is None:
            return
        missing = sorted(n for n, keys in required_inputs(self.schema).items() if not keys & fields)
        if missing:
            raise ConfigError(
                f"pipeline {self.name!r}: the transformers never produce the field(s) {missing} "
                f"that schema {self.schema.__name__} requires (they produce {sorted(fields)})"
            )

    @cached_property
    def schema_hash(self) -> str:
        """Hash of the record schema."""
        return schema_hash(self.schema)

    @property
    def keeps_cursor(self) -> bool:
        """Whether an extractor starts each run from the cursor the last completed run left: then runs of this
        pipeline never overlap (the scheduler starts one at a time, the extractor refuses one that would)."""
        return any(keeps_cursor(e) for e in self.extractors)

    @property
    def cursor_at_extraction(self) -> bool:
        """Whether the cursor moves when a run is extracted rather than when it completes: its extractor reads a log
        whose source forgets what a run read once every batch of it is on JETL_RAW (`ConfirmingExtractor`: a CDC
        slot), so from then on the log, not the source, holds the run. The next run may read on while this one still
        loads (the versions order the merge, whatever order runs load in): with the loaders down, runs go on and
        the source keeps nothing (docs/cdc.md). Runs still never overlap in extraction."""
        return any(isinstance(e, ConfirmingExtractor) for e in self.extractors)

    def holds_cursor(self, state: Any) -> bool:
        """Whether an unfinished run (its `RunState`, None before the tracker folded any of it) still holds the
        pipeline's cursor, so that a run after it must wait: until it completes, or under `cursor_at_extraction`
        until it is extracted (its batch count known)."""
        return not (self.cursor_at_extraction and state is not None and state.expected_batches is not None)

    @cached_property
    def trusted_fields(self) -> frozenset[str]:
        """Schema fields whose values the transformers validated under the same field type (`output_types`): the
        transformer stage does not validate them against the schema again."""
        from jetl.records import records_adapter

        chain = output_types(self.transformers)
        own = records_adapter(self.schema).field_types
        return frozenset(name for name, t in own.items() if chain.get(name) == t)

    @cached_property
    def adapter(self) -> TypeAdapter[list[Any]]:
        """Validates a whole batch at once."""
        return TypeAdapter(list[self.schema])  # type: ignore[name-defined]
