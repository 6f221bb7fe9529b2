"""Maintenance after runs: the tables a run wrote are compacted and vacuumed when they are due."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from engine.config import MaintenanceSettings, Settings
from engine.errors import EngineError
from engine.layout import Layout
from engine.maintenance import optimize, vacuum
from engine.maintenance.policy import Maintenance
from engine.pipeline import Pipeline
from engine.tables import delta

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Done:
    """One maintenance operation run after a run.

    Attributes:
        table: the table.
        operation: `optimize` or `vacuum`.
        reason: why it was due.
        result: what it did, None when it failed.
        error: why it failed.
    """

    table: str
    operation: str
    reason: str
    result: optimize.Optimized | vacuum.Vacuumed | None = None
    error: str | None = None


def optimize_due(uri: str, table: str, settings: Settings, policy: Maintenance) -> str | None:
    """Why the table needs compacting, None when it does not: at least two small files it can merge, and
    `optimize_every` commits since its last optimize or `maintenance.max_small_files` such files."""
    every = policy.optimize_every or settings.maintenance.optimize_after_commits
    small = optimize.compactable_files(uri, table, optimize.target_bytes(settings.storage, policy))
    if small < 2:
        return None
    recent = delta.open_table(uri, table).history(every)
    optimized = any(delta.commit_info_value(c, "operation") == optimize.OPERATION for c in recent)
    if not optimized and len(recent) >= every:
        return f"{small} small files and {every} or more commits since the last optimize"
    if small >= settings.maintenance.max_small_files:
        return f"{small} small files"
    return None


def vacuum_due(uri: str, table: str, settings: MaintenanceSettings, now: datetime) -> str | None:
    """Why the table needs vacuuming, None when it does not: `vacuum_every_hours` since its last vacuum, or,
    never vacuumed, its layer's retention since it was created (no file can have expired before)."""
    commits = delta.history(uri, table)
    vacuums = [c for c in commits if delta.commit_info_value(c, "operation") == vacuum.OPERATION]
    last = max(vacuums, key=lambda c: c["version"]) if vacuums else min(commits, key=lambda c: c["version"])
    waited = (now - datetime.fromtimestamp(last.get("timestamp", 0) / 1000, UTC)).total_seconds() / 3600
    interval = settings.vacuum_every_hours if vacuums else vacuum.retention_hours(settings, table)
    if waited < interval:
        return None
    return f"{waited:.0f} h since the last vacuum" if vacuums else f"{waited:.0f} h since the table was created"


def run_due_maintenance(pipeline: Pipeline, settings: Settings, tables: Iterable[str],
                        now: datetime | None = None) -> list[Done]:
    """Compact and vacuum those of `tables` (of `pipeline`, under the settings' root) and of their
    quarantines that are due; a failure is logged and reported, never raised, since the run itself
    succeeded. Ray must be initialised."""
    layout = Layout.at(settings.storage.root)
    now = now or datetime.now(UTC)
    done = []
    for table in [name for written in tables for name in (written, f"quarantine.{written}")]:
        uri = layout.location(table)
        if not delta.table_exists(uri):
            continue
        definition = pipeline.tables.get(table)
        policy = definition.maintenance if definition is not None else Maintenance()
        for operation in (optimize.OPERATION, vacuum.OPERATION):
            reason = (optimize_due(uri, table, settings, policy) if operation == optimize.OPERATION
                      else vacuum_due(uri, table, settings.maintenance, now))
            if reason is None:
                continue
            try:
                result = (optimize.optimize_table(uri, table, storage=settings.storage, policy=policy, reason=reason)
                          if operation == optimize.OPERATION
                          else vacuum.vacuum_table(layout, table, settings=settings.maintenance, reason=reason))
            except EngineError as err:
                log.warning("%s of `%s` failed: %s", operation, table, err)
                done.append(Done(table, operation, reason, error=str(err)))
                continue
            done.append(Done(table, operation, reason, result))
    return done
