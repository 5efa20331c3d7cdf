"""The ids messages carry: pipeline names and run ids as subject tokens, and batch ids (`<run>/[<partition>/]<seq>`),
checked on receipt because they name subjects, folders and tables downstream."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from jetl.errors import ConfigError
from jetl.subjects import check_token

_BATCH_ID = re.compile(r"^[A-Za-z0-9_\-]+/(?:[A-Za-z0-9_\-]+/)?[0-9]+$")


def _token(value: str) -> str:
    try:
        return check_token(value, "id")
    except ConfigError as exc:  # a ValueError inside a model: pydantic reports it against the field
        raise ValueError(str(exc)) from None


def check_batch_id(value: str) -> str:
    """Return `value` if it is a batch id (`<run id>/[<partition>/]<digits>`, tokens, never a path), else raise
    ConfigError."""
    if not _BATCH_ID.match(value):
        raise ConfigError(f"batch id {value!r} is not '<run id>/[<partition>/]<sequence number>'")
    return value


def _batch_id(value: str) -> str:
    try:
        return check_batch_id(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


Token = Annotated[str, AfterValidator(_token)]
"""A pipeline name or run id as received: a subject token (letters, digits, `_`, `-`), so never a path."""
BatchId = Annotated[str, AfterValidator(_batch_id)]
"""A batch id as received: `<run id>/[<partition>/]<sequence number>`."""


def batch_id(run_id: str, seq: int, partition: str | None = None) -> str:
    """`<run_id>/<seq>`, or `<run_id>/<partition>/<seq>` for a partitioned run; zero-padded so ids sort in order."""
    if partition is not None:
        return f"{run_id}/{partition}/{seq:06d}"
    return f"{run_id}/{seq:06d}"


def part_id(batch_id: str, part: int = 0, parts: int = 1) -> str:
    """The batch id, or `<batch id>/part<k>` for part k of a batch that travels in several messages: each part is
    published and written once, while the batch keeps its id (ledger, lineage, supersedes)."""
    return batch_id if parts <= 1 else f"{batch_id}/part{part}"


def split_batch_id(batch_id: str) -> tuple[str, str]:
    """(run id, the rest as one file-name-safe token): `r/000003` -> (r, 000003), `r/p0001/000003` -> (r,
    p0001-000003). Run ids and partitions are subject tokens, so the first `/` ends the run id."""
    run, _, rest = batch_id.partition("/")
    for token in (run, *rest.split("/")):
        check_token(token, f"batch id {batch_id!r} part")  # never a path: `..` or `/` would leave a folder
    return run, rest.replace("/", "-")
