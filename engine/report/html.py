"""The report as one self-contained HTML file: no server, no script, no file or network fetch."""

from __future__ import annotations

import jinja2

from engine.report import charts, graph
from engine.report.data import Report, anchor

MIN_PLOTTED_RUNS = 2
"""Fewer runs that did work are not plotted over runs: their numbers are in the page's tables."""


def render(report: Report) -> str:
    """The HTML page of `report`."""
    environment = jinja2.Environment(loader=jinja2.PackageLoader("engine.report"), autoescape=True,
                                     undefined=jinja2.StrictUndefined)
    runs = report.worked_runs if len(report.worked_runs) >= MIN_PLOTTED_RUNS else ()
    return environment.get_template("report.html").render(
        report=report,
        anchor=anchor,
        graph=graph.render(report.tables),
        status_colours=graph.STATUS_COLOURS,
        late_outline=graph.LATE_OUTLINE,
        runs_chart=charts.runs_chart(runs) if runs else "",
        durations_chart=charts.durations_chart(runs) if runs else "",
        table_charts={t.name: charts.table_chart(t) for t in report.tables if len(t.worked_runs) >= MIN_PLOTTED_RUNS},
        trend_charts={(t.name, c.check): charts.trend_chart(c.trend, f"trend-{t.anchor}-{index}")
                      for t in report.tables for index, c in enumerate(t.failing_checks)},
    )
