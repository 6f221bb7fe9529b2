"""What the report shows, gathered from a storage root: the catalog (graph, owners, freshness), run records,
table versions and quality check trends."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from engine.catalog import CatalogEntry, build_catalog
from engine.pipeline import Pipeline
from engine.quality.metrics import read_metrics
from engine.quality.report import CheckSummary, summarize
from engine.runlog import read_records
from engine.status import TableVersion, table_history
from engine.tables.layout import Layout

NEVER_RUN = "never run"


@dataclass(frozen=True)
class TableRun:
    """What one run did to one table."""

    run_id: str
    status: str
    started_at: dt.datetime
    duration_s: float
    rows_written: int
    rows_quarantined: int
    output_version: int | None
    error: str | None


@dataclass(frozen=True)
class TableReport:
    """One table: its catalog entry, its recent runs (oldest first), its newest versions (newest first) and
    the checks of its latest checked run, each with its failure-rate trend."""

    entry: CatalogEntry
    runs: tuple[TableRun, ...]
    versions: tuple[TableVersion, ...]
    checks: tuple[CheckSummary, ...]

    @property
    def name(self) -> str:
        """`<layer>.<name>`."""
        return self.entry.table

    @property
    def last_status(self) -> str:
        """The status of the table in its latest run, `never run` when no run recorded it."""
        return self.runs[-1].status if self.runs else NEVER_RUN

    @property
    def anchor(self) -> str:
        """The HTML id of the table's section."""
        return "table-" + self.name.replace(".", "-")


@dataclass(frozen=True)
class RunSummary:
    """One run over all its tables: duration per table, rows written and quarantined, failed check rows."""

    run_id: str
    pipeline: str
    started_at: dt.datetime
    finished_at: dt.datetime
    status: str
    durations: dict[str, float]
    rows_written: int
    rows_quarantined: int
    rows_failing_checks: int

    @property
    def duration_s(self) -> float:
        """Seconds from the first table's start to the last table's finish."""
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class Report:
    """Everything the page shows."""

    root: str
    generated_at: dt.datetime
    tables: tuple[TableReport, ...]
    runs: tuple[RunSummary, ...]

    @property
    def late(self) -> list[TableReport]:
        """Tables that miss their freshness target."""
        return [t for t in self.tables if t.entry.freshness is not None and t.entry.freshness.state == "late"]

    def status_counts(self) -> dict[str, int]:
        """How many tables ended their latest run in each status."""
        counts: dict[str, int] = {}
        for table in self.tables:
            counts[table.last_status] = counts.get(table.last_status, 0) + 1
        return counts


def gather(layout: Layout, pipelines: Sequence[Pipeline] = (), *, runs: int = 20, versions: int = 10,
           now: dt.datetime | None = None) -> Report:
    """The report of the root at `layout`: the tables of `pipelines` (every table under the root, with the
    declarations of the pipeline named in its last commit, when none is given), their last `runs` runs and
    `versions` versions."""
    now = now or dt.datetime.now(dt.UTC)
    entries = build_catalog(layout, pipelines, now=now, only_pipelines=bool(pipelines))
    records = read_records(layout.runs())
    names = [e.table for e in entries]
    records = records.filter(pl.col("table").is_in(names))
    recent_ids = records.group_by("run_id").agg(pl.col("started_at").min()).sort("started_at").tail(runs)
    records = records.filter(pl.col("run_id").is_in(recent_ids["run_id"].implode()))
    metrics = read_metrics(layout.quality())
    tables = tuple(
        TableReport(entry=entry,
                    runs=_table_runs(records.filter(pl.col("table") == entry.table)),
                    versions=tuple(table_history(layout, entry.table, versions)) if entry.version is not None else (),
                    checks=_checks(metrics, entry.table))
        for entry in entries
    )
    return Report(root=layout.root, generated_at=now, tables=tables, runs=_run_summaries(records, metrics))


def _table_runs(records: pl.DataFrame) -> tuple[TableRun, ...]:
    return tuple(
        TableRun(run_id=row["run_id"], status=row["status"], started_at=row["started_at"],
                 duration_s=row["duration_s"] or 0.0, rows_written=row["rows_written"] or 0,
                 rows_quarantined=row["rows_quarantined"] or 0, output_version=row["output_version"],
                 error=row["error"])
        for row in records.sort("started_at").iter_rows(named=True)
    )


def _checks(metrics: pl.DataFrame, table: str) -> tuple[CheckSummary, ...]:
    mine = metrics.filter(pl.col("table") == table)
    if mine.is_empty():
        return ()
    return tuple(summarize(mine, table)[1])


def _run_summaries(records: pl.DataFrame, metrics: pl.DataFrame) -> tuple[RunSummary, ...]:
    failing = dict(metrics.group_by("run_id").agg(pl.col("rows_failed").sum()).iter_rows())
    summaries = []
    for (run_id,), rows in records.sort("started_at").group_by("run_id", maintain_order=True):
        statuses = set(rows["status"])
        status = next((s for s in ("failed", "skipped", "succeeded") if s in statuses), "unchanged")
        summaries.append(RunSummary(
            run_id=str(run_id),
            pipeline=rows["pipeline"][0],
            started_at=rows["started_at"].min(),  # type: ignore[arg-type]
            finished_at=rows["finished_at"].max(),  # type: ignore[arg-type]
            status=status,
            durations=dict(zip(rows["table"], rows["duration_s"].fill_null(0.0), strict=True)),
            rows_written=int(rows["rows_written"].sum()),
            rows_quarantined=int(rows["rows_quarantined"].sum()),
            rows_failing_checks=int(failing.get(run_id, 0) or 0),
        ))
    return tuple(summaries)
