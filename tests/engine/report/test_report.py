"""`medallion report`: what the page holds, and the page itself rendered in a real headless Chromium."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable
from matplotlib.image import imread

from engine import Runner
from engine.cli.main import main
from engine.columns import REJECTED_REASON, RUN_ID
from engine.layout import Layout
from engine.quality.report import CheckSummary
from engine.report import graph
from engine.report.data import NEVER_RUN, gather
from engine.report.html import render
from engine.report.quarantine import read_quarantine
from engine.runlog import read_records
from pipelines.retail.pipeline import retail
from tests.browser import chromium
from tests.conftest import RetailBuild, settings_at
from tests.engine.test_runner import build_pipeline, land_orders, write_orders

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def shop_root(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four runs of the small shop pipeline: a first build, a new file with another bad id, a run where gold
    fails, and the same with nothing new (bronze and silver unchanged, gold failing again)."""
    root = tmp_path_factory.mktemp("report-shop")
    land_orders(root)
    settings = settings_at(root)
    assert Runner(build_pipeline(), settings).run().succeeded
    write_orders(root, "orders-3.jsonl", [{"order_id": 3, "status": "placed", "updated_at": "2026-01-03T00:00:00Z"},
                                          {"order_id": "y", "status": "paid", "updated_at": "2026-01-03T00:00:00Z"}])
    assert Runner(build_pipeline(), settings).run().succeeded
    write_orders(root, "orders-4.jsonl", [{"order_id": 4, "status": "paid", "updated_at": "2026-01-04T00:00:00Z"}])
    assert not Runner(build_pipeline(fail_gold=True), settings).run().succeeded
    again = Runner(build_pipeline(fail_gold=True), settings).run()
    assert [r.status for r in again.records] == ["unchanged", "unchanged", "failed", "skipped"]
    return root


def test_the_report_holds_each_tables_runs_versions_and_checks(shop_root: Path) -> None:
    layout = Layout.at(str(shop_root))
    report = gather(layout, [build_pipeline()])
    records = read_records(layout.runs())
    by_name = {t.name: t for t in report.tables}
    assert list(by_name) == ["bronze.orders", "silver.orders", "gold.status_counts", "gold.after_counts"]
    assert by_name["gold.status_counts"].last_status == "failed"
    assert "boom" in (by_name["gold.status_counts"].runs[-1].error or "")
    assert by_name["gold.after_counts"].last_status == "skipped"
    assert by_name["silver.orders"].last_status == "unchanged"
    assert [r.run_id for r in report.runs] == list(dict.fromkeys(records.sort("started_at")["run_id"]))
    assert [r.status for r in report.runs] == ["succeeded", "succeeded", "failed", "failed"]
    silver = by_name["silver.orders"]
    assert [r.rows_written for r in silver.runs] == \
        records.filter(table="silver.orders").sort("started_at")["rows_written"].to_list()
    assert [v.version for v in silver.versions] == sorted({v.version for v in silver.versions}, reverse=True)
    assert silver.versions[0].version == silver.entry.version
    assert silver.versions[0].run_id == silver.worked_runs[-1].run_id
    assert sum(r.rows_quarantined for r in silver.runs) == 2
    assert [r.rows_quarantined for r in report.runs] == [1, 1, 0, 0]
    assert [[t.table for t in r.tables] for r in report.runs] == [list(by_name)] * 4
    assert report.runs[1].rows_written == sum(records.filter(run_id=report.runs[1].run_id)["rows_written"])


def test_runs_that_changed_nothing_are_not_plotted(shop_root: Path) -> None:
    layout = Layout.at(str(shop_root))
    report = gather(layout, [build_pipeline()])
    records = read_records(layout.runs())
    idle = records.filter(pl.col("status").is_in(["unchanged", "skipped"]) & (pl.col("rows_written") == 0)
                          & (pl.col("rows_quarantined") == 0))
    assert idle.height == 4
    plotted = {(r.table, r.run_id) for t in report.tables for r in t.worked_runs}
    assert plotted == {(row["table"], row["run_id"]) for row in records.iter_rows(named=True)} \
        - {(row["table"], row["run_id"]) for row in idle.iter_rows(named=True)}
    by_name = {t.name: t for t in report.tables}
    assert [r.status for r in by_name["silver.orders"].worked_runs] == ["succeeded"] * 3
    assert [r.status for r in by_name["gold.after_counts"].worked_runs] == ["succeeded"] * 2
    assert [r.status for r in by_name["gold.status_counts"].worked_runs] == ["succeeded", "succeeded", "failed", "failed"]
    last = report.runs[-1]
    assert last.did_work and report.worked_runs == report.runs
    assert not replace(last, tables=tuple(t for t in last.tables if not t.did_work)).did_work
    page = render(report)
    silver_section = page.split('id="table-silver-orders"')[1].split("</section>")[0]
    assert "1 of 4 runs changed nothing here and are not plotted" in silver_section
    assert 'id="chart-table-silver-orders"' in silver_section


