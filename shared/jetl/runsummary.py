"""A run state as `jetl status` shows it, decoded from the state bucket without pydantic: `RunSummary`, its `Totals`,
and `Ledger`, the arithmetic over the totals that `jetl.runstate.RunState` shares.

What comes off the bus is checked: `decode_run` takes a value only when every field the summary keeps has exactly the
JSON type `RunState` writes (a string, an integer, a boolean, a time as `RunState` serializes it, ...); for anything
else it answers None and the caller validates the value with `RunState` itself, which accepts it as it always did or
refuses it with its own error. Fields the summary does not keep (the batch ledgers in flight, the partitions) are not
read. A differential test holds the two to each other (tests/jetl/test_runsummary.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

Status = Literal["requested", "running", "completed", "failed"]


class _Totals(Protocol):
    extracted: int
    extract_rejected: int
    rejected: int
    load_rejected: int
    filtered: int
    loaded: int
    batches: int
    settled: int


class Ledger:
    """A run's totals and whether they reconcile, over `tally` (`RunState` and `RunSummary` alike)."""

    if TYPE_CHECKING:
        tally: _Totals
        expected_batches: int | None
        extracted_claimed: int | None

    @property
    def extracted(self) -> int:
        """Everything the extractor read, good or malformed."""
        return self.tally.extracted + self.tally.extract_rejected

    @property
    def loaded(self) -> int:
        """Rows written to the destination."""
        return self.tally.loaded

    @property
    def rejected(self) -> int:
        """Records dead-lettered at any stage."""
        return self.tally.extract_rejected + self.tally.rejected + self.tally.load_rejected

    @property
    def filtered(self) -> int:
        """Records a transformer dropped on purpose (negative when one fanned out)."""
        return self.tally.filtered

    @property
    def reconciles(self) -> bool:
        """extracted = loaded + rejected + filtered, over every batch the run announced, each of them settled, and as
        many batches and records as run.extracted counted. A batch lost on the way, or one still in flight, makes the
        ledger not reconcile: equal sums over what arrived are not enough (a lost batch is in neither side)."""
        if self.tally.settled != self.tally.batches:  # a batch still in flight
            return False
        if self.expected_batches is not None and self.tally.batches < self.expected_batches:  # a batch never seen
            return False
        if self.extracted_claimed is not None and self.extracted_claimed != self.extracted:
            return False
        return self.extracted == self.loaded + self.rejected + self.filtered

    @property
    def settled_batches(self) -> int:
        """Batches that reached the destination or the DLQ."""
        return self.tally.settled

    @property
    def settled(self) -> bool:
        """Every batch of a fully extracted run has reached the destination or the DLQ."""
        return (
            self.expected_batches is not None
            and self.tally.batches >= self.expected_batches
            and self.tally.settled == self.tally.batches
        )

    def counts(self) -> dict[str, int]:
        """The ledger totals."""
        return {
            "extracted": self.extracted,
            "loaded": self.loaded,
            "rejected": self.rejected,
            "filtered": self.filtered,
            "batches": self.tally.batches,
        }


@dataclass(slots=True)
class Totals:
    """`Tally`'s fields, read."""

    extracted: int = 0
    extract_rejected: int = 0
    transformed: int = 0
    rejected: int = 0
    load_rejected: int = 0
    filtered: int = 0
    loaded: int = 0
    batches: int = 0
    settled: int = 0


@dataclass(slots=True)
class RunSummary(Ledger):
    """The fields of a `RunState` that `jetl status` shows or reckons with, same names, same values."""

    pipeline: str
    run_id: str
    status: Status = "requested"
    trigger: str = "manual"
    parent_run_id: str | None = None
    requested_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expected_batches: int | None = None
    extracted_claimed: int | None = None
    cursor: dict[str, Any] | None = None
    start_cursor: dict[str, Any] | None = None
    error: str | None = None
    tally: Totals = field(default_factory=Totals)
    shadow: bool = False
    redrive: list[int] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    evolved: list[str] = field(default_factory=list)


STATUSES: tuple[Status, ...] = ("requested", "running", "completed", "failed")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})")
"""A time as pydantic writes an aware datetime; fromisoformat reads it the same."""


class _Unsure(Exception):
    """A value `decode_run` leaves to `RunState`."""


def _get(d: dict[str, Any], name: str, kind: type, default: Any, *, optional: bool = False) -> Any:
    if name not in d:
        return default
    v = d[name]
    if v is None and optional:
        return None
    if type(v) is not kind:
        raise _Unsure
    return v


def _time(d: dict[str, Any], name: str) -> datetime | None:
    v = _get(d, name, str, None, optional=True)
    if v is None:
        return None
    if not _TIME.fullmatch(v):
        raise _Unsure
    return datetime.fromisoformat(v)


def _items(d: dict[str, Any], name: str, kind: type) -> list[Any]:
    v: list[Any] = _get(d, name, list, [])
    if any(type(x) is not kind for x in v):
        raise _Unsure
    return list(v)


def decode_run(raw: bytes) -> RunSummary | None:
    """The summary of one state-bucket value, or None when `RunState` must judge it (see the module's doc)."""
    try:
        d = orjson.loads(raw)
        if type(d) is not dict or type(d.get("pipeline")) is not str or type(d.get("run_id")) is not str:
            raise _Unsure
        status = _get(d, "status", str, "requested")
        if status not in STATUSES:
            raise _Unsure
        t = _get(d, "tally", dict, {})
        if not set(t) <= set(Totals.__slots__) or any(type(v) is not int for v in t.values()):
            raise _Unsure
        return RunSummary(
            pipeline=_get(d, "pipeline", str, None),
            run_id=_get(d, "run_id", str, None),
            status=status,
            trigger=_get(d, "trigger", str, "manual"),
            parent_run_id=_get(d, "parent_run_id", str, None, optional=True),
            requested_at=_time(d, "requested_at"),
            started_at=_time(d, "started_at"),
            finished_at=_time(d, "finished_at"),
            expected_batches=_get(d, "expected_batches", int, None, optional=True),
            extracted_claimed=_get(d, "extracted_claimed", int, None, optional=True),
            cursor=_get(d, "cursor", dict, None, optional=True),
            start_cursor=_get(d, "start_cursor", dict, None, optional=True),
            error=_get(d, "error", str, None, optional=True),
            tally=Totals(**t),
            shadow=_get(d, "shadow", bool, False),
            redrive=_items(d, "redrive", int),
            drift=_items(d, "drift", str),
            evolved=_items(d, "evolved", str),
        )
    except (_Unsure, orjson.JSONDecodeError):
        return None
