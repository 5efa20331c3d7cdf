"""Runtime registration in the scheduler: new or changed pipeline modules are picked up without a restart.

The machinery is shared (`jetl.registry.reload_changed`, polled by every service); the scheduler also polls it right
before each cron tick, so a pipeline added to the folder is scheduled on the next tick. A module that breaks is
reported and skipped; the pipelines it registered before keep running.
"""

from __future__ import annotations

from pathlib import Path

from jetl.registry import reload_changed, reload_errors


class PipelineWatcher:
    """Polls the pipelines folder and reloads modules whose content changed."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @property
    def errors(self) -> dict[str, str]:
        """{file: error} of modules skipped because their latest version is broken."""
        return reload_errors()

    def poll(self) -> list[str]:
        """Reload new or changed modules; returns the names of pipelines (re)registered."""
        return reload_changed(self.folder)
