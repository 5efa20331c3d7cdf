"""Schema drift: how a raw batch's records differ from the pipeline's input model (`Pipeline.input_model`): fields
the model does not know (new), fields it requires that the records lack (missing), values of a JSON type the field
does not take as it is (changed: an int field that receives 1.5), each with its field path, how many records, an
example.

It costs nothing on the clean fast path: the transformer looks at two records of a batch (its first and last JSON
texts, cut from the raw body without parsing the rest: `batch_drift`) unless the batch had rejected records, when it
looks at all of them (those are parsed anyway). The `schema.drift` event carries what it found
(`jetl.events.SchemaDrift`); `jetl schema diff` sums it up (`jetl.ops.schema`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from jetl.events import DriftField
from jetl.messages.wire import RAW_SEPARATOR, encode_records, read_records
from jetl.pipeline import Pipeline
from jetl.transformers.shape import Shape, json_kind, model_shape

EXAMPLE_CHARS = 40
"""An example value is cut to this many characters: enough to see the drift, not a record's content."""


@dataclass
class _Tally:
    kind: str
    path: str
    expected: str
    seen: str
    count: int = 0
    example: str = ""


@dataclass(frozen=True)
class Place:
    """One drifted place in a record: the dict holding it (the record, or a nested object of it), the key, its
    path and kind of drift. A missing field's place is where it should have been."""

    container: dict[str, Any]
    key: str
    path: str
    kind: str


@dataclass
class DriftFinder:
    """Drift over records, field by field (`add`, then `fields`)."""

    shape: dict[str, Shape]
    records: int = 0
    places: list[Place] | None = None
    """When a list, each drifted place of the records checked goes on it, in order (what a contract acts on)."""
    _found: dict[tuple[str, str, str], _Tally] = field(default_factory=dict)

    def add(self, records: list[Any]) -> None:
        for r in records:
            self.check(r)

    def check(self, record: Any) -> bool:
        """Note one record's drift; whether it has any (a value that is no JSON object has none: the transformer
        rejects it as unreadable)."""
        if type(record) is not dict:
            return False
        self.records += 1
        return self._walk(record, self.shape, "")

    def _note(self, kind: str, path: str, expected: str, seen: str, value: Any) -> None:
        t = self._found.get((kind, path, seen))
        if t is None:
            example = "" if kind == "missing" else orjson.dumps(value, default=str).decode()[:EXAMPLE_CHARS]
            t = self._found[(kind, path, seen)] = _Tally(kind, path, expected, seen, example=example)
        t.count += 1

    def _walk(self, record: dict[str, Any], shape: dict[str, Shape], prefix: str) -> bool:
        """Note the record's drift; whether it has any. Each drifted place goes on `self.places` when it is a
        list."""
        drifted = False
        for key, value in record.items():
            path = prefix + key
            s = shape.get(key)
            if s is None:
                drift = "new"
                self._note(drift, path, "", json_kind(value), value)
            elif (kind := json_kind(value)) not in s.kinds:
                drift = "changed"
                self._note(drift, path, s.name, kind, value)
            else:
                if s.nested is not None and kind == "object":
                    drifted = self._walk(value, s.nested, path + ".") or drifted
                continue
            drifted = True
            if self.places is not None:
                self.places.append(Place(record, key, path, drift))
        if len(record) < len(shape) or any(k not in record for k in shape):
            for key, s in shape.items():
                if key not in record and s.required:
                    self._note("missing", prefix + key, s.name, "", None)
                    drifted = True
                    if self.places is not None:
                        self.places.append(Place(record, key, prefix + key, "missing"))
        return drifted

    def fields(self) -> list[DriftField]:
        """What was found, by kind and path. A field with a default the records lack is no drift: a source may
        leave it out."""
        return [
            DriftField(kind=t.kind, path=t.path, expected=t.expected, seen=t.seen, count=t.count, example=t.example)  # type: ignore[arg-type]
            for t in sorted(self._found.values(), key=lambda t: (t.kind, t.path, t.seen))
        ]


def _ends(body: bytes, count: int) -> list[Any]:
    """The first and last records of a raw batch, cut from its body at `RAW_SEPARATOR` (a batch of texts an
    extractor passed on unparsed); none when the body is not that (a batch of records encoded in one call)."""
    if count < 1 or body[:1] != b"[" or body[-1:] != b"]":
        return []
    if count == 1:
        texts = [body[1:-1]]
    else:
        first, last = body.find(RAW_SEPARATOR), body.rfind(RAW_SEPARATOR)
        if first < 0:
            return []
        texts = [body[1:first], body[last + len(RAW_SEPARATOR) : -1]]
    out = []
    for t in texts:
        with contextlib.suppress(orjson.JSONDecodeError):
            out.append(orjson.loads(t))
    return out


