"""Vacuum: deleting the data files a table no longer references once they are older than the retention,
except the files of pinned versions."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow.fs as pafs
from deltalake.exceptions import DeltaError

from engine.config import MaintenanceSettings
from engine.errors import MaintenanceError
from engine.governance.actor import audit_fields
from engine.layout import Layout
from engine.lease import other_live_holders
from engine.maintenance.pins import list_pins
from engine.storage import filesystem_of
from engine.tables.delta import commit_metadata, open_table

OPERATION = "vacuum"


@dataclass(frozen=True)
class Vacuumed:
    """What one vacuum did to one table.

    Attributes:
        table: the table's name.
        retention_hours: files removed from the table longer ago than this were candidates.
        files: the files deleted (with `dry_run`: that would be deleted), relative to the table folder.
        kept_versions: pinned versions whose files were kept.
        dry_run: nothing was deleted.
        version: the last commit recording the vacuum, None when nothing was deleted.
    """

    table: str
    retention_hours: int
    files: list[str]
    kept_versions: list[int]
    dry_run: bool
    version: int | None


def retention_hours(settings: MaintenanceSettings, table: str) -> int:
    """The retention of `table`'s layer (`quarantine` for quarantine tables), else the default one."""
    return settings.retention_hours.get(table.split(".")[0], settings.default_retention_hours)


def vacuum_table(layout: Layout, table: str, *, settings: MaintenanceSettings, hours: int | None = None,
                 force: bool = False, dry_run: bool = False, reason: str = "vacuum") -> Vacuumed:
    """Delete the files `table` stopped referencing more than `hours` (default: its layer's retention) ago,
    keeping every file of a version an active pin names.

    Raises:
        MaintenanceError: `hours` is below `settings.min_retention_hours` and `force` is not set (or it is,
            but a run of another process holds a run lease on the root), or the vacuum failed.
        TableNotFound: there is no such table.
    """
    hours = retention_hours(settings, table) if hours is None else hours
    if hours < settings.min_retention_hours and not force:
        raise MaintenanceError(
            f"vacuum of `{table}` refused: a retention of {hours} h is below the safe minimum of "
            f"{settings.min_retention_hours} h (a reader or writer still running may need newer removed files); "
            f"use a retention of at least {settings.min_retention_hours} h, or --force", table=table)
    if hours < settings.min_retention_hours and not dry_run:
        running = other_live_holders(layout)
        if running:
            pipeline, holder = running[0]
            raise MaintenanceError(
                f"vacuum of `{table}` with a retention of {hours} h refused while pipeline `{pipeline}` is running "
                f"on this root ({holder.describe(time.time())}): it would delete the files that run has written and "
                f"not committed yet; wait for it to finish, or use a retention of at least "
                f"{settings.min_retention_hours} h", table=table)
    uri = layout.location(table)
    delta_table = open_table(uri, table)
    kept = sorted({p.version for p in list_pins(layout, table, active_at=datetime.now(UTC))
                   if p.version <= delta_table.version()})
    try:
        candidates = delta_table.vacuum(hours, dry_run=True, enforce_retention_duration=False, keep_versions=kept)
        filesystem, root = filesystem_of(uri)
        infos = filesystem.get_file_info([f"{root}/{path}" for path in candidates])
        present = [path for path, info in zip(candidates, infos) if info.type != pafs.FileType.NotFound]
        if dry_run or not present:
            return Vacuumed(table, hours, present, kept, dry_run, None)
        metadata = audit_fields(OPERATION, reason) | {"table": table, "retention_hours": str(hours),
                                                     "kept_versions": ",".join(map(str, kept))}
        delta_table.vacuum(hours, dry_run=False, enforce_retention_duration=False, keep_versions=kept,
                           commit_properties=commit_metadata(metadata))
    except DeltaError as err:
        raise MaintenanceError(f"vacuum of `{table}` failed: {err}; run it again", table=table, path=uri) from err
    return Vacuumed(table, hours, present, kept, False, open_table(uri, table).version())
