"""Quality checks: row-level validation, table-level gates, the run's behaviour and the quality report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandera.polars as pap
import polars as pl
import pyarrow as pa
import pytest
import ray.data
from click.testing import CliRunner
from deltalake import DeltaTable

from engine import FileSource, Merge, Overwrite, Pipeline, Runner
from engine.cli.main import main
from engine.columns import REJECTED_REASON
from engine.config import load_settings
from engine.errors import PipelineDefinitionError, QualityFailed
from engine.layout import Layout
from engine.quality import gate
from engine.quality.checks import Expect, Quality, References
from engine.quality.metrics import read_metrics
from engine.quality.report import summarize
from engine.quality.results import CheckResult, combine_results
from engine.quality.validate import validate_batch
from engine.tables.files import RollingParquetWriter
from tests.conftest import settings_at
from tests.receiver import Receiver


class Amounts(pap.DataFrameModel):
    id: int = pap.Field(nullable=False)
    amount: float = pap.Field(ge=0)
    kind: str = pap.Field(isin=["a", "b"], nullable=True, metadata={"action": "warn", "threshold": 0.5})

    class Config:
        strict = False


BATCH = pa.table({
    "id": [1, 2, 3, None, 5],
    "amount": [1.0, -2.0, 3.0, 4.0, -1.0],
    "kind": ["a", "z", None, "b", "a"],
    "ref": [10, 11, None, 10, 99],
    REJECTED_REASON: [None, None, None, None, "bad input"],
})


def by_check(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.check: r for r in results}


def test_contract_checks_quarantine_warn_and_name_the_checks() -> None:
    quality = Quality(contract=Amounts)
    out, results = validate_batch(BATCH, quality, "silver.amounts", {})
    reasons = out.column(REJECTED_REASON).to_pylist()
    assert reasons == [None, "failed checks: amount:greater_than_or_equal_to(0)", None,
                       "failed checks: id:not_nullable", "bad input"]
    checks = by_check(results)
    assert checks["amount:greater_than_or_equal_to(0)"].rows_failed == 1
    assert checks["amount:greater_than_or_equal_to(0)"].rows_checked == 4
    kind = checks["kind:isin(['a', 'b'])"]
    assert (kind.action, kind.rows_failed, kind.threshold) == ("warn", 1, 0.5)
    assert json.loads(kind.example) == {"id": 2, "amount": -2.0, "kind": "z", "ref": 11}


def test_expectations_are_sql_and_null_passes_like_a_check_constraint() -> None:
    quality = Quality(expectations=(Expect("ref_small", "ref < 11"), Expect("id_set", "id IS NOT NULL", "warn")))
    out, results = validate_batch(BATCH, quality, "silver.amounts", {})
    checks = by_check(results)
    assert checks["ref_small"].rows_failed == 1
    assert checks["id_set"].rows_failed == 1 and checks["id_set"].action == "warn"
    assert out.column(REJECTED_REASON).to_pylist()[1] == "failed checks: ref_small"


def test_a_broken_expectation_says_which() -> None:
    with pytest.raises(ValueError, match="`nonsense`"):
        validate_batch(BATCH, Quality(expectations=(Expect("nonsense", "no_such_column > 1"),)), "t.x", {})


def test_references_fail_rows_whose_key_is_unknown_and_let_nulls_pass() -> None:
    reference = References("ref", "gold.dim", key="id")
    out, results = validate_batch(BATCH, Quality(references=(reference,)), "gold.fct", {reference.name: pa.array([10, 11])})
    assert by_check(results)["ref->gold.dim.id"].rows_failed == 0
    out, results = validate_batch(BATCH, Quality(references=(reference,)), "gold.fct", {reference.name: pa.array([10])})
    assert by_check(results)["ref->gold.dim.id"].rows_failed == 1
    assert out.column(REJECTED_REASON).to_pylist()[1] == "failed checks: ref->gold.dim.id"


def test_a_wrong_type_fails_the_table() -> None:
    batch = pa.table({"id": ["x"], "amount": [1.0], "kind": ["a"]})
    _, results = validate_batch(batch, Quality(contract=Amounts), "silver.amounts", {})
    failed = [r for r in results if r.rows_failed]
    assert [(r.check, r.action) for r in failed] == [("id:dtype('Int64')", "fail")]
    with pytest.raises(QualityFailed, match=r"check `id:dtype\('Int64'\)` failed on 1 of 1 rows"):
        gate.enforce("silver.amounts", results, 3)


def test_results_combine_over_batches() -> None:
    first = CheckResult("t.x", "c", "warn", 10, 1, None, None)
    second = CheckResult("t.x", "c", "warn", 5, 2, None, '{"id": 1}')
    assert combine_results([first, second]) == [CheckResult("t.x", "c", "warn", 15, 3, None, '{"id": 1}')]


def test_declaration_errors() -> None:
    with pytest.raises(PipelineDefinitionError, match="action `drop`"):
        Expect("x", "a > 1", action="drop")  # type: ignore[arg-type]
    with pytest.raises(PipelineDefinitionError, match="repeated: x"):
        Quality(expectations=(Expect("x", "a > 1"), Expect("x", "a < 9")))
    with pytest.raises(PipelineDefinitionError, match="`unique`"):
        Quality(unique=("id",), unique_action="quarantine")


@pytest.mark.usefixtures("ray_local")
def test_unique_check_counts_duplicates_over_all_staged_files(tmp_path: Path) -> None:
    writer = RollingParquetWriter(str(tmp_path), settings_at(tmp_path).storage, "t")
    writer.write(pa.table({"id": [1, 2], "day": [1, 1]}))
    writer.close()
    writer.write(pa.table({"id": [2, 3], "day": [1, 1]}))
    files = writer.close()
    [result] = gate.unique_check("gold.x", Quality(unique=("id", "day")), str(tmp_path), files)
    assert (result.check, result.rows_checked, result.rows_failed) == ("unique(id, day)", 4, 2)
    assert json.loads(result.example) == {"id": 2, "day": 1}


def test_duplicated_rows_are_those_polars_finds_by_comparing_whole_rows() -> None:
    generator = np.random.default_rng(7)
    frame = pl.DataFrame({
        "id": pl.Series(generator.integers(0, 400, 2000), dtype=pl.Int64),
        "day": pl.Series([None if n == 0 else f"d{n}" for n in generator.integers(0, 4, 2000)], dtype=pl.String),
    })
    found = gate.duplicated_rows(frame)
    expected = frame.filter(frame.is_duplicated())
    assert 0 < found.height < frame.height
    assert found.sort(["id", "day"]).equals(expected.sort(["id", "day"]))
    assert gate.duplicated_rows(frame.unique()).height == 0


def test_conservation_check_reports_missing_rows() -> None:
    quality = Quality(conserves_rows=True)
    [balanced] = gate.conservation_check("silver.x", quality, 10, 8, 2)
    [lost] = gate.conservation_check("silver.x", quality, 10, 7, 2)
    assert balanced.rows_failed == 0 and lost.rows_failed == 1 and lost.action == "fail"
    assert gate.conservation_check("silver.x", Quality(), 10, 7, 2) == []


def amounts_pipeline(rows: list[dict[str, object]]) -> Pipeline:
    pipeline = Pipeline("money")

    @pipeline.table("silver.amounts", kind=Overwrite(), quality=Quality(
        contract=Amounts, expectations=(Expect("not_huge", "amount < 1000", action="fail"),), unique=("id",)))
    def amounts() -> ray.data.Dataset:
        return ray.data.from_items(rows)

    @pipeline.table("gold.total", kind=Overwrite())
    def total(silver_amounts: ray.data.Dataset) -> ray.data.Dataset:
        return silver_amounts.map_batches(
            lambda t: pl.from_arrow(t).select(pl.col("amount").sum()).to_arrow(), batch_format="pyarrow",
            batch_size=None)

    return pipeline


@pytest.mark.usefixtures("ray_local")
def test_a_failing_fail_check_keeps_the_previous_version_and_skips_downstream(tmp_path: Path) -> None:
    settings = settings_at(tmp_path)
    good = [{"id": 1, "amount": 5.0, "kind": "a"}, {"id": 2, "amount": -1.0, "kind": "b"}]
    first = Runner(amounts_pipeline(good), settings).run()
    assert first.succeeded
    layout = Layout.at(str(tmp_path))
    quarantine = DeltaTable(layout.quarantine("silver.amounts")).to_pyarrow_table()
    assert quarantine.column("id").to_pylist() == [2]

    bad = [{"id": 1, "amount": 5.0, "kind": "a"}, {"id": 3, "amount": 5000.0, "kind": "a"},
           {"id": 4, "amount": -3.0, "kind": "a"}]
    second = Runner(amounts_pipeline(bad), settings).run()
    records = {r.table: r for r in second.records}
    failed = records["silver.amounts"]
    assert failed.status == "failed"
    assert "check `not_huge` failed on 1 of 3 rows" in failed.error
    assert '"amount": 5000.0' in failed.error and "stays at version 0" in failed.error
    assert records["gold.total"].status == "skipped"
    table = DeltaTable(layout.table("silver.amounts"))
    assert table.version() == 0 and table.to_pyarrow_table().column("id").to_pylist() == [1]
    on_disk = {p.name for p in Path(layout.table("silver.amounts")).glob("*.parquet")}
    assert on_disk == {Path(uri).name for uri in table.file_uris()}
    assert DeltaTable(layout.quarantine("silver.amounts")).version() == 0

    metrics = read_metrics(layout.quality())
    not_huge = metrics.filter((pl.col("run_id") == second.run_id) & (pl.col("check") == "not_huge"))
    assert not_huge.select("rows_checked", "rows_failed").row(0) == (3, 1)

    chosen, summaries = summarize(metrics, "silver.amounts")
    assert chosen == second.run_id
    trend = {s.check: s.trend for s in summaries}["not_huge"]
    assert trend == pytest.approx((0.0, 1 / 3))

    result = CliRunner().invoke(main, ["--root", str(tmp_path), "quality", "silver.amounts", "--failing"])
    assert result.exit_code == 0
    assert "not_huge" in result.output and "0.00% → 33.33%" in result.output


@pytest.mark.usefixtures("ray_local")
def test_duplicate_keys_fail_the_unique_check(tmp_path: Path) -> None:
    rows = [{"id": 1, "amount": 5.0, "kind": "a"}, {"id": 1, "amount": 6.0, "kind": "a"}]
    result = Runner(amounts_pipeline(rows), settings_at(tmp_path)).run(select="silver.amounts")
    record = result.records[0]
    assert record.status == "failed" and "check `unique(id)` failed on 2 of 2 rows" in record.error
    assert not Path(Layout.at(str(tmp_path)).table("silver.amounts"), "_delta_log").exists()


@pytest.mark.usefixtures("ray_local")
def test_a_failing_check_is_alerted_to_the_webhook(tmp_path: Path, receiver: Receiver) -> None:
    settings = load_settings(overrides={"storage": {"root": str(tmp_path)}, "alerts": {"webhook_url": receiver.url}})
    rows = [{"id": 1, "amount": 5.0, "kind": "a"}, {"id": 2, "amount": 5000.0, "kind": "a"}]
    result = Runner(amounts_pipeline(rows), settings).run(select="silver.amounts")
    assert not result.succeeded
    [request] = receiver.requests
    alert = json.loads(request.body)
    assert (alert["severity"], alert["table"], alert["check"], alert["run_id"]) == (
        "critical", "silver.amounts", "not_huge", result.run_id)
    assert (alert["rows_checked"], alert["rows_failed"]) == (2, 1)


def _orders_and_items(root: Path) -> Pipeline:
    """Two landed feeds; `silver.items` reads its bronze table incrementally and references `silver.orders`."""
    shop = Pipeline("shop")
    shop.ingest("bronze.orders", FileSource("orders", "jsonl", pattern="*.jsonl"))
    shop.ingest("bronze.items", FileSource("items", "jsonl", pattern="*.jsonl"))

    @shop.table("silver.orders", kind=Overwrite())
    def orders(bronze_orders: ray.data.Dataset) -> ray.data.Dataset:
        return bronze_orders.select_columns(["order_id"])

    @shop.table("silver.items", kind=Merge(keys=["order_id", "sku"]), incremental=True,
                quality=Quality(references=(References("order_id", "silver.orders", action="quarantine"),)))
    def items(bronze_items: ray.data.Dataset) -> ray.data.Dataset:
        return bronze_items.map_batches(lambda batch: batch.select(["order_id", "sku"]), batch_format="pyarrow")

    return shop


@pytest.mark.usefixtures("ray_local")
def test_a_referenced_table_that_changed_alone_rebuilds_its_dependant_from_no_new_rows(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    (landing / "orders").mkdir(parents=True)
    (landing / "items").mkdir()
    (landing / "orders" / "1.jsonl").write_text('{"order_id": "o1"}\n')
    (landing / "items" / "1.jsonl").write_text('{"order_id": "o1", "sku": "a"}\n{"order_id": "o9", "sku": "b"}\n')
    settings = settings_at(tmp_path)
    assert Runner(_orders_and_items(tmp_path), settings).run().succeeded
    (landing / "orders" / "2.jsonl").write_text('{"order_id": "o2"}\n')
    second = Runner(_orders_and_items(tmp_path), settings).run()
    records = {r.table: r for r in second.records}
    assert second.succeeded, [(r.table, r.error) for r in second.records]
    assert records["silver.items"].rows_written == 0
    layout = Layout.at(str(tmp_path))
    assert DeltaTable(layout.table("silver.items")).to_pyarrow_table().column("sku").to_pylist() == ["a"]
    assert DeltaTable(layout.quarantine("silver.items")).to_pyarrow_table().column("sku").to_pylist() == ["b"]


@pytest.mark.usefixtures("ray_local")
def test_the_unique_check_in_ray_tasks_finds_what_the_driver_finds(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Attacks: "the unique check runs in Ray tasks above a size, with the same answer": keys spread over many
    files, copies of a key in different files, null keys, checked against polars over all rows at once."""
    generator = np.random.default_rng(11)
    writer = RollingParquetWriter(str(tmp_path), settings_at(tmp_path).storage, "t")
    batches = []
    for _ in range(6):
        batch = pa.table({"id": pa.array(generator.integers(0, 300, 500), pa.int64()),
                          "day": pa.array([None if n == 0 else f"d{n}" for n in generator.integers(0, 3, 500)])})
        writer.write(batch)
        writer.close()  # a file per batch
        batches.append(batch)
    files = writer.close()
    every = pl.from_arrow(pa.concat_tables(batches))
    assert isinstance(every, pl.DataFrame)
    quality = Quality(unique=("id", "day"))
    [local] = gate.unique_check("gold.x", quality, str(tmp_path), files)
    monkeypatch.setattr(gate, "LOCAL_CHECK_BYTES", 0)
    [in_tasks] = gate.unique_check("gold.x", quality, str(tmp_path), files)
    assert len(files) == 6 and in_tasks == local
    assert (in_tasks.rows_checked, in_tasks.rows_failed) == (3000, every.is_duplicated().sum())
    example = json.loads(in_tasks.example or "")
    assert every.filter((pl.col("id") == example["id"]) & pl.col("day").eq_missing(example["day"])).height > 1
    [empty] = gate.unique_check("gold.x", quality, str(tmp_path), [])
    assert (empty.rows_checked, empty.rows_failed, empty.example) == (0, 0, None)
