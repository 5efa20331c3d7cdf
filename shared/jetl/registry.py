"""Pipeline discovery: every `*_pipeline.py` in the pipelines folder, imported once at start-up, loudly.

A module that fails to import, lacks `register_pipelines()`, or registers a name already taken raises a
DiscoveryError naming the file (and line, where there is one). `discover` stops on it; a service starts with
`skip_broken=True` instead, so one broken module is logged, kept in `reload_errors()` (which `jetl health` and
`jetl run` show) and skipped while every other pipeline runs, as at a reload.

At run time (`reload_changed`, polled by every service, and tried by `get_pipeline` for an unknown name) a new or
changed module is (re)loaded without a restart; one that breaks is reported and skipped, and the pipelines it
registered before keep running.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType

from jetl.errors import ConfigError, DiscoveryError, JetlError
from jetl.logging import get_logger
from jetl.pipeline import Pipeline
from jetl.settings import JetlSettings

_REGISTRY: dict[str, Pipeline] = {}
_LOADED_FROM: Path | None = None
_DIGESTS: dict[Path, str] = {}
"""Content hash of each module as last loaded (or tried), so a reload only touches what changed."""
_RELOAD_ERRORS: dict[str, str] = {}
_LISTENERS: list[Callable[[list[Pipeline]], None]] = []


def _where(exc: BaseException, path: Path) -> str:
    """`file:line` of the deepest frame inside `path`, for the error message."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == path.resolve():
            line = frame.lineno
    if line is None and isinstance(exc, SyntaxError) and exc.lineno:
        line = exc.lineno
    return f"{path}:{line}" if line else str(path)


