"""The raw-batch archive: the log's history past JETL_RAW's window.

JETL_RAW keeps a raw batch only until the transformer and the archiver have both acked it (interest retention, see
`jetl.subjects.STREAMS`); the archiver (a durable of its own on JETL_RAW, pulled by the transformer service) writes
each batch here first, once, and acks only after the write. So a batch leaves the stream only once it is transformed
and archived, and a full stream stops nothing: it drains as they ack.

Each batch is one object, `<pipeline>/<run>/<batch>.jraw.zst` (the batch id after its run, `/` as `.`), holding the
message exactly as it travelled on JETL_RAW (envelope and body), zstd-compressed, behind a header with the SHA-256
of those bytes: a replay republishes the very bytes the parent extracted, and a bit flipped on disk is found
(`ArchiveCorrupt`), never replayed. Writes are atomic (a folder: temp file, fsync, rename; an object store: the object
appears whole when its upload completes) and idempotent (an intact object is never written again).

The store is a folder by default (`<data dir>/archive`), or any file system `pyarrow.fs` reaches by URL (S3, GCS,
HDFS, Azure, local): see docs/architecture.md for why pyarrow.fs. Every reader of raw batches goes through
`read_raw`, which takes what the stream still holds and the rest from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import zstandard

from jetl.bus import read_one_by_one
from jetl.errors import ArchiveCorrupt, StoreFull
from jetl.messages.models import Batch
from jetl.messages.wire import decode_batch
from jetl.protocols import log_version
from jetl.redact import redact_url
from jetl.settings import JetlSettings
from jetl.subjects import Kind, check_token, raw, stream_name

MAGIC = b"JETLRAW1"
SUFFIX = ".jraw.zst"
LEVEL = 1
"""zstd level: on orders-shaped JSON lines, level 1 compressed 4.7x at 100 MB/s and level 3 4.3x at 69 MB/s (one
loaded core): JSON lines with random ids gain nothing from a higher level, and archiving must keep up with ingestion."""
_HEADER = len(MAGIC) + 32


def encode(message: bytes) -> bytes:
    """An archived object: the header (magic, SHA-256 of `message`) and `message` zstd-compressed."""
    digest = hashlib.sha256(message).digest()
    return MAGIC + digest + zstandard.ZstdCompressor(level=LEVEL, write_checksum=True).compress(message)


def decode(data: bytes, where: str = "archived batch") -> bytes:
    """The message an archived object holds; ArchiveCorrupt when it is not one or its checksum does not match."""
    if len(data) < _HEADER or not data.startswith(MAGIC):
        raise ArchiveCorrupt(f"{where} is not a jetl archive object ({len(data)} bytes)")
    try:
        message = zstandard.ZstdDecompressor().decompress(data[_HEADER:])
    except zstandard.ZstdError as exc:
        raise ArchiveCorrupt(f"{where} does not decompress: {exc}") from exc
    if hashlib.sha256(message).digest() != data[len(MAGIC) : _HEADER]:
        raise ArchiveCorrupt(f"{where} does not match its checksum (SHA-256): it changed after it was written")
    return message


@dataclass(frozen=True)
class Usage:
    """How full the archive is."""

    used: int
    """Bytes its objects take."""
    limit: int | None
    """Its byte limit: `archive.max_bytes`, or what the file system under a folder has room for; None: unbounded."""


class Archive:
    """One archive store (a folder or an object store), addressed by pipeline, run and batch id."""

    def __init__(self, url: str, max_bytes: int = 0) -> None:
        self.url = url
        self.max_bytes = max_bytes
        if "://" in url:
            self.fs, root = pafs.FileSystem.from_uri(url)
        else:
            self.fs, root = pafs.LocalFileSystem(), str(Path(url).resolve())
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self._used: int | None = None

    @classmethod
    def of(cls, s: JetlSettings) -> Archive:
        """The archive the settings name (`JetlSettings.archive_url`)."""
        return cls(s.archive_url, s.archive.max_bytes)

    @property
    def shown(self) -> str:
        """The archive's URL for messages (credentials redacted)."""
        return redact_url(self.url)

    def _run_dir(self, pipeline: str, run_id: str) -> str:
        return f"{self.root}/{pipeline}/{run_id}"

    def path(self, pipeline: str, run_id: str, part_id: str) -> str:
        """Where one batch (message id `part_id`, `<run>/[<partition>/]<seq>`) of a run is kept."""
        run, _, rest = part_id.partition("/")
        if run != run_id or not rest:
            raise ValueError(f"batch {part_id!r} is not of run {run_id!r}")
        for token in (pipeline, run_id, *rest.split("/")):  # never a path: ids are subject tokens
            check_token(token, f"archived batch {part_id!r} part")
        return f"{self._run_dir(pipeline, run_id)}/{rest.replace('/', '.')}{SUFFIX}"

    def put(self, pipeline: str, run_id: str, part_id: str, message: bytes) -> bool:
        """Keep one raw batch (its message as it travelled); False when an intact copy is already there (nothing is
        written twice). StoreFull when the archive has no room, naming the setting."""
        path = self.path(pipeline, run_id, part_id)
        if self._intact(path):
            return False
        data = encode(message)
        self._room_for(len(data))
        try:
            if self.local:
                _write_local(path, data)
            else:  # an object appears whole when its upload completes: no reader sees half of one
                with self.fs.open_output_stream(path, compression=None) as out:  # no codec by suffix
                    out.write(data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull(
                    f"the archive at {self.shown}",
                    "no space left on its file system",
                    "the space of that file system, or JETL_ARCHIVE__URL to a larger store",
                ) from exc
            raise
        if self._used is not None:
            self._used += len(data)
        return True

    def _intact(self, path: str) -> bool:
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return False
        try:
            decode(self._read(path), path)
        except ArchiveCorrupt:
            return False  # a torn or damaged copy is written again
        return True

    def _room_for(self, size: int) -> None:
        if not self.max_bytes:
            return
        if self._used is None or self._used + size > self.max_bytes:
            self._used = self.usage().used  # other replicas write too: count again before refusing
        if self._used + size > self.max_bytes:
            raise StoreFull(
                f"the archive at {self.shown}",
                f"{self._used} of {self.max_bytes} bytes used",
                "JETL_ARCHIVE__MAX_BYTES",
            )

    def _read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path, compression=None) as f:
            return bytes(f.read())

    def get(self, pipeline: str, run_id: str, part_id: str) -> bytes:
        """The message of one archived batch, checked against its checksum (ArchiveCorrupt when it does not match)."""
        path = self.path(pipeline, run_id, part_id)
        return decode(self._read(path), f"archived batch {part_id} of {pipeline}")

    def batches(self, pipeline: str, run_id: str) -> list[str]:
        """The batch ids (message ids) the archive keeps of one run, in order."""
        selector = pafs.FileSelector(self._run_dir(pipeline, run_id), allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(selector):
            name = info.base_name
            if info.type == pafs.FileType.File and name.endswith(SUFFIX) and not name.startswith("."):
                out.append(f"{run_id}/{name[: -len(SUFFIX)].replace('.', '/')}")
        return sorted(out)

    def prune(self, keep_days: dict[str, float], now: float | None = None) -> list[tuple[str, str]]:
        """Remove the runs kept longer than their pipeline's `keep_days` (`"*"`: the rest) after their newest
        archived batch; returns the (pipeline, run) removed. Pipelines under neither key are kept for good."""
        if not keep_days:
            return []
        now = time.time() if now is None else now
        removed = []
        top = pafs.FileSelector(self.root, allow_not_found=True)
        for pipe in self.fs.get_file_info(top):
            days = keep_days.get(pipe.base_name, keep_days.get("*"))
            if pipe.type != pafs.FileType.Directory or days is None:
                continue
            for run in self.fs.get_file_info(pafs.FileSelector(pipe.path, allow_not_found=True)):
                if run.type != pafs.FileType.Directory:
                    continue
                objects = self.fs.get_file_info(pafs.FileSelector(run.path))
                newest = max((o.mtime.timestamp() for o in objects if o.mtime is not None), default=None)
                if newest is not None and now - newest > days * 86400:
                    self.fs.delete_dir(run.path)
                    removed.append((pipe.base_name, run.base_name))
        if removed:
            self._used = None
        return removed

    def usage(self) -> Usage:
        """Bytes used and the limit (a walk of the whole archive: for health, not for every write)."""
        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        used = sum(i.size or 0 for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File)
        self._used = used
        if self.max_bytes:
            return Usage(used, self.max_bytes)
        if self.local:
            here = Path(self.root)
            while not here.exists() and here != here.parent:
                here = here.parent
            return Usage(used, used + shutil.disk_usage(here).free)
        return Usage(used, None)


def _write_local(path: str, data: bytes) -> None:
    """Write `data` to `path` atomically and durably: a temp file beside it, fsync'ed, renamed over it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)


def placed(batch: Batch, sequence: int | None) -> Batch:
    """`batch` with its place in the log as its version (`jetl.protocols.log_version` of its JETL_RAW sequence), unless
    it has one already (a replay's raw batch keeps its parent's): what a replay of it republishes, and what the
    archive keeps, since an archived batch no longer has a stream sequence."""
    if batch.version is not None or sequence is None:
        return batch
    return batch.model_copy(update={"version": log_version(sequence)})


async def read_raw(nc: Any, archive: Archive | None, pipeline: str, run_id: str) -> AsyncGenerator[Any, None]:
    """Every raw batch of one run, as (Batch, body): first what JETL_RAW still holds, then the rest from the archive.

    The one way raw batches are read back (replay, `replay --diff`, a redrive's original inputs). In that order no
    batch is missed: a batch leaves the stream only after the archiver acked it, which it does after the write, so
    one the stream read did not see is in the archive by the time the archive is listed.
    """
    seen: set[str] = set()
    # message by message, no consumer: the extractor reads this, and a service's user may create none (jetl.access)
    async for msg in read_one_by_one(nc, stream_name(Kind.RAW), raw(pipeline, run_id)):
        batch, body = decode_batch(msg.data)
        seen.add(batch.part_id)
        yield placed(batch, msg.seq), body
    if archive is None:
        return
    for part_id in await asyncio.to_thread(archive.batches, pipeline, run_id):
        if part_id in seen:
            continue
        batch, body = decode_batch(await asyncio.to_thread(archive.get, pipeline, run_id, part_id))
        yield batch, body


async def raw_kept(nc: Any, archive: Archive | None, pipeline: str, run_id: str) -> tuple[int, int]:
    """How many raw batches of one run JETL_RAW and the archive keep (a batch may be in both while in flight)."""
    subject = raw(pipeline, run_id)
    info = await nc.jetstream().stream_info(stream_name(Kind.RAW), subjects_filter=subject)
    in_stream = (info.state.subjects or {}).get(subject, 0)
    archived = len(await asyncio.to_thread(archive.batches, pipeline, run_id)) if archive is not None else 0
    return in_stream, archived
