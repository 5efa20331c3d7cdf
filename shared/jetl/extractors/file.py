"""File extractor: JSONL and CSV (optionally gzip or zstd compressed), local paths and globs, streamed in chunks.

A malformed line is rejected with its file and line number (it goes to the DLQ), never a crash.
Files already loaded by a completed run are skipped unless the run is forced.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from jetl.errors import ConfigError, TransientError
from jetl.protocols import Chunk, ExtractContext, Record

Format = Literal["jsonl", "csv", "auto"]


def _open(path: Path) -> IO[bytes]:
    name = path.name
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(f"{path}: reading .zst files needs the 'zstandard' package") from exc
        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))  # noqa: SIM115
    return open(path, "rb")  # noqa: SIM115


def _format_of(path: Path, fmt: Format) -> Literal["jsonl", "csv"]:
    if fmt != "auto":
        return fmt
    stem = path.name.removesuffix(".gz").removesuffix(".zst")
    if stem.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if stem.endswith((".csv", ".tsv")):
        return "csv"
    raise ConfigError(f"{path}: cannot tell the format from the name; pass format='jsonl' or 'csv'")


class FileExtractor:
    """Reads JSONL or CSV files matching `path` (a file, folder or glob), in chunks of `chunk_size` records."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: Format = "auto",
        chunk_size: int = 10_000,
        csv_delimiter: str = ",",
        skip_loaded: bool = True,
    ) -> None:
        if chunk_size < 1:
            raise ConfigError("FileExtractor: chunk_size must be at least 1")
        self.path = str(path)
        self.format: Format = format
        self.chunk_size = chunk_size
        self.csv_delimiter = csv_delimiter
        self.skip_loaded = skip_loaded
        self._cursor: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"FileExtractor({self.path!r}, format={self.format!r})"

    def files(self) -> list[Path]:
        """The matching files, in name order."""
        p = Path(self.path)
        if p.is_dir():
            return sorted(x for x in p.iterdir() if x.is_file() and not x.name.startswith("."))
        return sorted(Path(x) for x in glob.glob(self.path, recursive=True) if Path(x).is_file())

    @staticmethod
    def _key(path: Path) -> str:
        st = path.stat()
        return f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"

    async def extract(self, ctx: ExtractContext) -> AsyncIterator[Chunk]:
        """Yield the records of every file not yet loaded, chunk by chunk."""
        done: set[str] = set((ctx.cursor or {}).get("files", [])) if self.skip_loaded and not ctx.force else set()
        files = self.files()
        if not files:
            raise TransientError(f"no files match {self.path!r}")
        loaded = set(done)
        for path in files:
            key = self._key(path)
            if key in done:
                continue
            fmt = _format_of(path, self.format)
            reader = self._jsonl if fmt == "jsonl" else self._csv
            for chunk in reader(path):
                yield chunk
            loaded.add(key)
        self._cursor = {"files": sorted(loaded)}

    def next_cursor(self) -> dict[str, Any] | None:
        """The files loaded so far (they are skipped next time)."""
        return self._cursor

    def _jsonl(self, path: Path) -> Iterator[Chunk]:
        records: list[Record] = []
        origins: list[str] = []
        rejected: list[tuple[str, str]] = []
        lines: list[bytes] = []
        numbers: list[int] = []

        def flush() -> Chunk:
            try:
                parsed = orjson.loads(b"[" + b",".join(lines) + b"]")
                records.extend(parsed)
                origins.extend(f"{path}:{n}" for n in numbers)
            except orjson.JSONDecodeError:
                for n, line in zip(numbers, lines, strict=True):
                    try:
                        value = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        rejected.append((f"{path}:{n}", f"malformed JSON: {exc}"))
                        continue
                    if not isinstance(value, dict):
                        rejected.append((f"{path}:{n}", f"expected a JSON object, got {type(value).__name__}"))
                        continue
                    records.append(value)
                    origins.append(f"{path}:{n}")
            chunk = Chunk(list(records), list(origins), {"file": str(path), "line": numbers[-1]}, list(rejected))
            records.clear(), origins.clear(), rejected.clear(), lines.clear(), numbers.clear()
            return chunk

        with _open(path) as fh:
            for n, raw in enumerate(fh, start=1):
                line = raw.strip()
                if not line:
                    continue
                lines.append(line)
                numbers.append(n)
                if len(lines) >= self.chunk_size:
                    yield flush()
        if lines:
            yield flush()

    def _csv(self, path: Path) -> Iterator[Chunk]:
        with _open(path) as fh:
            text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
            reader = csv.reader(text, delimiter=self.csv_delimiter)
            header = next(reader, None)
            if header is None:
                return
            width = len(header)
            chunk = Chunk([], [], None, [])
            assert chunk.origins is not None
            for row in reader:
                n = reader.line_num
                if not row:
                    continue
                if len(row) != width:
                    chunk.rejected.append((f"{path}:{n}", f"expected {width} fields, got {len(row)}"))
                    continue
                chunk.records.append(dict(zip(header, row, strict=True)))
                chunk.origins.append(f"{path}:{n}")
                if len(chunk.records) >= self.chunk_size:
                    chunk.position = {"file": str(path), "line": n}
                    yield chunk
                    chunk = Chunk([], [], None, [])
            if chunk.records or chunk.rejected:
                chunk.position = {"file": str(path), "line": reader.line_num}
                yield chunk
