"""The ledger's totals mean one thing: the pipeline's own runs, with replays and redrives counted apart."""

from __future__ import annotations

from typing import Any

from jetl.ops.destination import DestinationCount
from jetl.ops.ledger import ledger_totals


def row(run_id: str, trigger: str, extracted: int, loaded: int, rejected: int) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "trigger": trigger,
        "extracted": extracted,
        "loaded": loaded,
        "rejected": rejected,
        "filtered": 0,
        "expected_in_destination": loaded,
    }


def test_replays_and_redrives_do_not_add_to_the_pipelines_own_counts() -> None:
    rows = [
        row("r1", "manual", 100, 94, 6),
        row("r1-replay", "replay", 100, 94, 6),  # the same records again: not 6 more rejected
        row("r1-shadow", "replay", 100, 94, 6),
        row("r1-redrive", "redrive", 6, 0, 6),
        row("r2", "schedule", 10, 10, 0),
    ]
    dest = DestinationCount(pipeline="p", destination="d", total=198, current=104)
    totals = ledger_totals(rows, dest)
    assert (totals["runs"], totals["extracted"], totals["rejected"], totals["loaded"]) == (2, 110, 6, 104)
    assert totals["replays"] == {"runs": 2, "extracted": 200, "loaded": 188, "rejected": 12, "filtered": 0}
    assert totals["redrives"]["runs"] == 1 and totals["redrives"]["rejected"] == 6
    assert totals["in_destination"] == 198 and totals["current_in_destination"] == 104
