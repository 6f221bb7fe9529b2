"""Summaries of recorded check results: one run's results with each check's trend over recent runs."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from engine.errors import EngineError, name_hint


@dataclass(frozen=True)
class CheckSummary:
    """One check of one table in the chosen run.

    Attributes:
        trend: failure rates of the check over the recent runs that evaluated it, oldest first, ending with
            the chosen run.
    """

    table: str
    check: str
    action: str
    rows_checked: int
    rows_failed: int
    trend: tuple[float, ...]

    @property
    def failure_rate(self) -> float:
        """Failed rows over checked rows in the chosen run."""
        return self.rows_failed / self.rows_checked if self.rows_checked else 0.0


def summarize(
    metrics: pl.DataFrame, table: str | None = None, run_id: str | None = None, trend_runs: int = 5
) -> tuple[str | None, list[CheckSummary]]:
    """The chosen run (the latest one when `run_id` is None) and its checks, optionally of one table.

    Raises:
        EngineError: `run_id` recorded no check (of `table`, when given).
    """
    checked = metrics["table"].unique().to_list()
    if table is not None:
        metrics = metrics.filter(pl.col("table") == table)
    if metrics.is_empty():
        if table is not None and table not in checked:
            hint = name_hint(table, checked, "run the pipeline first, or check the name with `medallion status`")
            raise EngineError(f"no check results recorded for table `{table}`; {hint}", table=table)
        if run_id is not None or table is not None:
            raise EngineError(f"no check results recorded for {_scope(table, run_id)}; run the pipeline first",
                              table=table, run_id=run_id)
        return None, []
    chosen = run_id or metrics.sort("recorded_at")["run_id"][-1]
    current = metrics.filter(pl.col("run_id") == chosen)
    if current.is_empty():
        raise EngineError(f"no check results recorded for {_scope(table, chosen)}", table=table, run_id=chosen)
    until = current["recorded_at"].max()
    rates = (
        metrics.filter(pl.col("recorded_at") <= until)
        .with_columns(
            (pl.col("rows_failed") / pl.when(pl.col("rows_checked") > 0).then(pl.col("rows_checked")).otherwise(None))
            .fill_null(0.0).alias("rate")
        )
        .sort("recorded_at")
        .group_by("table", "check", maintain_order=True)
        .agg(pl.col("rate").tail(trend_runs))
    )
    trends = {(row["table"], row["check"]): tuple(row["rate"]) for row in rates.iter_rows(named=True)}
    summaries = [
        CheckSummary(row["table"], row["check"], row["action"], row["rows_checked"], row["rows_failed"],
                     trends[(row["table"], row["check"])])
        for row in current.sort("table", "check").iter_rows(named=True)
    ]
    return chosen, summaries


def _scope(table: str | None, run_id: str | None) -> str:
    parts = [f"table `{table}`" if table else "", f"run `{run_id}`" if run_id else ""]
    return " in ".join(p for p in parts if p) or "this root"