def test_quarantined_rows_are_grouped_by_reason_with_an_example(shop_root: Path, retail_build: RetailBuild) -> None:
    for root, pipelines in ((shop_root, [build_pipeline()]), (retail_build.root, [])):
        layout = Layout.at(str(root))
        for table in gather(layout, pipelines).tables:
            uri = layout.quarantine(table.name)
            if not DeltaTable.is_deltatable(uri):
                assert table.quarantine is None
                continue
            rows = DeltaTable(uri).to_pyarrow_table()
            counted = {c["values"]: c["counts"] for c in pc.value_counts(rows[REJECTED_REASON]).to_pylist()}
            assert table.quarantine is not None and table.quarantine.rows == rows.num_rows
            assert {r.reason: r.rows for r in table.quarantine.reasons} == counted, table.name
            for reason in table.quarantine.reasons:
                matching = rows.filter(pc.equal(rows[REJECTED_REASON], reason.reason))
                assert reason.run_id in matching[RUN_ID].to_pylist()
                assert set(reason.example) == set(rows.column_names) - {REJECTED_REASON, RUN_ID}
    silver = read_quarantine(Layout.at(str(shop_root)), "silver.orders")
    assert silver is not None
    assert [(r.reason, r.rows) for r in silver.reasons] == [("order_id: not an integer", 2)]
    assert silver.reasons[0].example["order_id"] == "null"
    lines = read_quarantine(Layout.at(str(retail_build.root)), "silver.order_items", max_reasons=2)
    assert lines is not None and len(lines.reasons) == 2
    assert [r.rows for r in lines.reasons] == sorted([r.rows for r in lines.reasons], reverse=True)
    assert lines.more_reasons == len(counted_reasons(retail_build.root, "silver.order_items")) - 2
    assert lines.more_rows == lines.rows - sum(r.rows for r in lines.reasons)


