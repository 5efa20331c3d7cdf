"""SQLAlchemy's errors in jetl's terms (`jetl.errors`), as the table in `jetl.extractors.database` lays out."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

from jetl.errors import ConfigError, JetlError, TerminalError, TransientError
from jetl.redact import redact_text

_SQLITE_STATEMENT_ERRORS = (
    "no such table",
    "no such column",
    "syntax error",
    "ambiguous column",
    "no such function",
)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _statement_problem(exc: sa_exc.DBAPIError) -> bool:
    """The statement cannot work: SQLSTATE class 42 (syntax, undefined object, privilege) or SQLite kin."""
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if isinstance(state, str) and state.startswith("42"):
        return True
    message = str(exc.orig).lower()
    return type(exc.orig).__module__.startswith("sqlite3") and any(m in message for m in _SQLITE_STATEMENT_ERRORS)


def _translate(exc: sa_exc.SQLAlchemyError, where: str, password: str | None) -> JetlError:
    """The driver's error in jetl's terms; its text goes through `redact_text` (a driver may quote the URL or
    the password)."""
    error = _classify(exc, where)
    return type(error)(redact_text(str(error), password))


def _classify(exc: sa_exc.SQLAlchemyError, where: str) -> JetlError:
    if isinstance(exc, sa_exc.NoSuchTableError):
        return ConfigError(f"{where}: no such table {str(exc)!r} (or no permission to see it)")
    if isinstance(exc, sa_exc.TimeoutError):
        return TransientError(f"{where}: no free connection in the pool: {exc}")
    if isinstance(exc, sa_exc.DBAPIError):
        detail = _first_line(exc)
        if _statement_problem(exc) or isinstance(exc, sa_exc.ProgrammingError):
            return ConfigError(f"{where}: the database rejects the statement: {detail}")
        if exc.connection_invalidated or isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return TransientError(f"{where}: database unavailable: {detail}")
        return TerminalError(f"{where}: {type(exc.orig).__name__}: {detail}")
    if isinstance(exc, sa_exc.StatementError):  # e.g. a value the column type cannot bind
        return ConfigError(f"{where}: {_first_line(exc)}")
    return TerminalError(f"{where}: {type(exc).__name__}: {exc}")
