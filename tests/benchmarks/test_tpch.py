"""The TPC-H medallion workload at SF 0.01: the messed input matches WORKLOAD.md, the engine matches DuckDB."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.tpch.check import Output, check
from benchmarks.tpch.peers import duckdb_run
from benchmarks.tpch.prepare import load_manifest, prepare
from benchmarks.tpch.run import link_landing
from engine import Runner
from engine.entrypoints import load_pipeline
from pipelines.tpch.pipeline import tpch
from tests.conftest import settings_at

pytestmark = pytest.mark.slow

SF = 0.01


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared SF 0.01 input."""
    return prepare(SF, tmp_path_factory.mktemp("tpch-data"))


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Output:
    """The DuckDB peer's output on that input."""
    out = tmp_path_factory.mktemp("tpch-duckdb")
    duckdb_run.run(data, out)
    return Output(out)


def test_messing_gives_the_workload_counts(data: Path) -> None:
    tables = load_manifest(data)["tables"]
    lineitem = tables["lineitem"]
    assert (lineitem["raw_rows"], lineitem["duplicates"], lineitem["corrupted"], lineitem["silver_rows"]) == (
        60_750, 575, 54, 60_121)
    assert lineitem["corrupted_by_reason"] == {"negative_quantity": 21, "discount_out_of_range": 19,
                                               "null_shipdate": 14}
    assert (tables["orders"]["silver_rows"], tables["customer"]["silver_rows"]) == (15_000, 1_500)
    raw_lines = sum(len(p.read_text().splitlines()) - 1 for p in (data / "raw" / "lineitem").glob("*.csv"))
    assert raw_lines == 60_750
    assert len(list((data / "raw" / "lineitem").glob("lineitem.*.csv"))) == 8


def test_pipeline_is_registered_by_name() -> None:
    assert load_pipeline("tpch") is tpch
    assert [t for t in tpch.order() if t.startswith("gold.")] == ["gold.q1_pricing_summary",
                                                                  "gold.customer_monthly_revenue"]


def test_duckdb_peer_passes_the_check(data: Path, reference: Output) -> None:
    assert check(data, reference, reference) == []


def test_engine_gold_equals_duckdb(ray_local: None, data: Path, reference: Output, tmp_path: Path) -> None:
    root = tmp_path / "engine"
    link_landing(data, root)
    result = Runner(tpch, settings_at(root)).run()
    assert result.succeeded, [r.error for r in result.records if r.error]
    assert check(data, Output(root, "engine"), reference) == []


def test_check_reports_a_count_off_by_one(data: Path, reference: Output, tmp_path: Path) -> None:
    manifest = (data / "manifest.json").read_text()
    (tmp_path / "manifest.json").write_text(manifest.replace('"null_shipdate": 14', '"null_shipdate": 15'))
    problems = check(tmp_path, reference, reference)
    assert len(problems) == 1 and "lineitem_quarantine" in problems[0]
