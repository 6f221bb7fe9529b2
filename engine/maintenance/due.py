"""Maintenance after runs: the tables a run wrote are compacted and vacuumed when they are due."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from engine.config import MaintenanceSettings, Settings
from engine.errors import EngineError
from engine.layout import Layout
from engine.maintenance import optimize, vacuum
from engine.maintenance.policy import Maintenance
from engine.pipeline import Pipeline
from engine.tables import delta

if TYPE_CHECKING:
    from deltalake import DeltaTable

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


def optimize_due(uri: str, table: str, settings: Settings, policy: Maintenance,
                 opened: DeltaTable | None = None) -> str | None:
    """Why the table needs compacting, None when it does not: at least two small files it can merge, and
    `optimize_every` commits since its last optimize or `maintenance.max_small_files` such files. `opened`: the
    table already open at `uri`."""
    opened = opened or delta.open_table(uri, table)
    every = policy.optimize_every or settings.maintenance.optimize_after_commits
    small = optimize.compactable_files(opened, optimize.target_bytes(settings.storage, policy))
    if small < 2:
        return None
    recent = opened.history(every)
    optimized = any(delta.commit_info_value(c, "operation") == optimize.OPERATION for c in recent)
    if not optimized and len(recent) >= every:
        return f"{small} small files and {every} or more commits since the last optimize"
    if small >= settings.maintenance.max_small_files:
        return f"{small} small files"
    return None


def vacuum_due(uri: str, table: str, settings: MaintenanceSettings, now: datetime,
               opened: DeltaTable | None = None) -> str | None:
    """Why the table needs vacuuming, None when it does not: `vacuum_every_hours` since its last vacuum, or,
    never vacuumed, its layer's retention since it was created. A table younger than its retention is never
    due, whether vacuumed by hand or not: no file it stopped referencing can have expired yet. Older ones read
    their newest commits back to the last vacuum, not their whole history. `opened`: the table open at `uri`."""
    opened = opened or delta.open_table(uri, table)
    retention = vacuum.retention_hours(settings, table)
    created = opened.metadata().created_time
    if created is not None and _hours_between(created, now) < retention:
        return None
    last = None
    for commit in delta.newest_commits(uri, table, opened):
        last = commit
        if delta.commit_info_value(commit, "operation") == vacuum.OPERATION:
            waited = _hours_between(commit.get("timestamp", 0), now)
            return None if waited < settings.vacuum_every_hours else f"{waited:.0f} h since the last vacuum"
    waited = _hours_between(created if created is not None else (last or {}).get("timestamp", 0), now)
    return None if waited < retention else f"{waited:.0f} h since the table was created"


def _hours_between(milliseconds: int, now: datetime) -> float:
    """Hours from a log timestamp (milliseconds since the epoch) to `now`."""
    return (now - datetime.fromtimestamp(milliseconds / 1000, UTC)).total_seconds() / 3600


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
        opened = delta.open_table(uri, table)
        for operation in (optimize.OPERATION, vacuum.OPERATION):
            reason = (optimize_due(uri, table, settings, policy, opened) if operation == optimize.OPERATION
                      else vacuum_due(uri, table, settings.maintenance, now, opened))
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
