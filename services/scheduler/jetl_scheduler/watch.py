"""Runtime registration: pipeline modules that appear or change on disk are (re)loaded without a restart.

A module that breaks is reported and skipped; the pipelines it registered before keep running.
"""

from __future__ import annotations

from pathlib import Path

from jetl.errors import DiscoveryError
from jetl.logging import get_logger
from jetl.registry import get_pipeline_registry, load_module, pipeline_files

log = get_logger("jetl.scheduler")


class PipelineWatcher:
    """Polls the pipelines folder (mtime and size) and reloads what changed."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.seen: dict[Path, tuple[float, int]] = {p: self._stamp(p) for p in pipeline_files(self.folder)}
        self.errors: dict[str, str] = {}

    @staticmethod
    def _stamp(path: Path) -> tuple[float, int]:
        st = path.stat()
        return (st.st_mtime, st.st_size)

    def poll(self) -> list[str]:
        """Reload new or changed modules; returns the names of pipelines (re)registered."""
        changed: list[str] = []
        if not self.folder.is_dir():
            return changed
        registry = get_pipeline_registry()
        for path in pipeline_files(self.folder):
            stamp = self._stamp(path)
            if self.seen.get(path) == stamp:
                continue
            self.seen[path] = stamp
            try:
                pipelines = load_module(path)
                for p in pipelines:
                    owner = registry.get(p.name)
                    if owner is not None and owner.source_file != str(path):
                        raise DiscoveryError(
                            f"{path}: pipeline name {p.name!r} is already registered by {owner.source_file}"
                        )
            except DiscoveryError as exc:
                self.errors[str(path)] = str(exc)
                log.error("pipeline module skipped", file=str(path), error=str(exc))
                continue
            self.errors.pop(str(path), None)
            for p in pipelines:
                registry[p.name] = p
                changed.append(p.name)
            log.info("pipeline module loaded", file=str(path), pipelines=[p.name for p in pipelines])
        return changed
