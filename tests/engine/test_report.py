"""`medallion report`: what the page holds, and the page itself rendered in a real headless Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from engine import Runner
from engine.cli.main import main
from engine.report import graph
from engine.report.data import NEVER_RUN, gather
from engine.report.html import render
from engine.runlog import read_records
from engine.tables.layout import Layout
from pipelines.retail.pipeline import retail
from tests.browser import chromium
from tests.conftest import RetailBuild, settings_at
from tests.engine.test_runner import build_pipeline, land_orders, write_orders

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def shop_root(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three runs of the small shop pipeline: a first build, a new file, then a run where gold fails."""
    root = tmp_path_factory.mktemp("report-shop")
    land_orders(root)
    settings = settings_at(root)
    assert Runner(build_pipeline(), settings).run().succeeded
    write_orders(root, "orders-3.jsonl", [{"order_id": 3, "status": "placed", "updated_at": "2026-01-03T00:00:00Z"}])
    assert Runner(build_pipeline(), settings).run().succeeded
    write_orders(root, "orders-4.jsonl", [{"order_id": 4, "status": "paid", "updated_at": "2026-01-04T00:00:00Z"}])
    assert not Runner(build_pipeline(fail_gold=True), settings).run().succeeded
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
    assert by_name["silver.orders"].last_status == "succeeded"
    assert [r.run_id for r in report.runs] == list(dict.fromkeys(records.sort("started_at")["run_id"]))
    assert [r.status for r in report.runs] == ["succeeded", "succeeded", "failed"]
    silver = by_name["silver.orders"]
    assert [r.rows_written for r in silver.runs] == \
        records.filter(table="silver.orders").sort("started_at")["rows_written"].to_list()
    assert [v.version for v in silver.versions] == sorted({v.version for v in silver.versions}, reverse=True)
    assert silver.versions[0].version == silver.entry.version
    assert silver.versions[0].run_id == silver.runs[-1].run_id
    assert sum(r.rows_quarantined for r in silver.runs) == 1
    assert report.runs[0].rows_quarantined == 1


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


def test_the_report_renders_in_chromium_with_graph_and_plots(shop_root: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render(gather(Layout.at(str(shop_root)), [build_pipeline()])))
    screenshot = tmp_path / "report.png"
    with chromium() as browser:
        browser.get(page.as_uri())
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert errors == []
        nodes = browser.find_elements("css selector", "#pipeline-graph g.node")
        statuses = {n.get_attribute("data-table"): n.get_attribute("data-status") for n in nodes}
        assert statuses == {"landing/orders": "landing", "bronze.orders": "succeeded", "silver.orders": "succeeded",
                            "gold.status_counts": "failed", "gold.after_counts": "skipped"}
        assert len(browser.find_elements("css selector", "#pipeline-graph path.edge")) == 4
        for chart in ("chart-runs", "chart-durations", "chart-table-silver-orders"):
            size = browser.find_element("id", chart).size
            assert size["width"] > 200 and size["height"] > 100, chart
        plotted = browser.execute_script(
            "return document.querySelectorAll('#chart-runs path, #chart-runs use').length")
        assert plotted > 10
        failed = browser.find_element("css selector", "#pipeline-graph g.node[data-status=failed]")
        failed.click()
        assert browser.execute_script("return location.hash") == "#table-gold-status_counts"
        browser.execute_script("window.scrollTo(0, 0)")
        assert browser.save_screenshot(str(screenshot))
    image = imread(screenshot)
    assert image.shape[1] >= 1000
    for status in ("succeeded", "failed", "skipped", "landing"):
        assert pixels_of(image, status_colour(status)) > 500, status


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
