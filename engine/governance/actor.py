"""Who performs an operation and why: the audit fields every commit and run record carries."""

from __future__ import annotations

import getpass
import os

ACTOR_ENV = "MEDALLION_ACTOR"
DEFAULT_REASONS = {
    "run": "pipeline run",
    "backfill": "backfill",
    "restore": "manual restore",
    "maintenance": "scheduled maintenance",
    "erase": "data subject erasure request",
    "protect": "keep personal data out of file statistics",
}


def current_actor() -> str:
    """`$MEDALLION_ACTOR` when set, else the operating-system user."""
    named = os.environ.get(ACTOR_ENV, "").strip()
    if named:
        return named
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def audit_fields(operation: str, reason: str | None = None) -> dict[str, str]:
    """`operation`, `actor` and `reason` (the operation's default reason when None) for commit metadata
    (as `medallion.<key>`) and run records."""
    return {"operation": operation, "actor": current_actor(),
            "reason": reason or DEFAULT_REASONS.get(operation, operation)}
