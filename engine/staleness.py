"""Staleness: how old the data of a table is, against the freshness target it declares (`engine.freshness`).

Two ages, both read from the Delta log alone (no data file is scanned):

- **table age**: `now` minus the newest value of the table's event-time column (`Freshness.time_column`)
  when it declares one, else `now` minus the time of the newest commit that brought new data: a commit of a
  pipeline run (`medallion.operation` = `run`, or a commit of another writer without that key) that added
  data files. Backfills, restores, compactions, vacuums, erasures and the commits that keep personal data
  out of statistics do not count, nor do commits a restore undid.
- **partition age**: `now` minus the newest value of `Freshness.partition_column` present in the table (a
  date counts as midnight UTC at its start). A backfill of an old partition commits recently but leaves the
  newest partition as it is, so it cannot hide a stale recent partition.

Column values come from the `max.<column>` statistics of the live files (`partition.<column>` for a
Delta-partitioned column); files without that statistic (the engine's writer keeps min/max of integer and
date columns only) are read for the Parquet footer's row-group statistics instead, still no data.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable

from engine.freshness import Freshness, format_duration, spell_duration
from engine.tables import delta
from engine.tables.delta_files import add_actions

FRESH, LATE, UNKNOWN, UNTRACKED = "fresh", "late", "unknown", "untracked"
NEVER_BUILT = "never built"
DATA_OPERATIONS = frozenset({"run"})
"""`medallion.operation` values of commits that bring new data; commits without the key (other writers)
count too, unless Delta calls them a restore."""


@dataclass(frozen=True)
class TableFreshness:
    """The freshness of one table at `now`.

    Attributes:
        table: `<layer>.<name>`.
        target: the declared target, None when the table declares none.
        state: `fresh`, `late`, `unknown` (never built, or nothing to measure the age from) or `untracked`
            (no target; the age is still given).
        age: the table age (module docstring), None when unknown.
        age_source: what the age was measured from: `commit vN` or the event-time column.
        partition_age: the age of the newest partition, None without a partition target or when unknown.
        newest_partition: the newest partition value present.
        reasons: why the table is late or unknown, one line each; empty when fresh.
        now: the time the ages were measured at.
    """

    table: str
    target: Freshness | None
    state: str
    age: dt.timedelta | None = None
    age_source: str | None = None
    partition_age: dt.timedelta | None = None
    newest_partition: Any = None
    reasons: tuple[str, ...] = ()
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def reason(self) -> str:
        """The reasons joined in one line."""
        return "; ".join(self.reasons)

    @property
    def overdue(self) -> dt.timedelta | None:
        """How far the table age or partition age is past its target, the larger; None when neither is."""
        target = self.target
        excesses = [age - limit for age, limit in (  # type: ignore[operator]
            (self.age, target.max_age if target else None),
            (self.partition_age, target.partition_max_age if target else None)) if age is not None and limit is not None]
        worst = max(excesses, default=None)
        return worst if worst is not None and worst > dt.timedelta(0) else None

    def summary(self) -> str:
        """One short cell in words: `fresh`, `late by 3 h`, `unknown (never built)`, `unknown`, `age 3h`."""
        if self.state == UNKNOWN:
            return f"{UNKNOWN} ({self.reason})" if self.reasons == (NEVER_BUILT,) else UNKNOWN
        if self.state == UNTRACKED:
            return f"age {format_duration(self.age)}" if self.age is not None else ""
        if self.state == LATE and self.overdue is not None:
            return f"{LATE} by {spell_duration(self.overdue)}"
        return self.state

    def details(self) -> str:
        """The measured ages against their targets: `age 2h of 6h, order_date 1d 10h of 1d 12h`."""
        ages = []
        if self.age is not None:
            ages.append(f"age {format_duration(self.age)}" + (
                f" of {format_duration(self.target.max_age)}" if self.target and self.target.max_age else ""))  # type: ignore[arg-type]
        if self.target is not None and self.target.partition_max_age is not None and self.partition_age is not None:
            ages.append(f"{self.target.partition_column} {format_duration(self.partition_age)} of "
                        f"{format_duration(self.target.partition_max_age)}")  # type: ignore[arg-type]
        return ", ".join(ages)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary (ages in seconds)."""
        target = self.target
        return {
            "state": self.state,
            "target": None if target is None else {
                "max_age_s": target.max_age.total_seconds() if target.max_age is not None else None,  # type: ignore[union-attr]
                "time_column": target.time_column,
                "partition_column": target.partition_column,
                "partition_max_age_s": (target.partition_max_age.total_seconds()  # type: ignore[union-attr]
                                        if target.partition_max_age is not None else None),
            },
            "age_s": self.age.total_seconds() if self.age is not None else None,
            "age_source": self.age_source,
            "partition_age_s": self.partition_age.total_seconds() if self.partition_age is not None else None,
            "newest_partition": None if self.newest_partition is None else str(self.newest_partition),
            "reasons": list(self.reasons),
            "now": self.now.isoformat(),
        }


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def as_instant(value: Any) -> dt.datetime | None:
    """A column value as a UTC time: a date is midnight UTC at its start, naive times are UTC, ISO strings
    are parsed; None when it is none of these."""
    if isinstance(value, dt.datetime):
        return _utc(value)
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time(), dt.UTC)
    if isinstance(value, str):
        try:
            return as_instant(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def _commit_adds_data(uri: str, version: int) -> bool:
    """Whether the commit file of `version` adds a data file (`dataChange`); True when the file is gone
    (log cleaned up), since the commit's operation already qualified it."""
    filesystem, base = pafs.FileSystem.from_uri(f"{uri}/_delta_log/{version:020d}.json")
    try:
        with filesystem.open_input_stream(base) as stream:
            lines = stream.read().decode().splitlines()
    except (FileNotFoundError, OSError):
        return True
    for line in lines:
        if '"add"' not in line:
            continue
        action = json.loads(line).get("add")
        if action is not None and action.get("dataChange", True):
            return True
    return False


def last_data_commit(uri: str, table: str, version: int | None = None) -> dict[str, Any] | None:
    """The newest commit (at or before `version`) that brought new data and that no restore undid, None
    when there is none (module docstring)."""
    undone_above: int | None = None
    for commit in delta.history(uri, table):
        if (version is not None and commit["version"] > version) or \
                (undone_above is not None and commit["version"] > undone_above):
            continue
        undone_above = None
        restored_to = delta.commit_info_value(commit, delta.RESTORED_TO_KEY)
        if restored_to is not None:
            undone_above = int(restored_to)
        operation = delta.commit_info_value(commit, "operation")
        if operation is None and str(commit.get("operation", "")).upper() == "RESTORE":
            continue
        if operation is not None and operation not in DATA_OPERATIONS:
            continue
        if _commit_adds_data(uri, commit["version"]):
            return commit
    return None


def newest_value(table: DeltaTable, column: str) -> Any:
    """The newest value of `column` in the live files of `table`, from the Delta log's statistics, or the
    Parquet footers of files whose log entry has none; None when the table has no non-null value.

    Raises:
        KeyError: the table has no such column.
    """
    if column not in table.schema().to_arrow().names:  # type: ignore[union-attr]
        raise KeyError(column)
    actions = add_actions(table)
    if f"partition.{column}" in actions.column_names:
        values = [v for v in actions.column(f"partition.{column}").to_pylist() if v is not None]
        return max(values, default=None)
    stats = actions.column(f"max.{column}") if f"max.{column}" in actions.column_names else None
    maxes = _python_values(stats) if stats is not None else [None] * actions.num_rows
    nulls = (actions.column(f"null_count.{column}").to_pylist() if f"null_count.{column}" in actions.column_names
             else [None] * actions.num_rows)
    values, unknown = [], []
    for path, records, value, null_count in zip(actions.column("path").to_pylist(),
                                                actions.column("num_records").to_pylist(), maxes, nulls, strict=True):
        if records == 0:
            continue
        if value is not None:
            values.append(value)
        elif not (null_count is not None and records is not None and null_count >= records):
            unknown.append(path)
    values.extend(v for v in (_footer_max(table.table_uri, path, column) for path in unknown) if v is not None)
    return max(values, key=lambda v: as_instant(v) or dt.datetime.min.replace(tzinfo=dt.UTC), default=None)


def _python_values(column: pa.ChunkedArray) -> list[Any]:
    """`column`'s values as Python values; timestamps made here from their integer values (pyarrow's own
    conversion of a zoned timestamp imports pandas, which a reading command does not otherwise need)."""
    if not pa.types.is_timestamp(column.type):
        return column.to_pylist()
    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[column.type.unit]
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    zone = None if column.type.tz is None else dt.UTC if column.type.tz in ("UTC", "+00:00") else _zone(column.type.tz)
    instants = [None if ticks is None else epoch + dt.timedelta(microseconds=ticks * 1_000_000 // per_second)
                for ticks in column.cast(pa.int64()).to_pylist()]
    return [None if i is None else i.replace(tzinfo=None) if zone is None else i.astimezone(zone) for i in instants]


def _zone(name: str) -> dt.tzinfo:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def _footer_max(uri: str, path: str, column: str) -> Any:
    """The max of `column` over the row-group statistics of one data file's Parquet footer."""
    filesystem, base = pafs.FileSystem.from_uri(uri)
    with filesystem.open_input_file(f"{base}/{path}") as source:
        metadata = pq.ParquetFile(source).metadata
    names = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    if column not in names:
        return None
    index = names.index(column)
    highest = None
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(index).statistics
        if stats is None or not stats.has_min_max:
            continue
        value = stats.max
        if highest is None or (as_instant(value) or value) > (as_instant(highest) or highest):
            highest = value
    return highest


def table_freshness(uri: str, table: str, target: Freshness | None, *, now: dt.datetime | None = None,
                    version: int | None = None) -> TableFreshness:
    """The freshness of the table at `uri` (at `version`, latest when None) at `now` (the current time when
    None) against `target`."""
    now = _utc(now or dt.datetime.now(dt.UTC))
    if not delta.table_exists(uri):
        return TableFreshness(table, target, UNKNOWN if target else UNTRACKED,
                              reasons=(NEVER_BUILT,) if target else (), now=now)
    opened = delta.open_table(uri, table, version)
    reasons: list[str] = []
    age = source = partition_age = newest_partition = None
    time_column = target.time_column if target is not None else None
    if time_column is not None:
        try:
            newest = as_instant(newest_value(opened, time_column))
        except KeyError:
            newest = None
            reasons.append(f"event-time column `{time_column}` is not a column of the table")
        else:
            if newest is None:
                reasons.append(f"no value of event-time column `{time_column}` to measure the age from")
        if newest is not None:
            age, source = now - newest, f"newest {time_column} {newest.isoformat()}"
    else:
        commit = last_data_commit(uri, table, opened.version())
        if commit is None:
            if target is not None and target.max_age is not None:
                reasons.append("no commit brought data (only maintenance, restores or backfills)")
        else:
            committed = dt.datetime.fromtimestamp(commit.get("timestamp", 0) / 1000, dt.UTC)
            age, source = now - committed, f"data commit v{commit['version']} at {committed.isoformat()}"
    if target is not None and target.partition_column is not None:
        column = target.partition_column
        try:
            newest_partition = newest_value(opened, column)
        except KeyError:
            reasons.append(f"partition column `{column}` is not a column of the table")
        else:
            instant = as_instant(newest_partition)
            if instant is None:
                reasons.append(f"no value of partition column `{column}` to measure the age from")
            else:
                partition_age = now - instant
    if target is None:
        return TableFreshness(table, None, UNTRACKED, age, source, now=now)
    late: list[str] = []
    if target.max_age is not None and age is not None and age > target.max_age:  # type: ignore[operator]
        late.append(f"{source} is {format_duration(age)} old, target {format_duration(target.max_age)}")  # type: ignore[arg-type]
    if target.partition_max_age is not None and partition_age is not None \
            and partition_age > target.partition_max_age:  # type: ignore[operator]
        late.append(f"newest partition {target.partition_column}={newest_partition} is "
                    f"{format_duration(partition_age)} old, target {format_duration(target.partition_max_age)}")  # type: ignore[arg-type]
    state = LATE if late else UNKNOWN if reasons else FRESH
    return TableFreshness(table, target, state, age, source, partition_age, newest_partition,
                          tuple(late + reasons), now)
