"""Schema evolution (`schema_contract="evolve"`): what a drifted batch makes of the pipeline's model, along a safe
lattice, never narrowing.

The transformer turns a batch's drift (`jetl.transformers.drift`) into an `Evolution`: per field, the type its
column takes (`bigint`, `float`, `decimal`, `text`, `bool`), or `nullable` (the model's type, made optional). It
validates the batch under the evolved model (`evolved_model`) and the clean batch carries the evolution
(`Batch.evolved`), so the loader rebuilds the same model and brings its table up to it, each change a migration in
the destination's `jetl_migrations` (`jetl.migrations.EVOLVE_FROM`).

The lattice (a column only ever moves up; one that is already wider stays as it is):

    bool ------------------------------+
    bigint -> float -> decimal -> text +  (text is the top: any two types that do not meet lower meet there)

- a new field becomes a new column of the type its values have (several types: where they meet), always nullable:
  earlier rows have no value;
- a value of another type widens the column to where the two types meet: an int field that receives 2.5 becomes
  float; a number field that receives a string becomes text;
- a string field that receives an object or array (or any field that does) becomes text, the object held as its
  compact JSON text (`{"a":1}`), strings as they are: nothing is dropped, and a reader tells one from the other
  by parsing;
- a required field that records lack becomes nullable;
- every evolved column is nullable.

What evolve does not change, it holds as freeze does (`SchemaFrozen`, the run fails saying why): drift inside a
nested model (`address.zip`), a field of a type off the lattice (datetime, list, a nested model...) that drifts, a
primary key field that drifts, a new field whose name is no column name (`my field`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from decimal import Decimal
from functools import cache
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, BeforeValidator, create_model

from jetl.errors import SchemaFrozen, TerminalError
from jetl.messages.models import Evolution
from jetl.pipeline import Pipeline

_COLUMN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
"""A field evolve makes a column of: a name every destination takes as it is (and a pydantic field can have)."""
_RANK = {"bigint": 0, "float": 1, "decimal": 2, "text": 3}
_FROM_JSON = {"int": "bigint", "float": "float", "str": "text", "bool": "bool", "object": "text", "array": "text"}
_FROM_TYPE: dict[Any, str] = {bool: "bool", int: "bigint", float: "float", Decimal: "decimal", str: "text"}


def meet(a: str, b: str) -> str:
    """Where two lattice types meet: the lower of the two widened to the higher, `text` when they are not ordered
    (bool and a number)."""
    if a == b:
        return a
    if a in _RANK and b in _RANK:
        return a if _RANK[a] > _RANK[b] else b
    return "text"


def _as_text(value: Any) -> Any:
    """A text column's value: a string as it is, anything else (a number, an object) as its compact JSON text."""
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


_TYPES: dict[str, Any] = {
    "bigint": int,
    "float": float,
    "decimal": Decimal,
    "text": Annotated[str, BeforeValidator(_as_text)],
    "bool": bool,
}


def lattice_type(annotation: Any) -> str | None:
    """The lattice type of a model field's annotation (`int | None` is bigint), None when it is off the lattice."""
    args = [a for a in getattr(annotation, "__args__", (annotation,)) if a is not type(None)]
    if len(args) != 1 or not isinstance(args[0], type):
        return None
    return next((name for t, name in _FROM_TYPE.items() if args[0] is t), None)


def evolution_of(model: type[BaseModel], fields: list[Any], key: tuple[str, ...] = ()) -> dict[str, Evolution]:
    """What a batch's drift (`DriftField`s against `model`) makes of the model: per field, its `Evolution`. Drift
    that evolve does not change raises SchemaFrozen naming it (the batch is held)."""
    out: dict[str, str] = {}
    for f in fields:
        if "." in f.path:
            raise SchemaFrozen(f"evolve does not change nested fields: {f.kind} field {f.path!r}")
        if f.kind == "new" and not _COLUMN.match(f.path):
            raise SchemaFrozen(f"evolve names columns by the field; {f.path!r} is no column name (letters, digits, _)")
        if f.path in key:
            raise SchemaFrozen(f"evolve does not change the primary key: {f.kind} field {f.path!r}")
        if f.kind == "new":
            seen = _FROM_JSON.get(f.seen, "text")
            out[f.path] = meet(out[f.path], seen) if f.path in out and out[f.path] != "nullable" else seen
            continue
        field = model.model_fields.get(f.path)
        base = lattice_type(field.annotation) if field is not None else None
        if f.kind == "missing" or (f.kind == "changed" and f.seen == "null"):
            out.setdefault(f.path, "nullable")
            continue
        if base is None:
            raise SchemaFrozen(
                f"evolve widens bool, int, float, Decimal and str fields; {f.path!r} ({f.expected}) received {f.seen}"
            )
        now = out.get(f.path, "nullable")
        out[f.path] = meet(base if now == "nullable" else now, _FROM_JSON.get(f.seen, "text"))
    return {k: v for k, v in sorted(out.items())}  # type: ignore[misc]


