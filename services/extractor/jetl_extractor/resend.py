"""Runs whose batches come from the log instead of the extractors: replays (JETL_RAW) and redrives (JETL_DLQ).

Both publish ordinary batches under the new run id with the ordinary events (run.started, batch.extracted,
run.extracted), so the transformer, the loader, the tracker and completion work unchanged. Both are deterministic
(the same request makes the same batches), so an extractor that crashes mid-way and gets the request again
republishes the same batch ids, which JetStream drops as duplicates.

- Replay: the parent run's raw batches, read back in order, republished with the same seq (so batch k of the
  replay `supersedes` batch k of the parent in the destination), origins and version (the parent's place in the
  log, so a replayed row never outranks a later run's); `shadow` sends them to the loader's
  shadow for a diff instead. The parent must still have all of its raw batches on JETL_RAW.
- Redrive: the records of the requested dead letters, in bounded batches. Records rejected by the transformer go
  back as raw batches (the raw input is taken from the parent's raw batch when the dead letter names its index,
  since a record rejected late in the chain is already half transformed); batches the loader rejected go back as
  clean batches straight to the loader (they already passed the transformers). Extract-stage dead letters carry no
  record (the input could not be read) and cannot be redriven: fix the source and run again.
"""

from __future__ import annotations

from typing import Any

from jetl import subjects
from jetl.errors import TerminalError
from jetl.eventlog import read_stream
from jetl.events import BatchExtracted, RunExtracted, RunStarted
from jetl.logging import get_logger
from jetl.messages.deadletter import MALFORMED_INPUT, DeadLetter
from jetl.messages.models import Batch, RunRequest, utcnow
from jetl.messages.payload import PAYLOAD_HEADROOM, fit_payload, item_size
from jetl.messages.wire import decode_batch, read_records
from jetl.protocols import log_version
from jetl.registry import get_pipeline
from jetl.runtime.service import ServiceContext
from jetl.state import get_run
from jetl.subjects import Kind

log = get_logger("jetl.extractor")


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
        subject = subjects.raw(p.name, parent)
        info = await self.ctx.broker.connection.jetstream().stream_info(
            subjects.stream_name(Kind.RAW), subjects_filter=subject
        )
        kept = (info.state.subjects or {}).get(subject, 0)
        if kept < state.expected_batches:  # refuse before publishing anything: a replay is whole or not at all
            raise TerminalError(
                f"cannot replay {parent!r}: JETL_RAW keeps {kept} of its {state.expected_batches} raw batches "
                "(older ones expire with the stream's max age)"
            )
        seen: set[int] = set()
        async for msg in read_stream(self.ctx.broker.connection, Kind.RAW, subject):
            old, body = decode_batch(msg.data)
            if old.seq in seen:  # a forced re-run of the parent may have published a seq twice: the first stands
                continue
            seen.add(old.seq)
            batch = old.model_copy(
                update={
                    "run_id": self.req.run_id,
                    "shadow": self.req.shadow,
                    "supersedes": old.batch_id,
                    "created_at": utcnow(),
                    # the parent's place in the log: the replay's rows never outrank a later run's
                    "version": old.version if old.version is not None else log_version(msg.metadata.sequence.stream),
                }
            )
            await self.ctx.bus.raw_batch(batch, body)
            await self._announce(batch)
        if len(seen) != state.expected_batches:
            raise TerminalError(
                f"cannot replay {parent!r}: JETL_RAW keeps {len(seen)} of its "
                f"{state.expected_batches} raw batches (older ones expire with the stream's max age)"
            )

    async def _redrive(self, seqs: list[int]) -> None:
        p = self.pipeline
        js = self.ctx.broker.connection.jetstream()
        letters: list[DeadLetter] = []
        for seq in sorted(set(seqs)):
            msg = await js.get_msg(subjects.stream_name(Kind.DLQ), seq)
            dl = DeadLetter.model_validate_json(msg.data or b"null")
            if dl.body_ref is not None:  # a letter too large for a message: its records are kept by reference
                dl = DeadLetter.model_validate_json(await self.ctx.bus.fetch(dl.body_ref))
            if dl.pipeline != p.name:
                raise TerminalError(f"dead letter #{seq} belongs to pipeline {dl.pipeline!r}, not {p.name!r}")
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
            batch = self._batch(records, None)
            await self.ctx.bus.clean_batch(batch, records)  # the loader rejected these: they skip the transformers
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
        for run_id in sorted({b.rpartition("/")[0] for b in batch_ids}):
            subject = subjects.raw(self.pipeline.name, run_id)
            async for msg in read_stream(self.ctx.broker.connection, Kind.RAW, subject):
                batch, body = decode_batch(msg.data)
                if batch.batch_id in batch_ids and batch.batch_id not in out:
                    # a raw batch may hold lines that are not records (read_records sets them aside)
                    records, positions, _ = read_records(body, batch.count)
                    out[batch.batch_id] = dict(zip(positions or range(len(records)), records, strict=True))
        return out
