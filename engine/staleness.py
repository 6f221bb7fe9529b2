"""Staleness: how old the data of a table is, against the freshness target it declares (`engine.freshness`).

Two ages, both read from the table's log or metadata alone (no data file is scanned), through its store
(`TableStore.last_data_commit`, `TableStore.newest_value`), so Delta and Iceberg tables are measured alike:

- **table age**: `now` minus the newest value of the table's event-time column (`Freshness.time_column`)
  when it declares one, else `now` minus the time of the newest commit that brought new data: a commit of a
  pipeline run (`medallion.operation` = `run`, or a commit of another writer without that key) that added
  data files. Backfills, restores, compactions, vacuums, erasures and the commits that keep personal data
  out of statistics do not count, nor do commits a restore undid.
- **partition age**: `now` minus the newest value of `Freshness.partition_column` present in the table (a
  date counts as midnight UTC at its start). A backfill of an old partition commits recently but leaves the
  newest partition as it is, so it cannot hide a stale recent partition.

Column values come from the statistics of the live files: `max.<column>` in a Delta log (`partition.<column>`
for a Delta-partitioned column), the upper bounds of an Iceberg table's manifests; files without one are read
for the Parquet footer's row-group statistics instead, still no data.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.freshness import Freshness, as_instant, format_duration, spell_duration

if TYPE_CHECKING:
    from engine.tables.formats import TableStore

FRESH, LATE, UNKNOWN, UNTRACKED = "fresh", "late", "unknown", "untracked"
NEVER_BUILT = "never built"


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


def table_freshness(store: TableStore, uri: str, table: str, target: Freshness | None, *,
                    now: dt.datetime | None = None, version: int | None = None) -> TableFreshness:
    """The freshness of the table at `uri`, kept by `store` (at `version`, latest when None), at `now` (the
    current time when None) against `target`."""
    now = as_instant(now or dt.datetime.now(dt.UTC)) or dt.datetime.now(dt.UTC)
    if not store.table_exists(uri):
        return TableFreshness(table, target, UNKNOWN if target else UNTRACKED,
                              reasons=(NEVER_BUILT,) if target else (), now=now)
    version = store.version(uri, table, version)
    reasons: list[str] = []
    age = source = partition_age = newest_partition = None
    time_column = target.time_column if target is not None else None
    if time_column is not None:
        try:
            newest = as_instant(store.newest_value(uri, table, time_column, version))
        except KeyError:
            newest = None
            reasons.append(f"event-time column `{time_column}` is not a column of the table")
        else:
            if newest is None:
                reasons.append(f"no value of event-time column `{time_column}` to measure the age from")
        if newest is not None:
            age, source = now - newest, f"newest {time_column} {newest.isoformat()}"
    else:
        commit = store.last_data_commit(uri, table, version)
        if commit is None:
            if target is not None and target.max_age is not None:
                reasons.append("no commit brought data (only maintenance, restores or backfills)")
        else:
            committed = dt.datetime.fromtimestamp(commit.get("timestamp", 0) / 1000, dt.UTC)
            age, source = now - committed, f"data commit v{commit['version']} at {committed.isoformat()}"
    if target is not None and target.partition_column is not None:
        column = target.partition_column
        try:
            newest_partition = store.newest_value(uri, table, column, version)
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
