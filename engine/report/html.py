"""The report as one self-contained HTML file: no server, no script, no file or network fetch."""

from __future__ import annotations

import jinja2

from engine.report import charts, graph
from engine.report.data import Report


def render(report: Report) -> str:
    """The HTML page of `report`."""
    environment = jinja2.Environment(loader=jinja2.PackageLoader("engine.report"), autoescape=True,
                                     undefined=jinja2.StrictUndefined)
    runs = report.runs
    return environment.get_template("report.html").render(
        report=report,
        graph=graph.render(report.tables),
        status_colours=graph.STATUS_COLOURS,
        late_outline=graph.LATE_OUTLINE,
        runs_chart=charts.runs_chart(runs) if runs else "",
        durations_chart=charts.durations_chart(runs) if runs else "",
        table_charts={t.name: charts.table_chart(t) for t in report.tables if t.runs},
        trend_charts={(t.name, c.check): charts.trend_chart(c.trend, f"trend-{t.anchor}-{index}")
                      for t in report.tables for index, c in enumerate(t.checks)},
    )
