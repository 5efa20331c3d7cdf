"""Runs whose batches come from the log instead of the extractors: replays (JETL_RAW and the archive) and redrives
(JETL_DLQ).

Both publish ordinary batches under the new run id with the ordinary events (run.started, batch.extracted,
run.extracted), so the transformer, the loader, the tracker and completion work unchanged. Both are deterministic
(the same request makes the same batches), so an extractor that crashes mid-way and gets the request again
republishes the same batch ids, which JetStream drops as duplicates.

- Replay: the parent run's raw batches, read back in order, republished with the same seq (so batch k of the
  replay `supersedes` batch k of the parent in the destination), origins and version (the parent's place in the
  log, so a replayed row never outranks a later run's); `shadow` sends them to the loader's shadow for a diff
  instead. The parent's raw batches come from JETL_RAW while it holds them, else from the archive
  (`jetl.archive.read_raw`); all of them, or the replay is refused.
- Redrive: the records of the requested dead letters, in bounded batches. Records rejected by the transformer go
  back as raw batches (the raw input is taken from the parent's raw batch when the dead letter names its index,
  since a record rejected late in the chain is already half transformed); batches the loader rejected go back as
  raw batches marked `transformed` (they already passed the transformers: the transformer checks them against the
  schema and passes them on; only it may publish clean batches). Extract-stage dead letters carry no
  record (the input could not be read) and cannot be redriven: fix the source and run again.
"""

from __future__ import annotations

from typing import Any

from jetl import subjects
from jetl.archive import Archive, raw_kept, read_raw
from jetl.errors import ConfigError, TerminalError
from jetl.events import BatchExtracted, RunExtracted, RunStarted
from jetl.logging import get_logger
from jetl.messages.deadletter import MALFORMED_INPUT, MALFORMED_LETTER, DeadLetter
from jetl.messages.ids import check_batch_id
from jetl.messages.models import Batch, RunRequest, utcnow
from jetl.messages.payload import PAYLOAD_HEADROOM, fit_payload, item_size
from jetl.messages.wire import read_records
from jetl.registry import get_pipeline
from jetl.runtime.service import ServiceContext
from jetl.state import get_run
from jetl.subjects import Kind

log = get_logger("jetl.extractor")


def _letter(seq: int, subject: str | None, data: bytes | None, pipeline: str) -> DeadLetter:
    """Dead letter #`seq` as read, if a redrive of `pipeline` may take it: a letter of that pipeline, on the subject
    of its pipeline and stage (`jetl.dlq.<pipeline>.<stage>`, which only that stage may publish: `DeadLetter.read`),
    about one of its batches. A letter says what it is; the subject it came on says who could have written it."""
    dl = DeadLetter.read(subject, data)
    if dl.error_type == MALFORMED_LETTER:
        raise TerminalError(f"dead letter #{seq} is malformed: {dl.reason}")
    if dl.pipeline != pipeline:
        raise TerminalError(f"dead letter #{seq} belongs to pipeline {dl.pipeline!r}, not {pipeline!r}")
    try:
        check_batch_id(dl.batch_id)
        if not dl.batch_id.startswith(f"{dl.run_id}/"):
            raise ConfigError("a batch of another run")
    except ConfigError as exc:
        raise TerminalError(f"dead letter #{seq} is malformed: {exc}") from exc
    return dl


