"""The file extractor's cursor: a watermark (an mtime) plus the bounded set of files loaded at or after it, each
named by its key `path:size:mtime`, so a changed file loads again; and for each JSONL or CSV file among them a
fingerprint of the bytes read (`tails`), so a file that was only appended to since is read from where the last run
stopped, not again from its start."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def _file_key(path: Path) -> str:
    """A loaded-file key: `path:size:mtime` (whole seconds)."""
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def _mtime(key: str) -> int:
    """The mtime (whole seconds) in a loaded-file key `path:size:mtime`."""
    return int(key.rsplit(":", 1)[1])


def _size(key: str) -> int:
    """The size (bytes) in a loaded-file key `path:size:mtime`: how much of the file its run read."""
    return int(key.rsplit(":", 2)[1])


def _name(key: str) -> str:
    """The path in a loaded-file key."""
    return key.rsplit(":", 2)[0]


FINGERPRINT_BYTES = 4096


def _fingerprint(path: Path, size: int) -> str:
    """A fingerprint of a file's first `size` bytes: their first and last FINGERPRINT_BYTES (and `size`). A file
    only appended to keeps it; one rewritten almost surely does not."""
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(min(size, FINGERPRINT_BYTES)))
        fh.seek(max(0, size - FINGERPRINT_BYTES))
        digest.update(fh.read(min(size, FINGERPRINT_BYTES)))
    return digest.hexdigest()[:32]


def _bounded(
    loaded: set[str], watermark: int | None, grace_s: float, max_files: int, tails: dict[str, str] | None = None
) -> dict[str, Any]:
    """The next cursor: the watermark moved up to the newest file less the grace time (never down), and the
    files at or after it (with the fingerprints in `tails` of those that have one); when more than `max_files`
    remain, the watermark rises past the oldest."""
    if not loaded:
        return {"watermark": watermark, "files": []}
    mark = max(watermark or 0, max(_mtime(k) for k in loaded) - int(grace_s))
    kept = sorted((k for k in loaded if _mtime(k) >= mark), key=_mtime, reverse=True)
    if len(kept) > max_files:
        mark = _mtime(kept[max_files]) + 1
        kept = [k for k in kept if _mtime(k) >= mark]
    cursor: dict[str, Any] = {"watermark": mark, "files": sorted(kept)}
    if tails:
        cursor["tails"] = {k: tails[k] for k in cursor["files"] if k in tails}
    return cursor
