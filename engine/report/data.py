"""What the report shows, gathered from a storage root: the catalog (graph, owners, freshness), run records,
table versions, quality check trends and quarantined rows by reason."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl

from engine.catalog import CatalogEntry, build_catalog
from engine.layout import Layout
from engine.pipeline import Pipeline
from engine.quality.metrics import read_metrics
from engine.quality.report import CheckSummary, summarize
from engine.report.quarantine import Quarantine, read_quarantine
from engine.runlog import read_records, run_status
from engine.status import TableVersion, table_history

NEVER_RUN = "never run"
IDLE = ("unchanged", "skipped", "interrupted")


def anchor(table: str) -> str:
    """The HTML id of the section of `table`."""
    return "table-" + table.replace(".", "-")


@dataclass(frozen=True)
class TableRun:
    """What one run did to one table."""

    run_id: str
    table: str
    status: str
    started_at: dt.datetime
    duration_s: float
    rows_written: int
    rows_quarantined: int
    output_version: int | None
    error: str | None

    @property
    def did_work(self) -> bool:
        """Whether the run did something to the table: it was not unchanged, skipped or interrupted, or it wrote or
        quarantined rows."""
        return self.status not in IDLE or self.rows_written > 0 or self.rows_quarantined > 0


@dataclass(frozen=True)
class TableReport:
    """One table: its catalog entry, its recent runs (oldest first), its newest versions (newest first), the
    checks of its latest checked run, each with its failure-rate trend over the recent runs, and its
    quarantine by reason."""

    entry: CatalogEntry
    runs: tuple[TableRun, ...]
    versions: tuple[TableVersion, ...]
    checks: tuple[CheckSummary, ...]
    quarantine: Quarantine | None

    @property
    def worked_runs(self) -> tuple[TableRun, ...]:
        """The recent runs that did something to the table: the ones plotted."""
        return tuple(r for r in self.runs if r.did_work)

    @property
    def failing_checks(self) -> tuple[CheckSummary, ...]:
        """Checks that failed rows in some run of their trend."""
        return tuple(c for c in self.checks if _failed(c))

    @property
    def passing_checks(self) -> tuple[CheckSummary, ...]:
        """Checks that failed no row in any run of their trend."""
        return tuple(c for c in self.checks if not _failed(c))

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
        return anchor(self.name)


@dataclass(frozen=True)
class RunSummary:
    """One run over all its tables: what it did to each (in the order they started) and its failed check
    rows."""

    run_id: str
    pipeline: str
    started_at: dt.datetime
    finished_at: dt.datetime
    status: str
    tables: tuple[TableRun, ...]
    rows_failing_checks: int

    @property
    def duration_s(self) -> float:
        """Seconds from the first table's start to the last table's finish."""
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def durations(self) -> dict[str, float]:
        """Seconds per table."""
        return {t.table: t.duration_s for t in self.tables}

    @property
    def rows_written(self) -> int:
        """Rows written to all tables."""
        return sum(t.rows_written for t in self.tables)

    @property
    def rows_quarantined(self) -> int:
        """Rows quarantined from all tables."""
        return sum(t.rows_quarantined for t in self.tables)

    @property
    def did_work(self) -> bool:
        """Whether the run did something to some table."""
        return any(t.did_work for t in self.tables)


@dataclass(frozen=True)
class Report:
    """Everything the page shows."""

    root: str
    generated_at: dt.datetime
    tables: tuple[TableReport, ...]
    runs: tuple[RunSummary, ...]

    @property
    def worked_runs(self) -> tuple[RunSummary, ...]:
        """The runs that did something to some table: the ones plotted."""
        return tuple(r for r in self.runs if r.did_work)

    @property
    def run_ids(self) -> frozenset[str]:
        """The ids of the runs the page has a section for."""
        return frozenset(r.run_id for r in self.runs)

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
           now: dt.datetime | None = None, may_read: Callable[[str], bool] = lambda _: True) -> Report:
    """The report of the root at `layout`: the tables of `pipelines` (every table under the root, with the
    declarations of the pipeline named in its last commit, when none is given), their last `runs` runs and
    `versions` versions; a quarantine's example rows only when `may_read` its name (`quarantine.<table>`)."""
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
                    checks=_checks(metrics, entry.table, runs),
                    quarantine=read_quarantine(layout, entry.table,
                                               examples=may_read(f"quarantine.{entry.table}")))
        for entry in entries
    )
    return Report(root=layout.root, generated_at=now, tables=tables, runs=_run_summaries(records, metrics))


def _failed(check: CheckSummary) -> bool:
    return check.rows_failed > 0 or any(rate > 0 for rate in check.trend)


def _table_runs(records: pl.DataFrame) -> tuple[TableRun, ...]:
    return tuple(
        TableRun(run_id=row["run_id"], table=row["table"], status=row["status"], started_at=row["started_at"],
                 duration_s=row["duration_s"] or 0.0, rows_written=row["rows_written"] or 0,
                 rows_quarantined=row["rows_quarantined"] or 0, output_version=row["output_version"],
                 error=row["error"])
        for row in records.sort("started_at").iter_rows(named=True)
    )


def _checks(metrics: pl.DataFrame, table: str, runs: int) -> tuple[CheckSummary, ...]:
    mine = metrics.filter(pl.col("table") == table)
    if mine.is_empty():
        return ()
    return tuple(summarize(mine, table, trend_runs=runs)[1])


def _run_summaries(records: pl.DataFrame, metrics: pl.DataFrame) -> tuple[RunSummary, ...]:
    failing = dict(metrics.group_by("run_id").agg(pl.col("rows_failed").sum()).iter_rows())
    summaries = []
    for (run_id,), rows in records.sort("started_at").group_by("run_id", maintain_order=True):
        summaries.append(RunSummary(
            run_id=str(run_id),
            pipeline=rows["pipeline"][0],
            started_at=rows["started_at"].min(),  # type: ignore[arg-type]
            finished_at=rows["finished_at"].max(),  # type: ignore[arg-type]
            status=run_status(rows["status"]),
            tables=_table_runs(rows),
            rows_failing_checks=int(failing.get(run_id, 0) or 0),
        ))
    return tuple(summaries)
