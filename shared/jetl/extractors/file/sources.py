"""Opening an input file: its format and compression from its name, decompressed as it is read, or one byte range of
it as a stream of its own (a partition's share)."""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path
from typing import IO, Any, Literal

from jetl.errors import ConfigError

Format = Literal["jsonl", "csv", "parquet", "auto"]
Compression = Literal["auto", "gzip", "zstd", "none"]

_PARQUET_SUFFIXES = (".parquet", ".pq")


def _compression_of(path: Path, compression: Compression) -> Literal["gzip", "zstd", "none"]:
    if compression != "auto":
        return compression
    if path.name.endswith(".gz"):
        return "gzip"
    if path.name.endswith((".zst", ".zstd")):
        return "zstd"
    return "none"


def _open(path: Path, compression: Compression = "auto", size: int | None = None) -> IO[bytes]:
    """The file's bytes, decompressed; an uncompressed file only up to `size` when given (the size its run planned:
    what a writer appends meanwhile is the next run's)."""
    kind = _compression_of(path, compression)
    if kind == "gzip":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if kind == "zstd":
        import zstandard

        # The zstd stream reader cannot iterate lines; a BufferedReader over it can.
        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)  # noqa: SIM115
        return io.BufferedReader(raw)  # type: ignore[arg-type]
    return open(path, "rb") if size is None else _open_range(path, 0, size)


class _Limited(io.RawIOBase):
    """The bytes [start, end) of a file, as a stream of their own (a partition's byte range)."""

    def __init__(self, path: Path, start: int, end: int) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - closed with this stream
        self._fh.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._left)
        if n <= 0:
            return 0
        got = self._fh.readinto(memoryview(buffer)[:n])
        self._left -= got
        return got

    def close(self) -> None:
        self._fh.close()
        super().close()


def _open_range(path: Path, start: int, end: int) -> IO[bytes]:
    return io.BufferedReader(_Limited(path, start, end))  # type: ignore[return-value]


def _read_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean a compressed file is corrupt or truncated (the rest of that file cannot be read)."""
    import zstandard

    return (EOFError, gzip.BadGzipFile, zlib.error, zstandard.ZstdError)


def _format_of(path: Path, fmt: Format) -> Literal["jsonl", "csv", "parquet"]:
    if fmt != "auto":
        return fmt
    stem = path.name.removesuffix(".gz").removesuffix(".zst").removesuffix(".zstd")
    if stem.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if stem.endswith((".csv", ".tsv")):
        return "csv"
    if stem.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    raise ConfigError(f"{path}: cannot tell the format from the name; pass format='jsonl', 'csv' or 'parquet'")