def batch_drift(pipeline: Pipeline, body: bytes, count: int | None, *, whole: bool) -> tuple[list[DriftField], int]:
    """The drift of a raw batch from the pipeline's input model, and how many records were looked at: every record
    with `whole` (a batch that had rejected records: the slow path already), else its first and last only."""
    model = pipeline.input_model()
    if model is None:
        return [], 0
    finder = DriftFinder(model_shape(*model))
    if whole:
        finder.add(read_records(body, count)[0])
    else:
        finder.add(_ends(body, count or 0))
    return finder.fields(), finder.records


@dataclass
class Contracted:
    """A raw batch after its pipeline's schema contract (`apply_contract`)."""

    body: bytes
    """The batch to transform: the raw one, less what the contract discarded."""
    count: int
    kept: list[int] | None
    """Where each record of `body` was in the raw batch (None: all kept, in place)."""
    fields: list[DriftField]
    looked_at: int
    discarded_rows: int = 0
    discarded_values: int = 0
    held: list[DriftField] = field(default_factory=list)
    """The drift a freeze mode holds the batch for (empty: it goes on)."""

    @property
    def frozen(self) -> bool:
        """A batch its contract holds: a field under freeze drifted."""
        return bool(self.held)

    def describe(self) -> str:
        """The drift that holds the batch in a line, for a run's error and a dead letter's reason."""
        return "; ".join(
            f"{f.kind} field {f.path!r}"
            + (f" ({f.expected} -> {f.seen}, e.g. {f.example})" if f.kind == "changed" else "")
            + f" in {f.count} record(s)"
            for f in self.held
        )


def apply_contract(pipeline: Pipeline, body: bytes, count: int | None) -> Contracted:
    """Every record of a raw batch checked against the input model, and what the pipeline's contract does with each
    drifted place, by the mode of its field (`Contract.mode_of`): "freeze" holds the batch (the caller raises, nothing
    is discarded), "discard_row" drops its record, "discard_value" drops a new or mistyped value (a required value
    dropped, or never sent, leaves its record to be dead-lettered as missing it), None leaves it to the model; under
    "evolve" (the whole pipeline's) nothing yet: the caller evolves the model (`jetl.evolution`). A text that is no
    JSON object is kept as it was: the transformer dead-letters it as unreadable."""
    model = pipeline.input_model()
    contract = pipeline.contract
    records, positions, unread = read_records(body, count)
    n = len(records) + len(unread)
    if model is None or contract is None:
        return Contracted(body, n, None, [], 0)
    places: list[Place] = []
    finder = DriftFinder(model_shape(*model), places=places)
    per_record = []
    for r in records:
        start = len(places)
        finder.check(r)
        per_record.append((start, len(places)))
    fields = finder.fields()
    if not fields or contract.default == "evolve":
        return Contracted(body, n, None, fields, finder.records)
    held = [f for f in fields if contract.mode_of(f.path) == "freeze"]
    if held:
        return Contracted(body, n, None, fields, finder.records, held=held)
    where = positions if positions is not None else list(range(len(records)))
    items: dict[int, Any] = {u.position: _text(u.value) for u in unread}
    dropped = values = 0
    for pos, r, (a, z) in zip(where, records, per_record, strict=True):
        modes = [contract.mode_of(p.path) for p in places[a:z]]
        if "discard_row" in modes:
            dropped += 1
            continue
        for p, mode in zip(places[a:z], modes, strict=True):
            if mode == "discard_value" and p.kind != "missing":
                p.container.pop(p.key, None)
                values += 1
        items[pos] = r
    if not dropped and not values:  # drift of fields left to the model: the batch goes on as it came
        return Contracted(body, n, None, fields, finder.records)
    kept = sorted(items)
    return Contracted(
        encode_records([items[i] for i in kept]), len(kept), kept, fields, finder.records, dropped, values
    )


def _text(value: Any) -> bytes:
    """An unread JSON text back as bytes, to travel on as it came."""
    return value.encode() if isinstance(value, str) else orjson.dumps(value)