def test_a_reader_without_the_grant_to_read_a_quarantine_sees_its_counts_but_no_example_row(
        shop_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "medallion.yaml"
    config.write_text("access:\n  enforce: true\n  roles:\n    analyst:\n      read: ['silver.*', 'gold.*', 'bronze.*']\n"
                      "    steward:\n      read: ['*']\n  members:\n    steward-1: [steward]\n"
                      "  default_roles: [analyst]\n")
    pages = {}
    for actor in ("analyst-1", "steward-1"):
        out = tmp_path / f"{actor}.html"
        result = CliRunner().invoke(main, ["--root", str(shop_root), "--config", str(config), "report", "--out",
                                           str(out)], env={"MEDALLION_ACTOR": actor})
        assert result.exit_code == 0, result.output
        pages[actor] = out.read_text()
    for page in pages.values():
        assert "order_id: not an integer" in page
    assert "rejected by" in pages["steward-1"] and "rejected by" not in pages["analyst-1"]
    assert '<td class="example"><span>' in pages["steward-1"] and '<td class="example"><span>' not in pages["analyst-1"]


def counted_reasons(root: Path, table: str) -> dict[str, int]:
    rows = DeltaTable(Layout.at(str(root)).quarantine(table)).to_pyarrow_table()
    return {c["values"]: c["counts"] for c in pc.value_counts(rows[REJECTED_REASON]).to_pylist()}


def test_only_failing_checks_get_a_trend_and_every_name_is_escaped(shop_root: Path) -> None:
    report = gather(Layout.at(str(shop_root)), [build_pipeline()])
    failing = CheckSummary("silver.orders", "status:<b>not_null</b>", "warn", 3, 1, (0.0, 1 / 3))
    passing = CheckSummary("silver.orders", "order_id:not_nullable", "quarantine", 3, 0, (0.0, 0.0))
    tables = tuple(replace(t, checks=(failing, passing)) if t.name == "silver.orders" else t for t in report.tables)
    page = render(replace(report, tables=tables))
    assert page.count('id="trend-') == 1 and 'id="trend-table-silver-orders-0"' in page
    collapsed = page.split('<details class="passing-checks">')[1].split("</details>")[0]
    assert "1 check passed in every recent run" in collapsed and "order_id:not_nullable" in collapsed
    assert "<b>not_null</b>" not in page and "status:&lt;b&gt;not_null&lt;/b&gt;" in page
    assert "order_id: not an integer" in page.split('class="data quarantine"')[1]


def test_the_graph_places_sources_first_and_draws_every_declared_input(shop_root: Path) -> None:
    report = gather(Layout.at(str(shop_root)), [build_pipeline()])
    nodes, edges = graph.layout(report.tables)
    columns = {n.name: n.column for n in nodes}
    assert columns == {"landing/orders": 0, "bronze.orders": 1, "silver.orders": 2, "gold.status_counts": 3,
                       "gold.after_counts": 4}
    assert sorted(edges) == sorted([("landing/orders", "bronze.orders"), ("bronze.orders", "silver.orders"),
                                    ("silver.orders", "gold.status_counts"),
                                    ("gold.status_counts", "gold.after_counts")])


def test_a_table_never_built_is_shown_as_never_run(tmp_path: Path) -> None:
    report = gather(Layout.at(str(tmp_path)), [build_pipeline()])
    assert {t.last_status for t in report.tables} == {NEVER_RUN}
    assert all(t.entry.version is None and not t.versions for t in report.tables)


def status_colour(status: str) -> np.ndarray:
    fill = graph.STATUS_COLOURS[status][0].lstrip("#")
    return np.array([int(fill[i:i + 2], 16) for i in (0, 2, 4)]) / 255


def pixels_of(image: np.ndarray, colour: np.ndarray) -> int:
    return int(np.all(np.abs(image[:, :, :3] - colour) < 2 / 255, axis=2).sum())


PAGE_LAYOUT = """
const graph = document.getElementById('pipeline-graph').getBoundingClientRect();
return {scrollWidth: document.documentElement.scrollWidth, width: window.innerWidth, height: window.innerHeight,
        pageHeight: document.documentElement.scrollHeight, ratio: window.devicePixelRatio,
        graphLeft: graph.left, graphRight: graph.right};
"""
QUARANTINE_ROWS = """
return [...document.querySelectorAll(arguments[0] + ' table.quarantine tr')].slice(1)
    .map(row => [row.cells[0].innerText, row.cells[1].innerText]);
"""


def fitting_layout(browser: Any) -> dict[str, float]:
    """The page's layout, checked to need no horizontal scrolling, the graph whole within the window."""
    layout = browser.execute_script(PAGE_LAYOUT)
    assert layout["scrollWidth"] <= layout["width"], layout
    assert 0 <= layout["graphLeft"] and layout["graphRight"] <= layout["width"], layout
    return layout


def screenshot(browser: Any, path: Path, layout: dict[str, float]) -> np.ndarray:
    """A screenshot of the window, checked to be a PNG of the window's size."""
    assert browser.save_screenshot(str(path))
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
    image = imread(path)
    assert image.shape[:2] == (round(layout["height"] * layout["ratio"]), round(layout["width"] * layout["ratio"]))
    return image


def follow_run_link(browser: Any, run_id: str) -> None:
    """Click the first link to `run_id`, and check it leads to the run's section, shown within the window."""
    browser.find_element("css selector", f'a.run-link[href="#{run_id}"]').click()
    assert browser.execute_script("return decodeURIComponent(location.hash.slice(1))") == run_id
    target = browser.find_element("id", run_id)
    assert target.is_displayed()
    assert browser.execute_script("const top = arguments[0].getBoundingClientRect().top; "
                                  "return 0 <= top && top < window.innerHeight", target)


def test_the_report_renders_in_chromium_with_graph_and_plots(shop_root: Path, tmp_path: Path) -> None:
    report = gather(Layout.at(str(shop_root)), [build_pipeline()])
    page = tmp_path / "report.html"
    page.write_text(render(report))
    with chromium() as browser:
        browser.get(page.as_uri())
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert errors == []
        layout = fitting_layout(browser)
        nodes = browser.find_elements("css selector", "#pipeline-graph g.node")
        statuses = {n.get_attribute("data-table"): n.get_attribute("data-status") for n in nodes}
        assert statuses == {"landing/orders": "landing", "bronze.orders": "unchanged", "silver.orders": "unchanged",
                            "gold.status_counts": "failed", "gold.after_counts": "skipped"}
        assert len(browser.find_elements("css selector", "#pipeline-graph path.edge")) == 4
        for chart in ("chart-runs", "chart-durations", "chart-table-silver-orders"):
            size = browser.find_element("id", chart).size
            assert size["width"] > 200 and size["height"] > 100, chart
        plotted = browser.execute_script(
            "return document.querySelectorAll('#chart-runs path, #chart-runs use').length")
        assert plotted > 10
        assert browser.execute_script(QUARANTINE_ROWS, "#table-silver-orders") == [["order_id: not an integer", "2"]]
        oldest = browser.find_element("id", report.runs[0].run_id)
        assert not oldest.is_displayed(), "older runs start collapsed"
        follow_run_link(browser, report.runs[0].run_id)
        assert "silver.orders" in oldest.text and "succeeded" in oldest.text
        failed = browser.find_element("css selector", "#pipeline-graph g.node[data-status=failed]")
        failed.click()
        assert browser.execute_script("return location.hash") == "#table-gold-status_counts"
        browser.execute_script("window.scrollTo(0, 0)")
        image = screenshot(browser, tmp_path / "report.png", layout)
    for status in ("unchanged", "failed", "skipped", "landing"):
        assert pixels_of(image, status_colour(status)) > 500, status


def test_the_report_of_a_pipeline_of_many_tables_fits_the_window(retail_build: RetailBuild, tmp_path: Path) -> None:
    report = gather(Layout.at(str(retail_build.root)))
    checks = sum(len(t.checks) for t in report.tables)
    assert checks > 50 and not any(t.failing_checks for t in report.tables)
    page = tmp_path / "report.html"
    page.write_text(render(report))
    with chromium() as browser:
        browser.get(page.as_uri())
        assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []
        layout = fitting_layout(browser)
        assert len(browser.find_elements("css selector", "#pipeline-graph g.node")) == len(graph.layout(report.tables)[0])
        # A chart row per check, as the page had, would take 50 px or more each.
        assert layout["pageHeight"] < 50 * checks
        assert browser.find_elements("css selector", "svg[id^=trend-]") == []
        collapsed = browser.find_elements("css selector", "details.passing-checks:not([open])")
        assert len(collapsed) == sum(1 for t in report.tables if t.checks)
        counted = counted_reasons(retail_build.root, "silver.order_items")
        assert browser.execute_script(QUARANTINE_ROWS, "#table-silver-order_items") == \
            [[reason, f"{rows:,}"] for reason, rows in sorted(counted.items(), key=lambda c: (-c[1], c[0]))]
        follow_run_link(browser, report.runs[-1].run_id)
        browser.execute_script("window.scrollTo(0, 0)")
        screenshot(browser, tmp_path / "report.png", layout)


def test_without_the_pipeline_the_graph_follows_the_declarations_then_the_inputs_recorded_in_commits(
        shop_root: Path) -> None:
    layout = Layout.at(str(shop_root))
    built = [("bronze.orders", "silver.orders"), ("silver.orders", "gold.status_counts"),
             ("gold.status_counts", "gold.after_counts")]
    _, edges = graph.layout(gather(layout).tables)  # the declarations the last run recorded
    assert sorted(edges) == sorted([("landing/orders", "bronze.orders"), *built])
    declarations = Path(layout.declarations("shop"))
    recorded = declarations.read_bytes()
    declarations.unlink()
    try:
        _, edges = graph.layout(gather(layout).tables)  # no declarations: the inputs each commit recorded
    finally:
        declarations.write_bytes(recorded)
    assert sorted(edges) == sorted(built)


def test_the_report_of_the_retail_pipeline_lists_every_table(retail_build: RetailBuild) -> None:
    result = CliRunner().invoke(main, ["--root", str(retail_build.root), "report"])
    assert result.exit_code == 0, result.output
    page = retail_build.root / "_meta" / "report" / "index.html"
    assert f"report written to {page}" in result.output
    html = page.read_text()
    for record in retail_build.result.records:
        assert f'data-table="{record.table}" data-status="{record.status}"' in html
    assert html.count('class="node"') == len(retail.tables) + len({d.source.directory for d in retail.tables.values()
                                                                  if d.source is not None})
    assert 'data-table="gold.churn_scores" data-status="never run"' in html
    assert json.dumps(str(retail_build.root))[1:-1] in html
