"""The stack context: how a shell finds the stack that `jetl up` started, as kubectl and docker find theirs.

`jetl up` writes `<data folder>/context.json` (owner-only): the NATS URL and the operator's credentials. A command
finds it, in this order: `--context PATH` (the file, or a data folder holding it); `JETL_CONTEXT`; the data folder
that `JETL_DATA_DIR` names; `.jetl/` in the current folder or the nearest parent that has one. Environment variables
override what it says: with `JETL_NATS__URL` set, the context's NATS part is not used at all, so its credentials
never go to another server. Services never read it: each gets its own user from the process that starts it.

A context names the pipelines folder whose modules a command imports and the server it sends credentials to, so only
a file of the user's own that no one else may change is obeyed (`distrust`): one another user owns, or that group or
others may write, is ignored with a warning when found, and refused when named.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jetl.contextfile import CONTEXT_FILE as CONTEXT_FILE
from jetl.contextfile import DEFAULT_DIR as DEFAULT_DIR
from jetl.errors import ConfigError

if TYPE_CHECKING:
    from jetl.stackcontext import StackContext as StackContext


def __getattr__(name: str) -> Any:  # the pydantic model, imported when asked for (`jetl.stackcontext`)
    if name != "StackContext":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from jetl.stackcontext import StackContext

    return StackContext


def context_path(location: Path) -> Path:
    """The context file a `--context` value names: the file itself, or a data folder holding one."""
    return location / CONTEXT_FILE if location.is_dir() else location


def distrust(path: Path) -> str | None:
    """Why the context file `path` must not be obeyed (None: it may): another user owns it, or group or others may
    write it (or the folder holding it, unless that folder is sticky, as /tmp is)."""
    st, folder = path.stat(), path.parent.stat()
    if st.st_uid != os.getuid():
        return f"{path} belongs to another user (uid {st.st_uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} may be changed by other users (chmod 600 {path})"
    if folder.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not folder.st_mode & stat.S_ISVTX:
        return f"{path.parent} lets other users replace {path.name} (chmod 700 {path.parent})"
    return None


def find_context(
    explicit: Path | None,
    data_dir: Path | None,
    start: Path | None = None,
    warn: Callable[[str], None] | None = None,
) -> Path | None:
    """The context file in force: `explicit` (`--context`/`JETL_CONTEXT`), else the one in `data_dir` (set by
    `JETL_DATA_DIR`), else `.jetl/context.json` in `start` (the current folder) or its nearest parent. A file found
    that is not the user's own alone (`distrust`) is passed over with a warning (`warn`, else the log); one named
    explicitly is refused."""
    say = warn or _log_warning
    if explicit is not None:
        path = context_path(explicit)
        if not path.exists():
            raise ConfigError(f"no stack context at {path}: `jetl up` writes one to its data folder")
        if (why := distrust(path)) is not None:
            raise ConfigError(f"the stack context is not used: {why}")
        return path
    candidates: list[Path]
    if data_dir is not None:
        candidates = [data_dir / CONTEXT_FILE]
    else:
        here = (start or Path.cwd()).resolve()
        candidates = [folder / DEFAULT_DIR / CONTEXT_FILE for folder in (here, *here.parents)]
    for path in candidates:
        if not path.exists():
            continue
        why = distrust(path)
        if why is None:
            return path
        say(f"ignoring the stack context: {why}")
    return None


def _log_warning(text: str) -> None:
    from jetl.logging import get_logger  # here: the CLI finds its context with a `warn` of its own, without structlog

    get_logger("jetl.context").warning(text)


def read_context(path: Path) -> StackContext:
    """Read a context file, with an error naming it when it is not one."""
    from jetl.stackcontext import StackContext

    try:
        return StackContext.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the stack context {path} cannot be read: {type(exc).__name__}") from exc
