"""What is in a storage root: tables, their versions and row counts, and the runs that wrote them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl
import pyarrow.fs as pafs

from engine.config import StorageSettings
from engine.errors import TableNotFound, name_hint
from engine.layout import Layout
from engine.runlog import read_records
from engine.storage import filesystem_of
from engine.tables.formats import TableFormats, found_format
from engine.tables.timetravel import version_at

DATA_LAYERS = ("bronze", "silver", "gold", "quarantine")


@dataclass(frozen=True)
class TableStatus:
    """The latest state of one table.

    Attributes:
        table: `<layer>.<name>` (quarantine tables: `quarantine.<layer>.<name>`).
        version: latest version.
        rows: rows at that version.
        last_run_id: run that last recorded this table, if any.
        last_status: that run's status for the table.
        last_finished_at: when that run finished with the table.
    """

    table: str
    version: int
    rows: int
    last_run_id: str | None
    last_status: str | None
    last_finished_at: datetime | None


@dataclass(frozen=True)
class TableVersion:
    """One commit of a table.

    Attributes:
        version: the version number.
        timestamp: commit time.
        operation: WRITE, MERGE, CREATE TABLE, ...
        run_id: the run that committed it, when the engine did.
        rows: rows in the table at this version.
    """

    version: int
    timestamp: datetime
    operation: str
    run_id: str | None
    rows: int


def list_tables(layout: Layout) -> dict[str, str]:
    """Every table (Delta or Iceberg) under the root's data layers, by name, with its location."""
    found: dict[str, str] = {}
    filesystem, base = filesystem_of(layout.root)
    for layer in DATA_LAYERS:
        infos = filesystem.get_file_info(pafs.FileSelector(f"{base}/{layer}", allow_not_found=True))
        for info in sorted(infos, key=lambda i: i.base_name):
            if info.type != pafs.FileType.Directory:
                continue
            name = info.base_name
            if layer == "quarantine":
                found.update({f"quarantine.{name}.{child}": uri for child, uri in _children(layout, name).items()})
            elif found_format(f"{layout.root}/{layer}/{name}") is not None:
                found[f"{layer}.{name}"] = f"{layout.root}/{layer}/{name}"
    return found


def table_location(layout: Layout, table: str) -> str:
    """Where `table` (a layer table or `quarantine.<layer>.<name>`) lies under the root.

    Raises:
        TableNotFound: no table of that name is there; the message names the closest names that are.
    """
    uri = layout.location(table)
    if found_format(uri) is None:
        hint = name_hint(table, list_tables(layout), "`medallion status` lists the tables there")
        raise TableNotFound(f"no table `{table}` under {layout.root}; {hint}", table=table, path=uri)
    return uri


def _children(layout: Layout, layer: str) -> dict[str, str]:
    filesystem, base = filesystem_of(layout.root)
    selector = pafs.FileSelector(f"{base}/quarantine/{layer}", allow_not_found=True)
    return {
        info.base_name: f"{layout.root}/quarantine/{layer}/{info.base_name}"
        for info in sorted(filesystem.get_file_info(selector), key=lambda i: i.base_name)
        if info.type == pafs.FileType.Directory
        and found_format(f"{layout.root}/quarantine/{layer}/{info.base_name}") is not None
    }


def table_statuses(layout: Layout, as_of: datetime | None = None,
                   formats: TableFormats | None = None) -> list[TableStatus]:
    """The status of every table under the root, in layer order; as of `as_of` when given (each table at its
    version then, runs finished by then, tables created later left out). `formats` reaches Iceberg tables in
    their catalog (the default SQLite catalog of the root when None)."""
    formats = formats or TableFormats(StorageSettings(root=layout.root))
    records = read_records(layout.runs())
    if as_of is not None:
        records = records.filter(pl.col("finished_at") <= as_of)
    latest = {row["table"]: row for row in records.iter_rows(named=True)}
    statuses = []
    for table, uri in list_tables(layout).items():
        store = formats.at(uri)
        version = (store.latest_version(uri) or 0) if as_of is None else version_at(uri, table, as_of, store)
        if version is None:
            continue
        record = latest.get(table, {})
        statuses.append(TableStatus(
            table=table,
            version=version,
            rows=store.row_count(uri, table, version),
            last_run_id=record.get("run_id"),
            last_status=record.get("status"),
            last_finished_at=record.get("finished_at"),
        ))
    return statuses


def table_history(layout: Layout, table: str, limit: int | None = None,
                  formats: TableFormats | None = None) -> list[TableVersion]:
    """Commits of `table`, newest first, at most `limit`."""
    uri = layout.quarantine(table.removeprefix("quarantine.")) if table.startswith("quarantine.") else layout.table(table)
    store = (formats or TableFormats(StorageSettings(root=layout.root))).at(uri)
    versions = []
    for commit in store.history(uri, table)[:limit]:
        versions.append(TableVersion(
            version=commit["version"],
            timestamp=datetime.fromtimestamp(commit.get("timestamp", 0) / 1000, UTC),
            operation=commit.get("operation", ""),
            run_id=store.commit_info_value(commit, "run_id"),
            rows=store.row_count(uri, table, commit["version"]),
        ))
    return versions