@cache  # unbounded on purpose: one class per evolution, which the loaders' and validators' caches are keyed on
def _evolved(model: type[BaseModel], spec: tuple[tuple[str, str], ...]) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    annotation: Any
    for name, evolution in spec:
        if evolution == "nullable":
            current = model.model_fields.get(name)
            annotation = current.annotation if current is not None else _TYPES["text"]
        else:
            annotation = _TYPES[evolution]
        fields[name] = (annotation | None, None)
    return create_model(model.__name__, __base__=model, **fields)


def evolved_model(model: type[BaseModel], evolution: dict[str, Evolution] | None) -> type[BaseModel]:
    """`model` with the evolution's fields: new ones added at the end, changed ones retyped, each optional (default
    None); `model` itself when there is no evolution. The same evolution gives the same class (cached)."""
    if not evolution:
        return model
    return _evolved(model, tuple(sorted(evolution.items())))


def describe(evolution: dict[str, Evolution]) -> str:
    """`color text, qty float` for a log line or a migration's name."""
    return ", ".join(f"{k} {v}" for k, v in evolution.items())


_KEPT = 256
_PIPELINES: dict[tuple[int, tuple[tuple[str, str], ...]], tuple[Pipeline, Pipeline]] = {}


def evolved_pipeline(pipeline: Pipeline, evolution: dict[str, Evolution]) -> Pipeline:
    """The pipeline as the transformer runs it on an evolved batch: its schema (and its TypeTransformer's model) the
    evolved model. A copy, not a new `Pipeline`: nothing of the loader is configured again."""
    from jetl.transformers.type_ import TypeTransformer

    key = (id(pipeline), tuple(sorted(evolution.items())))
    found = _PIPELINES.get(key)
    if found is not None and found[0] is pipeline:
        return found[1]
    if len(_PIPELINES) >= _KEPT:  # a bound: each evolution a batch can make is one entry
        _PIPELINES.clear()
    model = evolved_model(pipeline.schema, evolution)
    twin = copy.copy(pipeline)
    for cached in ("schema_hash", "trusted_fields", "adapter"):
        twin.__dict__.pop(cached, None)
    twin.schema = model
    twin.transformers = [TypeTransformer(model)] if pipeline.transformers else []
    _PIPELINES[key] = (pipeline, twin)
    return twin


Change = tuple[str, str, str]
"""(column, what, type): `add` a nullable column of that type, `widen` it to that type (nullable), make it
`nullable` (its type as it is)."""


def plan(
    evolution: dict[str, Evolution],
    existing: dict[str, tuple[str, bool]],
    wanted: dict[str, str],
    lattice_of: Callable[[str], str | None],
    type_of: dict[str, str],
) -> list[Change]:
    """What a destination's table must change to hold an evolved batch: `existing` is its columns (type, nullable),
    `wanted` the evolved model's column types, `lattice_of` a column type's place on the lattice (None: off it) and
    `type_of` the destination's type for each lattice type. A column only widens: one already wider stays as it is.
    A change off the lattice (a column of a type the lattice does not know, to be made another) is a TerminalError:
    that takes a migration written by hand."""
    out: list[Change] = []
    for name, evo in evolution.items():
        if name not in existing:
            out.append((name, "add", wanted[name]))
            continue
        current, nullable = existing[name]
        here = lattice_of(current)
        target = here
        if evo != "nullable":
            want = lattice_of(wanted[name])
            if here is None or want is None:
                if current != wanted[name]:
                    raise TerminalError(
                        f"evolve cannot change column {name!r} from {current} to {wanted[name]} (off the lattice "
                        f"bigint -> float -> decimal -> text): write a migration"
                    )
            else:
                target = meet(here, want)
        if target != here and target is not None:
            out.append((name, "widen", type_of[target]))
        elif not nullable:
            out.append((name, "nullable", current))
    return out


def label(table: str, changes: list[Change]) -> str:
    """A migration's name: `evolve_items__add_color__widen_qty`."""
    return "__".join([f"evolve_{table}", *(f"{what}_{name}" for name, what, _ in changes)])
