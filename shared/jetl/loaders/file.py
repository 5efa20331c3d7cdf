"""File loader: JSONL part files named by batch id, written atomically (temp file + rename)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jetl.errors import ConfigError, DestinationUnavailable
from jetl.messages import dumps
from jetl.protocols import LoadContext, Record


class FileLoader:
    """Writes each batch to `<root>/<pipeline>/<run_id>/<seq>.jsonl`; rewriting a batch replaces its part file."""

    def __init__(self, root: str | os.PathLike[str], *, format: str = "jsonl") -> None:
        if format != "jsonl":
            raise ConfigError(f"FileLoader: unsupported format {format!r}")
        self.root = Path(root)
        self.format = format

    def __repr__(self) -> str:
        return f"FileLoader({str(self.root)!r})"

    def describe(self) -> str:
        """Where the parts go."""
        return f"file://{self.root.resolve()}"

    def part_path(self, ctx: LoadContext) -> Path:
        """The part file of one batch, confined to the root."""
        run, _, seq = ctx.batch_id.rpartition("/")
        path = (self.root / ctx.pipeline / run / f"{seq}.{self.format}").resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ConfigError(f"FileLoader: {path} is outside {self.root}")
        return path

    def load(self, records: list[Record], ctx: LoadContext) -> int:
        """Write the part atomically; the same batch id always lands in the same file."""
        path = self.part_path(ctx)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                for r in records:
                    fh.write(dumps(r))
                    fh.write(b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise DestinationUnavailable(f"cannot write {path}: {exc}") from exc
        return len(records)

    def read_all(self, pipeline: str) -> list[dict[str, Any]]:
        """Every record written for a pipeline (tests and the demo read back with this)."""
        import orjson

        out: list[dict[str, Any]] = []
        for part in sorted((self.root / pipeline).glob("*/*.jsonl")):
            out.extend(orjson.loads(line) for line in part.read_bytes().splitlines() if line)
        return out
