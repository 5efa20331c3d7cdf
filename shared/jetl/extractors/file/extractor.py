"""File extractor: JSONL, CSV and Parquet, local paths and globs, gzip or zstd compressed, streamed in chunks.

JSONL and CSV are read line by line; Parquet by record batches (`ParquetFile.iter_batches`), so no file is
ever held in memory whole. A malformed line is rejected with its file and line number (it goes to the DLQ),
never a crash. In the extractor service (`ExtractContext.raw_json`) JSONL lines are not parsed here at all: they
travel as read, and the transformer rejects the malformed ones, by file and line, in the pass that validates.
Files already loaded by a completed run are skipped unless the run is forced.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import glob
import io
import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from jetl.errors import ConfigError, TerminalError, TransientError
from jetl.extractors.file.cursor import _bounded, _file_key, _fingerprint, _mtime, _name, _size
from jetl.extractors.file.partitions import _plan
from jetl.extractors.file.sources import (
    Compression,
    Format,
    _compression_of,
    _format_of,
    _open,
    _open_range,
    _read_errors,
)
from jetl.protocols import Check, Chunk, ExtractContext, Partition, Record, Unreadable

if TYPE_CHECKING:
    from jetl.settings import JetlSettings


async def _pump(chunks: Iterator[Chunk]) -> AsyncIterator[Chunk]:
    """`chunks`, each read (and parsed, but for raw JSON lines) in a worker thread: a parsed 40k-line chunk is ~100 ms
    of CPU, and on the event loop it held back the publishes of the chunks before it (the first batch of a 100k-line
    file went out after 0.5 s)."""
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk


class _Lines:
    """A CSV file's physical lines, as `csv.reader` takes them one by one: the lines a row was read from are
    `taken` (a quoted field may span several), and a read error (a corrupt or truncated file) ends them, kept.
    Reading through it costs about a tenth more than csv.reader over the file (300k rows: 1.04 -> 1.14 s of CPU)."""

    def __init__(self, text: Iterator[str]) -> None:
        self.text = text
        self.taken: list[str] = []
        self.read = 0
        """Lines read so far (of a partition: since its first line)."""
        self.error: BaseException | None = None

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        try:
            line = next(self.text)
        except (UnicodeDecodeError, *_read_errors()) as exc:  # type: ignore[misc]
            self.error = exc
            raise StopIteration from exc
        self.taken.append(line)
        self.read += 1
        return line


CsvRow = tuple[int, list[str] | None, str, str | None]
"""(line number, the fields or None, the input as read, why it is rejected or None)."""


def _csv_records(lines: _Lines, delimiter: str, width: int, first: int) -> Iterator[CsvRow]:
    """The rows of `lines` (from line number `first`), read strictly (RFC 4180: a quote opens and closes a field).

    A row is one line unless a quoted field holds a line break. A stray quote makes a "field" of every line up to the
    next quote (or the end): such a row is read again line by line, each line a row of its own (loaded or rejected,
    with its body and line), whenever it failed (a quote then no delimiter, a file or range ending inside quotes,
    the wrong number of fields) or whenever a line inside it reads alone as a whole row, which a line of a real
    multi-line field does not. So every line of the file is a record or a dead letter, none vanishes inside another.
    """
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    start = first
    while True:
        problem: str | None = None
        try:
            row: list[str] | None = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            row, problem = None, f"malformed CSV: {exc}"
        taken, lines.taken = lines.taken, []
        if len(taken) > 1 and (problem is not None or len(row or []) != width or _rows_inside(taken, delimiter, width)):
            for k, line in enumerate(taken):
                if line.strip("\r\n"):
                    yield _csv_line(start + k, line, delimiter, width)
        elif row is not None or problem is not None:
            raw = "".join(taken)
            if problem is None and row is not None and row and len(row) != width:
                problem = f"expected {width} fields, got {len(row)}"
            if row or problem is not None:  # a blank line is no row
                yield start, row, raw.rstrip("\r\n"), problem
        start += len(taken)


def _csv_line(n: int, line: str, delimiter: str, width: int) -> CsvRow:
    """One physical line read as a row on its own."""
    raw = line.rstrip("\r\n")
    try:
        row = next(csv.reader([line], delimiter=delimiter, strict=True), [])
    except csv.Error as exc:
        return n, None, raw, f"malformed CSV (a stray quote?): {exc}"
    if len(row) != width:
        return n, None, raw, f"expected {width} fields, got {len(row)}" + (" (a stray quote?)" if '"' in raw else "")
    return n, row, raw, None


def _rows_inside(taken: list[str], delimiter: str, width: int) -> bool:
    """Whether a line of a multi-line row, read alone, is a whole row of `width` fields (a stray quote swallowed it)."""
    for line in taken[1:-1] if len(taken) > 2 else taken[1:]:
        try:
            row = next(csv.reader([line], delimiter=delimiter, strict=True), [])
        except csv.Error:
            continue
        if len(row) == width and '"' not in line:
            return True
    return False


def _root(path: str) -> Path:
    """The folder a path, folder or glob is confined to: the path itself, or the glob's parts before the first
    wildcard (a `..` among them taken as written, since the pipeline wrote it)."""
    parts = Path(path).parts
    fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts))
    return Path(*fixed) if fixed else Path(".")


class FileExtractor:
    """Reads JSONL, CSV or Parquet files matching `path` (a file, folder or glob), in bounded chunks.

    `csv_types` maps a CSV column to a converter (`int`, `float`, `Decimal`, a function); an empty cell
    becomes None and a cell the converter rejects rejects its row (with file and line). Without it CSV values
    stay strings.
    Parquet origins are `file:row` (1-based), JSONL and CSV origins `file:line`.

    With `skip_loaded`, the cursor is a watermark plus a bounded set: files modified before the watermark (the
    newest loaded file's mtime less `cursor_grace_s`) count as loaded, and the files loaded at or after it are
    listed (`path:size:mtime`, so a changed file loads again), at most `cursor_max_files` of them. A JSONL or CSV
    file (uncompressed) that was only appended to since is read from where the last run stopped: each run reads a
    file up to the size it planned, and the cursor keeps a fingerprint of those bytes. A file that
    turns up later with an mtime older than the watermark (copied with its old time kept) is not read: raise
    `cursor_grace_s` where files arrive that way.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: Format = "auto",
        compression: Compression = "auto",
        chunk_size: int = 10_000,
        csv_delimiter: str = ",",
        csv_types: Mapping[str, Callable[[str], Any]] | None = None,
        columns: list[str] | None = None,
        skip_loaded: bool = True,
        cursor_grace_s: float = 3600.0,
        cursor_max_files: int = 10_000,
        partition_bytes: int = 128 << 20,
        partition_files: bool = False,
    ) -> None:
        if partition_bytes < 1:
            raise ConfigError("FileExtractor: partition_bytes must be at least 1")
        if chunk_size < 1:
            raise ConfigError("FileExtractor: chunk_size must be at least 1")
        if cursor_grace_s < 0 or cursor_max_files < 1:
            raise ConfigError("FileExtractor: cursor_grace_s must be >= 0 and cursor_max_files at least 1")
        if format not in ("jsonl", "csv", "parquet", "auto"):
            raise ConfigError(f"FileExtractor: unknown format {format!r}")
        if compression not in ("auto", "gzip", "zstd", "none"):
            raise ConfigError(f"FileExtractor: unknown compression {compression!r}")
        if format == "parquet" and compression not in ("auto", "none"):
            raise ConfigError("FileExtractor: Parquet compresses inside the file; use compression='none'")
        for name, fn in (csv_types or {}).items():
            if not callable(fn):
                raise ConfigError(f"FileExtractor: csv_types[{name!r}] is not callable")
        self.path = str(path)
        self.format: Format = format
        self.compression: Compression = compression
        self.chunk_size = chunk_size
        self.csv_delimiter = csv_delimiter
        self.csv_types = dict(csv_types or {})
        self.columns = list(columns) if columns is not None else None
        self.skip_loaded = skip_loaded
        self.cursor_grace_s = cursor_grace_s
        self.cursor_max_files = cursor_max_files
        self.partition_bytes = partition_bytes
        self.partition_files = partition_files
        self._cursor: dict[str, Any] | None = None
        self._listed: dict[str, Path] | None = None
        """The files last listed to check a partition against (`_admit`), by name."""

    def __repr__(self) -> str:
        return f"FileExtractor({self.path!r}, format={self.format!r})"

    def files(self) -> list[Path]:
        """The matching files, in name order. A folder's or glob's entry that leads out of its root (a symlink out,
        a `..` in the glob) is not one: the pipeline declared the root, not what a link there points to."""
        p = Path(self.path)
        if p.is_dir():
            found = sorted(x for x in p.iterdir() if x.is_file() and not x.name.startswith("."))
        else:
            found = sorted(Path(x) for x in glob.glob(self.path, recursive=True) if Path(x).is_file())
        return self._confined(found)

    def _confined(self, paths: list[Path]) -> list[Path]:
        """`paths` that lead to files under the root of `path` (no link or `..` out of it). The one file a pipeline
        names without a wildcard may lead anywhere: the pipeline chose it."""
        if not Path(self.path).is_dir() and not glob.has_magic(self.path):
            return paths
        root = _root(self.path).resolve()
        # each folder resolved once, a file only when it is a link: resolving each of 10,000 files made a listing 5x
        # slower (0.4 -> 1.9 s on a loaded 2-core machine); this adds an lstat per file (about a tenth)
        folders: dict[Path, bool] = {}

        def inside(x: Path) -> bool:
            if (ok := folders.get(x.parent)) is None:
                ok = folders[x.parent] = x.parent.resolve().is_relative_to(root)
            return ok and (not x.is_symlink() or x.resolve().is_relative_to(root))

        return [x for x in paths if inside(x)]

    def check(self, settings: JetlSettings) -> Check:
        """ok when a file matches `path`; warn when none does yet (they may arrive before the first run)."""
        n = len(self.files())
        if n:
            return Check("ok", f"{n} file(s) match {self.path}")
        return Check("warn", f"no file matches {self.path} yet")

    @staticmethod
    def _key(path: Path) -> str:
        return _file_key(path)

    def partitions(self, ctx: ExtractContext) -> list[Partition]:
        """The run's input in shares for extractor replicas: when a file is larger than `partition_bytes` (or with
        `partition_files`), one partition per file, and each uncompressed JSONL or CSV file larger than
        `partition_bytes` in newline-aligned byte ranges of about that size. Otherwise one partition of it all.

        A range [a, b) starts after the first newline at or after a (a = 0, or a CSV's header end, start there)
        and ends at the first newline at or after b, so each line is in exactly one range. A CSV where a range
        would start inside a quoted field (one holding a line break) is one partition, whole.
        The cursor (`next_cursor`) is the one the run reaches once every partition is extracted: the files planned.
        """
        done, watermark, files = self._listing(ctx)
        todo = [
            (path, key)
            for path in files
            if (key := self._key(path)) not in done and (watermark is None or _mtime(key) >= watermark)
        ]
        tails = self._tails(ctx)
        rest: list[Partition] = []
        fresh: list[tuple[Path, str]] = []
        read_before = self._read_before(done, tails)
        for path, key in todo:
            grown = self._grown(path, key, read_before, tails)
            if grown is None:
                fresh.append((path, key))
            else:
                start, line = grown
                rest.append(Partition({"file": str(path), "key": key, "start": start, "end": _size(key), "line": line}))
        self._cursor = self._bounded(done | {key for _, key in todo}, watermark, self._fingerprints(todo, tails))
        if not fresh:
            return rest
        return rest + _plan(fresh, self.format, self.compression, self.partition_bytes, self.partition_files)

    async def extract_partition(self, ctx: ExtractContext, partition: Partition) -> AsyncIterator[Chunk]:
        """Yield the records of one partition planned by `partitions` (whole files, or a byte range of one).

        The partition arrived in a message, so it is checked before any file is opened (`_admit`): it may name only
        files this extractor lists (its `path`, no link out of its root), unchanged since planning, and a byte range
        inside one; anything else is refused with an error that names no file."""
        files, span = self._admit(partition.spec)
        if span is None:
            for path, (_, key) in zip(files, partition.spec["files"], strict=True):
                async for chunk in self._read(path, ctx.raw_json, _size(str(key))):
                    yield chunk
            return
        path = files[0]
        fmt = _format_of(path, self.format)
        async for chunk in _pump(self._jsonl(path, ctx.raw_json, span) if fmt == "jsonl" else self._csv(path, span)):
            yield chunk

    def _admit(self, spec: dict[str, Any]) -> tuple[list[Path], tuple[int, int, int] | None]:
        """The files of a partition `spec` (and its byte range), if `partitions` could have planned it; else
        TerminalError, naming no file: a forged spec must not learn from the error what a path holds."""
        refused = "a partition of FileExtractor names input outside its path, or not as planned: refused"
        try:
            if "files" in spec:
                named, span = [(str(name), str(key)) for name, key in spec["files"]], None
            else:
                named = [(str(spec["file"]), str(spec["key"]))]
                start, end, line = (spec["start"], spec["end"], spec["line"])
                if not all(type(v) is int for v in (start, end, line)) or not 0 <= start < end or line < 1:
                    raise TerminalError(refused)
                span = (start, end, line)
        except (KeyError, TypeError, ValueError) as exc:
            raise TerminalError(refused) from exc
        # compared by name: an unlisted path is never touched. The listing is kept for the next partition (a run of
        # 10,000 files in as many partitions would list them all 10,000 times) and made afresh when a name is not in
        # it. A listed file is checked again for a link out of the root (it may have been replaced since).
        listed = self._listed
        if listed is None or any(name not in listed for name, _ in named):
            listed = self._listed = {str(p): p for p in self.files()}
        paths = [listed[name] for name, _ in named if name in listed]
        if not named or len(paths) != len(named) or self._confined(paths) != paths:
            raise TerminalError(refused)
        for path, (_, key) in zip(paths, named, strict=True):
            self._unchanged(path, key)
        if span is not None and span[1] > paths[0].stat().st_size:
            raise TerminalError(refused)
        return paths, span

    def _unchanged(self, path: Path, key: str) -> None:
        try:
            now = self._key(path)
        except OSError as exc:
            raise TransientError(f"{path}: cannot read it: {type(exc).__name__}") from exc
        grew = self._appendable(path) and _name(now) == _name(key) and _size(now) > _size(key) >= 0
        if now != key and not (grew and _mtime(now) >= _mtime(key)):  # appended to: read as far as planned
            # the keys stay out of the error: they tell a file's size and time
            raise TerminalError(f"{path} changed since its run was planned: run it again")

    async def _read(self, path: Path, raw_json: bool, size: int | None = None) -> AsyncIterator[Chunk]:
        """A whole file's chunks; an uncompressed one up to `size`, the size its run planned (what a writer appends
        meanwhile is read by the next run, from there: `_grown`)."""
        fmt = _format_of(path, self.format)
        if fmt == "parquet" and _compression_of(path, self.compression) != "none":
            raise ConfigError(f"{path}: Parquet compresses inside the file; a .gz/.zst wrapper is not supported")
        chunks = (
            self._jsonl(path, raw_json, size=size)
            if fmt == "jsonl"
            else self._csv(path, size=size)
            if fmt == "csv"
            else self._parquet(path)
        )
        async for chunk in _pump(chunks):
            yield chunk

    async def extract(self, ctx: ExtractContext) -> AsyncIterator[Chunk]:
        """Yield the records of every file not yet loaded, chunk by chunk."""
        done, watermark, files = self._listing(ctx)
        loaded = set(done)
        tails = self._tails(ctx)
        read_before = self._read_before(done, tails)
        read: list[tuple[Path, str]] = []
        for path in files:
            key = self._key(path)
            if key in done or (watermark is not None and _mtime(key) < watermark):
                continue
            grown = self._grown(path, key, read_before, tails)
            if grown is None:
                chunks = self._read(path, ctx.raw_json, _size(key))
            else:
                span = (grown[0], _size(key), grown[1])
                fmt = _format_of(path, self.format)
                chunks = _pump(self._jsonl(path, ctx.raw_json, span) if fmt == "jsonl" else self._csv(path, span))
            async for chunk in chunks:
                yield chunk
            loaded.add(key)
            read.append((path, key))
        self._cursor = self._bounded(loaded, watermark, self._fingerprints(read, tails))

    def _tails(self, ctx: ExtractContext) -> dict[str, str]:
        """The cursor's fingerprints of the files earlier runs read (`jetl.extractors.file.cursor`)."""
        cursor = (ctx.cursor or {}) if self.skip_loaded and not ctx.force else {}
        return dict(cursor.get("tails") or {})

    @staticmethod
    def _read_before(done: set[str], tails: dict[str, str]) -> dict[str, str]:
        """Per file name, the key of the most of it an earlier run read (of those with a fingerprint)."""
        out: dict[str, str] = {}
        for key in done:
            if key in tails and ((was := out.get(_name(key))) is None or _size(key) > _size(was)):
                out[_name(key)] = key
        return out

    def _appendable(self, path: Path) -> bool:
        """JSONL and CSV read uncompressed: a file of them may grow by whole lines, and be read from where it was."""
        return _compression_of(path, self.compression) == "none" and _format_of(path, self.format) != "parquet"

    def _grown(
        self, path: Path, key: str, read_before: dict[str, str], tails: dict[str, str]
    ) -> tuple[int, int] | None:
        """Where to start reading a file an earlier run read up to a smaller size, when only appended to since
        (its bytes up to there fingerprint as they did): (byte offset, line number there). None: read it whole (a
        new or rewritten file, or one that is not JSONL or CSV uncompressed)."""
        was = read_before.get(_name(key))
        if was is None or not self._appendable(path) or not 0 < _size(was) < _size(key):
            return None
        upto = _size(was)
        try:
            if _fingerprint(path, upto) != tails.get(was):
                return None
            with open(path, "rb") as fh:
                lines, left = 0, upto
                while left > 0 and (block := fh.read(min(4 << 20, left))):
                    lines, left = lines + block.count(b"\n"), left - len(block)
        except OSError:
            return None
        return upto, lines + 1

    def _fingerprints(self, read: list[tuple[Path, str]], tails: dict[str, str]) -> dict[str, str]:
        """The fingerprints the next cursor keeps: of each file read now (as far as its key's size) and before."""
        out = dict(tails)
        for path, key in read:
            if self._appendable(path):
                with contextlib.suppress(OSError):
                    out[key] = _fingerprint(path, _size(key))
        return out

    def _listing(self, ctx: ExtractContext) -> tuple[set[str], int | None, list[Path]]:
        """The files the cursor counts as loaded, its watermark, and the matching files (TransientError: none)."""
        cursor = (ctx.cursor or {}) if self.skip_loaded and not ctx.force else {}
        files = self.files()
        if not files:
            raise TransientError(f"no files match {self.path!r}")
        return set(cursor.get("files", [])), cursor.get("watermark"), files

    def _bounded(self, loaded: set[str], watermark: int | None, tails: dict[str, str] | None = None) -> dict[str, Any]:
        return _bounded(loaded, watermark, self.cursor_grace_s, self.cursor_max_files, tails)

    @property
    def keeps_cursor(self) -> bool:
        """Runs skip the files earlier runs loaded (see `jetl.protocols.Extractor`)."""
        return self.skip_loaded

    def next_cursor(self) -> dict[str, Any] | None:
        """The watermark and the files loaded at or after it (they are skipped next time)."""
        return self._cursor

    def _select(self, record: Record) -> Record:
        if self.columns is None:
            return record
        return {c: record.get(c) for c in self.columns}

    def _jsonl(
        self, path: Path, raw: bool = False, span: tuple[int, int, int] | None = None, size: int | None = None
    ) -> Iterator[Chunk]:
        # Lines are read a chunk at a time (islice: 0.35 us a line, against 0.73 reading, stripping and collecting
        # line by line). With `raw` (ExtractContext.raw_json) they are not parsed here at all: see `_jsonl_chunk`.
        # `span`: a partition's (start, end, first line number), newline-aligned by `partitions`.
        prefix = f"{path}:"
        n = 0 if span is None else span[2] - 1  # lines read so far
        with _open(path, self.compression, size) if span is None else _open_range(path, span[0], span[1]) as fh:
            while True:
                raws: list[bytes] = []
                error: BaseException | None = None
                try:
                    raws.extend(itertools.islice(fh, self.chunk_size))  # keeps the lines read before an error
                except _read_errors() as exc:
                    error = exc
                first, n = n + 1, n + len(raws)
                if raws:
                    yield self._jsonl_chunk(prefix, raws, first, raw)
                if error is not None:
                    reason = f"cannot read past this line (corrupt or truncated file): {type(error).__name__}: {error}"
                    yield Chunk([], [], {"file": str(path), "line": n}, [(f"{prefix}{n + 1}", reason)])
                    return
                if len(raws) < self.chunk_size:
                    return

    def _jsonl_chunk(self, prefix: str, raws: list[bytes], first: int, raw: bool = False) -> Chunk:
        """The records of `raws` (lines `first`... of the file `prefix` names), with their origins and the lines
        that failed; with `raw`, the lines themselves (`Chunk.raw`), for the transformer to parse."""
        position = {"file": prefix[:-1], "line": first + len(raws) - 1}
        bom = first == 1 and raws[0].startswith(b"\xef\xbb\xbf")
        clean = not bom and not any(map(bytes.isspace, raws))  # no BOM, no blank line: every line is a JSON text
        if raw and self.columns is None:
            # Not parsed here: the transformer parses the batch in the same pydantic pass that validates it, and
            # rejects a line that is not one JSON object, with its file and line. Per line on the benchmark file:
            # 1.9 us of extractor CPU (orjson parse and origins) -> 0.4 us (reading).
            if clean:
                return Chunk([], None, position, raw=raws, origin_runs=[(prefix, first, len(raws))])
            texts: list[bytes] = []
            numbers: list[str] = []
            for i, line in enumerate(raws, start=first):
                text = line.removeprefix(b"\xef\xbb\xbf") if i == 1 else line
                if text and not text.isspace():
                    texts.append(text)
                    numbers.append(f"{prefix}{i}")
            return Chunk([], numbers, position, raw=texts)
        parsed: Any = None
        if clean:
            with contextlib.suppress(orjson.JSONDecodeError):
                parsed = orjson.loads(b"[" + b",".join(raws) + b"]")
        # The fast path only holds when every line is exactly one object (`1, 2` on one line parses too).
        if isinstance(parsed, list) and len(parsed) == len(raws) and all(type(v) is dict for v in parsed):
            if self.columns is not None:
                parsed = [self._select(r) for r in parsed]
            origins = [f"{prefix}{i}" for i in range(first, first + len(raws))]
            return Chunk(parsed, origins, position, [], origin_runs=[(prefix, first, len(raws))])
        records: list[Record] = []
        origins = []
        rejected: list[tuple[str, str]] = []
        for i, read in enumerate(raws, start=first):
            line = read.strip()
            if i == 1:
                line = line.removeprefix(b"\xef\xbb\xbf").strip()
            if not line:
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                rejected.append(Unreadable(f"{prefix}{i}", f"malformed JSON: {exc}", line.decode("utf-8", "replace")))
                continue
            if not isinstance(value, dict):
                rejected.append(
                    Unreadable(
                        f"{prefix}{i}",
                        f"expected a JSON object, got {type(value).__name__}",
                        line.decode("utf-8", "replace"),
                    )
                )
                continue
            records.append(self._select(value))
            origins.append(f"{prefix}{i}")
        return Chunk(records, origins, position, rejected)

    def _convert(self, row: Record) -> tuple[Record | None, str | None]:
        for col, fn in self.csv_types.items():
            if col not in row:
                continue
            value = row[col]
            if value == "":
                row[col] = None
                continue
            try:
                row[col] = fn(value)
            except Exception as exc:
                name = getattr(fn, "__name__", repr(fn))
                return (
                    None,
                    f"column {col!r}: cannot convert {value!r} with {name}: {type(exc).__name__}: {exc}",
                )
        return row, None

    def _csv(self, path: Path, span: tuple[int, int, int] | None = None, size: int | None = None) -> Iterator[Chunk]:
        # `span`: a partition's byte range after the header, (start, end, line number at start); the header is read
        # from the file's first line, and line numbers count from the range's first line.
        base = 0 if span is None else span[2] - 1
        with _open(path, self.compression, size) if span is None else _open_range(path, span[0], span[1]) as fh:
            text = io.TextIOWrapper(fh, encoding="utf-8-sig" if span is None else "utf-8", newline="")
            lines = _Lines(text)
            try:
                if span is None:
                    header = next(csv.reader(lines, delimiter=self.csv_delimiter), None)
                else:
                    with open(path, "rb") as head:
                        first = head.readline().decode("utf-8-sig")
                    header = next(csv.reader([first], delimiter=self.csv_delimiter), None)
            except (csv.Error, UnicodeDecodeError, *_read_errors()) as exc:  # type: ignore[misc]
                yield Chunk([], [], {"file": str(path), "line": 1}, [(f"{path}:1", f"unreadable header: {exc}")])
                return
            lines.taken.clear()
            if header is None:
                return
            if len(set(header)) != len(header):
                dupes = sorted({h for h in header if header.count(h) > 1})
                yield Chunk(
                    [],
                    [],
                    {"file": str(path), "line": 1},
                    [(f"{path}:1", f"duplicate column names {dupes}: the file is not loaded")],
                )
                return
            missing = [c for c in (self.columns or []) if c not in header]
            if missing:
                raise ConfigError(f"{path}: columns {missing} are not in the header {header}")
            width = len(header)
            chunk = Chunk([], [], None, [])
            assert chunk.origins is not None
            n = base + lines.read
            for n, row, raw, problem in _csv_records(lines, self.csv_delimiter, width, base + lines.read + 1):
                if problem is None and row is not None:
                    record, problem = self._convert(dict(zip(header, row, strict=True)))
                    if record is not None:
                        chunk.records.append(self._select(record))
                        chunk.origins.append(f"{path}:{n}")
                if problem is not None:
                    chunk.rejected.append(Unreadable(f"{path}:{n}", problem, raw))
                if len(chunk.records) >= self.chunk_size or len(chunk.rejected) >= self.chunk_size:
                    chunk.position = {"file": str(path), "line": n}
                    yield chunk
                    chunk = Chunk([], [], None, [])
                    assert chunk.origins is not None
            if lines.error is not None:
                reason = f"cannot read past this line: {type(lines.error).__name__}: {lines.error}"
                chunk.rejected.append((f"{path}:{base + lines.read + 1}", reason))
            if chunk.records or chunk.rejected:
                chunk.position = {"file": str(path), "line": max(n, base + lines.read)}
                yield chunk

    def _parquet(self, path: Path) -> Iterator[Chunk]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError, ValueError) as exc:
            yield Chunk([], [], {"file": str(path), "row": 0}, [(str(path), f"unreadable Parquet file: {exc}")])
            return
        with pf:
            missing = [c for c in (self.columns or []) if c not in pf.schema_arrow.names]
            if missing:
                raise ConfigError(f"{path}: columns {missing} are not in the Parquet schema {pf.schema_arrow.names}")
            row = 0
            try:
                for batch in pf.iter_batches(batch_size=self.chunk_size, columns=self.columns):
                    records: list[Record] = batch.to_pylist()
                    origins = [f"{path}:{row + i}" for i in range(1, len(records) + 1)]
                    row += len(records)
                    yield Chunk(records, origins, {"file": str(path), "row": row})
            except (pa.ArrowException, OSError, ValueError) as exc:
                reason = f"cannot read past row {row}: {type(exc).__name__}: {exc}"
                yield Chunk([], [], {"file": str(path), "row": row}, [(f"{path}:{row + 1}", reason)])
