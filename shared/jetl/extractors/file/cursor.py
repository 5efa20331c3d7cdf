"""The file extractor's cursor: a watermark (an mtime) plus the bounded set of files loaded at or after it, each
named by its key `path:size:mtime`, so a changed file loads again."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _file_key(path: Path) -> str:
    """A loaded-file key: `path:size:mtime` (whole seconds)."""
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def _mtime(key: str) -> int:
    """The mtime (whole seconds) in a loaded-file key `path:size:mtime`."""
    return int(key.rsplit(":", 1)[1])


def _bounded(loaded: set[str], watermark: int | None, grace_s: float, max_files: int) -> dict[str, Any]:
    """The next cursor: the watermark moved up to the newest file less the grace time (never down), and the
    files at or after it; when more than `max_files` remain, the watermark rises past the oldest."""
    if not loaded:
        return {"watermark": watermark, "files": []}
    mark = max(watermark or 0, max(_mtime(k) for k in loaded) - int(grace_s))
    kept = sorted((k for k in loaded if _mtime(k) >= mark), key=_mtime, reverse=True)
    if len(kept) > max_files:
        mark = _mtime(kept[max_files]) + 1
        kept = [k for k in kept if _mtime(k) >= mark]
    return {"watermark": mark, "files": sorted(kept)}