class Resend:
    """One replay or redrive run."""

    def __init__(self, ctx: ServiceContext, req: RunRequest) -> None:
        self.ctx, self.req = ctx, req
        self.pipeline = get_pipeline(req.pipeline)
        self.batches = 0
        self.records = 0

    def _base(self) -> dict[str, Any]:
        return self.ctx.event_fields(self.req.pipeline, self.req.run_id, self.pipeline.code_hash)

    async def run(self) -> None:
        """Publish the run's batches and close its extraction."""
        await self.ctx.bus.event(RunStarted(**self._base()))
        if self.req.replay_of is not None:
            await self._replay(self.req.replay_of)
        else:
            await self._redrive(self.req.redrive)
        await self.ctx.bus.event(RunExtracted(**self._base(), batches=self.batches, records=self.records))
        log.info(
            "run resent",
            batches=self.batches,
            records=self.records,
            replay_of=self.req.replay_of,
            redrive=len(self.req.redrive),
        )

    async def _announce(self, batch: Batch) -> None:
        await self.ctx.bus.event(
            BatchExtracted(**self._base(), batch_id=batch.batch_id, seq=batch.seq, records=batch.count)
        )
        self.batches += 1
        self.records += batch.count

    async def _replay(self, parent: str) -> None:
        p = self.pipeline
        state = await get_run(self.ctx.kv, p.name, parent) if self.ctx.kv is not None else None
        if state is None or state.expected_batches is None:
            raise TerminalError(
                f"cannot replay {parent!r}: the run state has no finished extraction for it "
                "(is the run id right? `jetl status --rebuild` refolds the state from the log)"
            )
        archive = Archive.of(self.ctx.settings)
        conn = self.ctx.broker.connection
        in_stream, archived = await raw_kept(conn, archive, p.name, parent)
        if in_stream + archived < state.expected_batches:  # refuse before publishing anything: whole or not at all
            raise TerminalError(
                f"cannot replay {parent!r}: the log keeps {in_stream + archived} of its {state.expected_batches} raw "
                f"batches (JETL_RAW {in_stream}, the archive at {archive.shown} {archived})"
            )
        seen: set[str] = set()
        async for old, body in read_raw(conn, archive, p.name, parent):
            if old.batch_id in seen:  # a forced re-run of the parent may have published a batch twice: the first stands
                continue
            seen.add(old.batch_id)
            batch = old.model_copy(
                update={
                    "run_id": self.req.run_id,
                    "shadow": self.req.shadow,
                    "supersedes": old.batch_id,
                    "created_at": utcnow(),
                    # the parent's place in the log: the replay's rows never outrank a later run's
                    "version": old.version,  # read_raw gives every raw batch its place in the log
                }
            )
            await self.ctx.bus.raw_batch(batch, body)
            await self._announce(batch)
        if len(seen) != state.expected_batches:
            raise TerminalError(
                f"cannot replay {parent!r}: the log keeps {len(seen)} of its {state.expected_batches} raw batches "
                f"(JETL_RAW and the archive at {archive.shown})"
            )

    async def _redrive(self, seqs: list[int]) -> None:
        p = self.pipeline
        js = self.ctx.broker.connection.jetstream()
        letters: list[DeadLetter] = []
        for seq in sorted(set(seqs)):
            msg = await js.get_msg(subjects.stream_name(Kind.DLQ), seq)
            dl = _letter(seq, msg.subject, msg.data, p.name)
            if dl.body_ref is not None:  # a letter too large for a message: its records are kept by reference
                kept = _letter(seq, msg.subject, await self.ctx.bus.fetch(dl.body_ref), p.name)
                if (kept.batch_id, kept.stage) != (dl.batch_id, dl.stage):
                    raise TerminalError(f"dead letter #{seq}: its kept body is another letter's")
                dl = kept
            if dl.stage == "extract" or dl.error_type == MALFORMED_INPUT:
                raise TerminalError(f"dead letter #{seq} is unreadable input ({dl.stage} stage): it has no record")
            letters.append(dl)
        originals = await self._raw_inputs({dl.batch_id for dl in letters if dl.stage == "transform"})
        raw: list[tuple[Any, str | None]] = []
        clean: list[Any] = []
        for dl in letters:
            if dl.stage == "load":
                clean.extend(r["record"] for r in dl.records)
                continue
            source = originals.get(dl.batch_id, {})
            for r in dl.records:
                index = r.get("index")
                raw.append((source.get(index, r["record"]) if index is not None else r["record"], r.get("origin")))
        raw_batches, clean_batches = self._cut(raw), self._cut([(r, None) for r in clean])  # refused whole, or sent
        for records, origins in raw_batches:
            batch = self._batch(records, origins if any(origins) else None)
            await self.ctx.bus.raw_batch(batch, records)
            await self._announce(batch)
        for records, _ in clean_batches:
            # the loader rejected these: the transformer passes them on untransformed (only the transformer may
            # publish clean batches)
            batch = self._batch(records, None).model_copy(update={"transformed": True})
            await self.ctx.bus.raw_batch(batch, records)
            await self._announce(batch)

    def _cut(self, items: list[tuple[Any, str | None]]) -> list[tuple[list[Any], list[str]]]:
        """(records, origins) in batches of at most batch_size records whose bodies fit a message (`fit_payload`,
        as the extractor cuts its own batches): a redrive gathers records of many letters, which together may be
        larger than any batch they came in. A record no message can carry is refused before anything is sent."""
        room = self.ctx.bus.max_payload - PAYLOAD_HEADROOM
        out: list[tuple[list[Any], list[str]]] = []
        size = self.pipeline.batch_size
        for start in range(0, len(items), size):
            records = [r for r, _ in items[start : start + size]]
            origins = [o or "" for _, o in items[start : start + size]]
            listed = sum(len(o) + 3 for o in origins) if any(origins) else 0
            sizes = [item_size(r) for r in records]
            cuts, oversized = fit_payload(sizes, room - listed)
            if oversized:
                i = oversized[0]
                raise TerminalError(
                    f"cannot redrive: the record of {origins[i] or 'a dead letter'} is {sizes[i]} bytes, more than a "
                    f"message carries ({room - listed} bytes under max_payload {self.ctx.bus.max_payload})"
                )
            out.extend((records[a:b], origins[a:b]) for a, b in cuts)
        return out

    def _batch(self, records: list[Any], origins: list[str] | None) -> Batch:
        p = self.pipeline
        return Batch(
            pipeline=p.name,
            run_id=self.req.run_id,
            seq=self.batches,
            schema_name=p.schema.__name__,
            schema_hash=p.schema_hash,
            count=len(records),
            origins=origins,
        )

    async def _raw_inputs(self, batch_ids: set[str]) -> dict[str, dict[int, Any]]:
        """The raw records of the given batches, by batch id and index (one read per run; missing once expired)."""
        out: dict[str, dict[int, Any]] = {}
        archive = Archive.of(self.ctx.settings)
        for run_id in sorted({b.partition("/")[0] for b in batch_ids}):
            async for batch, body in read_raw(self.ctx.broker.connection, archive, self.pipeline.name, run_id):
                if batch.batch_id in batch_ids and batch.batch_id not in out:
                    # a raw batch may hold lines that are not records (read_records sets them aside)
                    records, positions, _ = read_records(body, batch.count)
                    out[batch.batch_id] = dict(zip(positions or range(len(records)), records, strict=True))
        return out
