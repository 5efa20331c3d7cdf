"""What can be told about a pipeline without running it: its schema chain, its schedule and its connectors.

`jetl validate` prints these checks; a dashboard can show the same list.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jetl.pipeline import Pipeline
from jetl.settings import JetlSettings


def check_pipeline(p: Pipeline, s: JetlSettings) -> list[tuple[str, str, str]]:
    """(check, ok|warn|error, detail) for one imported pipeline: schema chain, schedule, connectors."""
    from jetl.pipeline import output_fields, required_inputs
    from jetl.protocols import declares_fields
    from jetl.schedule import run_id_for

    out: list[tuple[str, str, str]] = []
    fields = output_fields(p.transformers)
    if fields is None:
        opaque = [type(t).__name__ for t in p.transformers if not declares_fields(t)]
        if opaque:
            out.append(("schema chain", "warn", f"not checkable before a run: opaque step(s) {', '.join(opaque)}"))
        elif p.transformers:
            out.append(
                (
                    "schema chain",
                    "warn",
                    "not checkable before a run: the source's fields are unknown "
                    "(start the chain with a TypeTransformer to check it)",
                )
            )
        else:
            out.append(("schema chain", "ok", f"records validate straight into {p.schema.__name__}"))
    else:
        needed = sorted(required_inputs(p.schema))
        out.append(
            ("schema chain", "ok", f"transformers produce every required field of {p.schema.__name__} ({len(needed)})")
        )
    if p.schedule is None:
        out.append(("schedule", "ok", "none (runs on request, backfill or replay only)"))
    else:
        try:
            nxt = p.schedule.next_after(datetime.now(UTC))
            run_id_for(p.name, nxt)
            out.append(
                ("schedule", "ok", f"{p.schedule.expression} ({p.schedule.tz}); next slot {nxt:%Y-%m-%d %H:%M}Z")
            )
        except Exception as exc:
            out.append(("schedule", "error", f"{type(exc).__name__}: {exc}"))
    spec = p.write_spec
    deletes = f"; {spec.deletes.field} = {spec.deletes.value!r} deletes" if spec.deletes else ""
    delivery = {
        "merge": f"merge by key {list(spec.key)}: a row loaded twice is one row, the newest version wins{deletes}",
        "history": f"history by key {list(spec.key)}: every version, current between versions{deletes}",
        "replace": "replace: the newest complete run's rows only",
        "append": "append mode: a row extracted twice is loaded twice (declare primary_key=)",
    }
    out.append(("delivery", "ok", delivery[spec.disposition]))
    for i, connector in enumerate([*p.extractors, p.loader]):
        kind = "loader" if i == len(p.extractors) else f"extractor {i + 1}"
        out.append(check_connector(kind, connector, s))
    return out


def check_connector(kind: str, connector: Any, s: JetlSettings) -> tuple[str, str, str]:
    """The connector's own `check()` (`jetl.protocols.Check`), as a (name, status, detail) row."""
    name = f"{kind}: {type(connector).__name__}"
    try:
        status, detail = connector.check(s)
    except Exception as exc:
        return name, "error", f"{type(exc).__name__}: {exc}"
    return name, status, detail
