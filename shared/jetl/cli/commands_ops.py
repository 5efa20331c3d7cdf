"""Operational commands: deploy, status, audit, counts, dlq."""

from __future__ import annotations
