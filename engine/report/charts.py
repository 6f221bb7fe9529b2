"""The report's plots, drawn with matplotlib as inline SVG: rows and failures over runs, time per step, and
per table its rows, durations and the failure rates of its failing checks. Runs that did nothing are left
out by the caller."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib
from matplotlib.figure import Figure

from engine.report.data import RunSummary, TableReport, TableRun

MAX_STEPS = 8
PALETTE = ("#1a73e8", "#e8710a", "#188038", "#d93025", "#9334e6", "#12b5cb", "#f9ab00", "#b31412", "#9aa0a6")
STYLE = {"svg.fonttype": "none", "svg.hashsalt": "medallion-report", "font.size": 9,
         "axes.spines.top": False, "axes.spines.right": False}


def _svg(figure: Figure, chart_id: str) -> str:
    """`figure` as an inline `<svg>` with `id=chart_id` and class `chart`."""
    buffer = io.StringIO()
    with matplotlib.rc_context(STYLE):
        figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):].replace("<svg ", f'<svg id="{chart_id}" class="chart" ', 1)


def _figure(width: float, height: float, rows: int = 1) -> tuple[Figure, list]:
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(width, height), layout="constrained")
        axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    return figure, list(axes)


def _labels(runs: Sequence[RunSummary | TableRun]) -> list[str]:
    return [run.started_at.strftime("%m-%d %H:%M:%S") for run in runs]


def runs_chart(runs: Sequence[RunSummary]) -> str:
    """Rows written per run, and rows quarantined and failing checks per run."""
    with matplotlib.rc_context(STYLE):
        figure, (written, failures) = _figure(8, 4.2, rows=2)
        positions = range(len(runs))
        written.bar(positions, [r.rows_written for r in runs], color=PALETTE[0])
        written.set_ylabel("rows written")
        written.set_title("Rows and failures over runs", loc="left")
        failures.plot(positions, [r.rows_quarantined for r in runs], marker="o", color=PALETTE[1],
                      label="rows quarantined")
        failures.plot(positions, [r.rows_failing_checks for r in runs], marker="s", color=PALETTE[3],
                      label="rows failing checks")
        failures.set_ylabel("rows")
        failures.legend(loc="upper left", frameon=False)
        failures.set_xticks(list(positions), _labels(runs), rotation=45, ha="right")
    return _svg(figure, "chart-runs")


def durations_chart(runs: Sequence[RunSummary]) -> str:
    """Seconds per run, stacked by table (the slowest tables by name, the rest together)."""
    totals: dict[str, float] = {}
    for run in runs:
        for table, seconds in run.durations.items():
            totals[table] = totals.get(table, 0.0) + seconds
    named = sorted(totals, key=totals.__getitem__, reverse=True)[:MAX_STEPS]
    with matplotlib.rc_context(STYLE):
        figure, (axes,) = _figure(8, 3.4)
        positions = list(range(len(runs)))
        bottom = [0.0] * len(runs)
        steps = [(t, [run.durations.get(t, 0.0) for run in runs]) for t in named]
        rest = [sum(s for t, s in run.durations.items() if t not in named) for run in runs]
        if any(rest):
            steps.append(("other tables", rest))
        for index, (label, seconds) in enumerate(steps):
            axes.bar(positions, seconds, bottom=bottom, color=PALETTE[index % len(PALETTE)], label=label)
            bottom = [b + s for b, s in zip(bottom, seconds)]
        axes.set_ylabel("seconds (sum of table steps)")
        axes.set_title("Time per step", loc="left")
        axes.set_xticks(positions, _labels(runs), rotation=45, ha="right")
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)
    return _svg(figure, "chart-durations")


def table_chart(table: TableReport) -> str:
    """Rows written and quarantined, and seconds, over the table's recent runs that did something to it."""
    runs = table.worked_runs
    with matplotlib.rc_context(STYLE):
        figure, (rows, seconds) = _figure(5.5, 2.8, rows=2)
        positions = list(range(len(runs)))
        rows.bar(positions, [r.rows_written for r in runs], color=PALETTE[0], label="written")
        rows.plot(positions, [r.rows_quarantined for r in runs], marker="o", color=PALETTE[1], label="quarantined")
        rows.set_ylabel("rows")
        rows.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=7)
        seconds.plot(positions, [r.duration_s for r in runs], marker=".", color=PALETTE[2])
        seconds.set_ylabel("seconds")
        seconds.set_xticks(positions, _labels(runs), rotation=45,
                           ha="right", fontsize=7)
    return _svg(figure, f"chart-{table.anchor}")


def trend_chart(rates: Sequence[float], chart_id: str) -> str:
    """A small line of a check's failure rate (percent) over recent runs."""
    with matplotlib.rc_context(STYLE):
        figure, (axes,) = _figure(1.8, 0.55)
        axes.plot(range(len(rates)), [100 * r for r in rates], marker=".", color=PALETTE[3], linewidth=1)
        axes.set_xticks([])
        axes.tick_params(labelsize=6)
        axes.set_ylim(bottom=0)
    return _svg(figure, chart_id)
