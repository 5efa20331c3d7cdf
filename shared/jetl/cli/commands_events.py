"""Commands over the event log: status, audit, counts, backfill, replay, dlq."""

from __future__ import annotations