def _import(path: Path) -> ModuleType:
    name = f"jetl_pipelines.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DiscoveryError(f"{path}: cannot be imported as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise DiscoveryError(
            f"{_where(exc, path)}: pipeline module failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def load_module(path: Path) -> list[Pipeline]:
    """Import one pipeline module and return the pipelines its `register_pipelines()` gives."""
    module = _import(path)
    register = getattr(module, "register_pipelines", None)
    if not callable(register):
        raise DiscoveryError(f"{path}: defines no register_pipelines() function")
    try:
        result = register()
    except JetlError as exc:
        raise DiscoveryError(f"{_where(exc, path)}: {exc}") from exc
    except Exception as exc:
        raise DiscoveryError(f"{_where(exc, path)}: register_pipelines() raised {type(exc).__name__}: {exc}") from exc
    pipelines = [result] if isinstance(result, Pipeline) else list(result or [])
    code_hash = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    for p in pipelines:
        if not isinstance(p, Pipeline):
            raise DiscoveryError(f"{path}: register_pipelines() returned {p!r}, not a Pipeline")
        p.source_file = str(path)
        p.code_hash = code_hash
    return pipelines


def pipeline_files(folder: Path) -> list[Path]:
    """The pipeline modules in `folder`, in name order."""
    return sorted(folder.glob("*_pipeline.py"))


def pipeline_names(folder: Path | str) -> list[str]:
    """The names of the pipelines the modules in `folder` define, with those this process registered, without
    registering any (what `jetl deploy` and `jetl up` declare per-pipeline durables for); a broken module is
    skipped (it has no pipeline to run until it is fixed and deployed again)."""
    names = set(_REGISTRY)
    folder = Path(folder)
    for path in pipeline_files(folder) if folder.is_dir() else []:
        with contextlib.suppress(DiscoveryError):
            names.update(p.name for p in load_module(path))
    return sorted(names)


def register(pipelines: Iterable[Pipeline]) -> None:
    """Add pipelines to the registry; a name that is taken stops with both files named."""
    for p in pipelines:
        if p.name in _REGISTRY:
            other = _REGISTRY[p.name].source_file or "<code>"
            raise DiscoveryError(
                f"{p.source_file or '<code>'}: pipeline name {p.name!r} is already registered by {other}"
            )
        _REGISTRY[p.name] = p


def discover(folder: Path | str, *, skip_broken: bool = False) -> dict[str, Pipeline]:
    """Import every pipeline module in `folder` into the registry; returns the registry. A broken module stops it
    with a DiscoveryError naming the file; with `skip_broken` it is logged, kept in `reload_errors()` and skipped
    (retried when the file changes, as at a reload)."""
    global _LOADED_FROM
    folder = Path(folder)
    if not folder.is_dir():
        raise DiscoveryError(f"pipelines folder {folder} does not exist (set JETL_PIPELINES_DIR)")
    for path in pipeline_files(folder):
        _DIGESTS[path.resolve()] = _digest(path)
        try:
            register(_unique(load_module(path)))
        except DiscoveryError as exc:
            if not skip_broken:
                raise
            _RELOAD_ERRORS[str(path)] = str(exc)
            get_logger("jetl.registry").error("pipeline module skipped", file=str(path), error=str(exc))
    _LOADED_FROM = folder
    return _REGISTRY


def _unique(pipelines: list[Pipeline]) -> list[Pipeline]:
    """`pipelines`, checked before any is registered: a name taken (here or already) fails the whole module."""
    names: set[str] = set()
    for p in pipelines:
        if p.name in names or p.name in _REGISTRY:
            other = _REGISTRY[p.name].source_file if p.name in _REGISTRY else p.source_file
            raise DiscoveryError(
                f"{p.source_file or '<code>'}: pipeline name {p.name!r} is already registered by {other}"
            )
        names.add(p.name)
    return pipelines


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError:
        return ""


def on_reload(listener: Callable[[list[Pipeline]], None]) -> None:
    """Call `listener(pipelines)` whenever a module is (re)loaded at run time (the loader binds destinations)."""
    _LISTENERS.append(listener)


def reload_errors() -> dict[str, str]:
    """{file: error} of modules that failed their latest load (at start-up or a reload) and were skipped."""
    return dict(_RELOAD_ERRORS)


def failed_module(name: str, errors: dict[str, str]) -> str | None:
    """The load error of the module a pipeline named `name` would come from (`<name>_pipeline.py`), if it broke."""
    for file, error in errors.items():
        if Path(file).name == f"{name}_pipeline.py":
            return error
    return None


def reload_changed(folder: Path | str | None = None) -> list[str]:
    """(Re)load the modules in `folder` (default: the one discovered) that are new or changed since last seen.

    Returns the names of the pipelines (re)registered. A module that fails is logged and kept in
    `reload_errors()`; what it registered before stays. A deleted module's pipelines also stay until a restart,
    so an editor's delete-and-rename save never strands batches in flight; a deleted module's load error goes
    (nothing is broken any more).
    """
    base = Path(folder) if folder is not None else _LOADED_FROM
    if base is None or not base.is_dir():
        return []
    log = get_logger("jetl.registry")
    changed: list[str] = []
    present = pipeline_files(base)
    here = {p.resolve() for p in present}
    for file in [
        f for f in _RELOAD_ERRORS if Path(f).parent.resolve() == base.resolve() and Path(f).resolve() not in here
    ]:
        del _RELOAD_ERRORS[file]
        _DIGESTS.pop(Path(file).resolve(), None)  # the same text saved again is loaded (and fails) again
        log.info("broken pipeline module deleted", file=file)
    for path in present:
        key, digest = path.resolve(), _digest(path)
        if _DIGESTS.get(key) == digest:
            continue
        _DIGESTS[key] = digest
        try:
            pipelines = load_module(path)
            names: set[str] = set()
            for p in pipelines:
                owner = _REGISTRY.get(p.name)
                if p.name in names or (owner is not None and Path(owner.source_file).resolve() != key):
                    other = owner.source_file if owner is not None and p.name not in names else str(path)
                    raise DiscoveryError(f"{path}: pipeline name {p.name!r} is already registered by {other}")
                names.add(p.name)
        except DiscoveryError as exc:
            _RELOAD_ERRORS[str(path)] = str(exc)
            log.error("pipeline module skipped", file=str(path), error=str(exc))
            continue
        _RELOAD_ERRORS.pop(str(path), None)
        for p in pipelines:
            _REGISTRY[p.name] = p
        for listener in _LISTENERS:
            try:
                listener(pipelines)
            except Exception as exc:  # a listener's failure must not undo the reload; it is reported
                log.error("pipeline reload listener failed", file=str(path), error=f"{type(exc).__name__}: {exc}")
        changed.extend(p.name for p in pipelines)
        log.info("pipeline module loaded", file=str(path), pipelines=[p.name for p in pipelines])
    return changed


def discover_report(folder: Path | str) -> tuple[dict[str, Pipeline], dict[str, str]]:
    """Like discover, but never raises for one module: returns (pipelines, {file: error})."""
    folder = Path(folder)
    found: dict[str, Pipeline] = {}
    errors: dict[str, str] = {}
    for path in pipeline_files(folder):
        try:
            for p in load_module(path):
                if p.name in found:
                    raise DiscoveryError(
                        f"{path}: pipeline name {p.name!r} is already registered by {found[p.name].source_file}"
                    )
                found[p.name] = p
        except DiscoveryError as exc:
            errors[str(path)] = str(exc)
    return found, errors


def get_pipeline_registry() -> dict[str, Pipeline]:
    """All registered pipelines by name, discovering the configured folder on first use."""
    if _LOADED_FROM is None and not _REGISTRY:
        discover(JetlSettings().pipelines_dir)
    return _REGISTRY


def get_pipeline(name: str) -> Pipeline:
    """One pipeline by name, or a ConfigError listing the known names."""
    reg = get_pipeline_registry()
    if name not in reg:
        reload_changed()  # a module added since the last poll: a run request may arrive before the watcher sees it
    if name not in reg:
        known = ", ".join(sorted(reg)) or "none"
        raise ConfigError(f"no pipeline named {name!r} (known: {known})")
    return reg[name]


def clear_registry() -> None:
    """Forget every registered pipeline (tests use this between cases)."""
    global _LOADED_FROM
    _REGISTRY.clear()
    _LOADED_FROM = None
    _DIGESTS.clear()
    _RELOAD_ERRORS.clear()
    _LISTENERS.clear()
