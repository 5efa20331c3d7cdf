"""Planning a file run's partitions for extractor replicas: whole files, and large uncompressed JSONL or CSV files
in newline-aligned byte ranges, each with the line number it starts at.

A CSV field in quotes may hold a line break, so a newline is not always a row's end. The pass that numbers the lines
also counts quote characters: a newline with an odd count before it is inside a quoted field (RFC 4180: quotes open
and close a field, and are doubled inside one), and a file with such a boundary is one partition, whole."""

from __future__ import annotations

import itertools
from pathlib import Path

from jetl.extractors.file.cursor import _size
from jetl.extractors.file.sources import Compression, Format, _compression_of, _format_of
from jetl.protocols import Partition


def _plan(
    todo: list[tuple[Path, str]], fmt: Format, compression: Compression, partition_bytes: int, partition_files: bool
) -> list[Partition]:
    """The partitions of the files `todo` (path, loaded-file key): one of them all when every file is at most
    `partition_bytes` (and not `partition_files`), else one per file, a large JSONL or CSV file in byte ranges."""
    sizes = {key: _size(key) for _, key in todo}  # as planned: what a writer appends meanwhile is the next run's
    if not partition_files and all(size <= partition_bytes for size in sizes.values()):
        return [Partition({"files": [[str(path), key] for path, key in todo]})]
    out: list[Partition] = []
    for path, key in todo:
        size = sizes[key]
        kind = _format_of(path, fmt)
        if size <= partition_bytes or kind == "parquet" or _compression_of(path, compression) != "none":
            out.append(Partition({"files": [[str(path), key]]}))
            continue
        head = 0
        if kind == "csv":
            with open(path, "rb") as fh:
                fh.readline()
                head = fh.tell()
        offsets = [head, *range(head + partition_bytes, size, partition_bytes)]
        aligned = _aligned(path, offsets, b'"' if kind == "csv" else None)
        if any(odd for _, _, odd in aligned):  # a boundary inside a quoted field: the file is read whole
            out.append(Partition({"files": [[str(path), key]]}))
            continue
        bounds = [*((b, line) for b, line, _ in aligned), (size, -1)]
        for (start, line), (end, _) in itertools.pairwise(bounds):
            if start < end:
                out.append(Partition({"file": str(path), "key": key, "start": start, "end": end, "line": line}))
    return out


def _aligned(path: Path, offsets: list[int], quote: bytes | None = None) -> list[tuple[int, int, bool]]:
    """Each offset but the first (a line start already: 0, or a CSV's header end) moved past the first newline at or
    after it, with the line number that starts there and whether an odd number of `quote` characters comes before
    it (the newline is inside a quoted field): one pass over the file, counting newlines and quotes (`bytes.count`,
    about 0.3 s a GB each)."""
    with open(path, "rb") as fh:
        starts = []
        for k, b in enumerate(offsets):
            if k > 0:
                fh.seek(b)
                fh.readline()
                b = fh.tell()
            starts.append(b)
        out: list[tuple[int, int, bool]] = []
        fh.seek(0)
        pos, lines, quotes = 0, 1, 0
        for b in starts:
            while pos < b:
                block = fh.read(min(4 << 20, b - pos))
                if not block:
                    break
                lines += block.count(b"\n")
                if quote is not None:
                    quotes += block.count(quote)
                pos += len(block)
            out.append((b, lines, quotes % 2 == 1))
        return out
