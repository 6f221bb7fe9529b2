"""A table whose definition changed rebuilds itself with no flag: only what the change reaches, breaking or not.

The pipeline's code lives in a module file that each test edits as a user would (an added column, a comment, a
filter), imported afresh after each edit."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pty
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

import polars as pl
import pytest
import ray
from click.testing import CliRunner
from deltalake import DeltaTable

from engine import Runner, RunResult, load_settings
from engine.changes.plan import TablePlan, plan
from engine.cli.main import main

REPO = Path(__file__).resolve().parents[3]

PIPELINE_SOURCE = '''
import polars as pl
import ray.data

from engine import FileSource, Merge, Overwrite, Pipeline, map_partitions

pipeline = Pipeline("shop")
pipeline.ingest("bronze.orders", FileSource("orders", "jsonl"))

REPORTED = ("customer", "total")


def typed(batch):
    return pl.from_arrow(batch).select(
        pl.col("order_id").cast(pl.Int64), pl.col("customer"), pl.col("amount").cast(pl.Float64)).to_arrow()


@pipeline.table("silver.orders", kind=Merge(keys=["order_id"]), incremental=True)
def orders(bronze_orders: ray.data.Dataset) -> ray.data.Dataset:
    return bronze_orders.map_batches(typed, batch_format="pyarrow")


def per_customer(rows):
    frame = pl.from_arrow(rows)
    return frame.group_by("customer").agg(pl.col("amount").sum().alias("total")).to_arrow()


@pipeline.table("gold.customer_totals", kind=Overwrite())
def customer_totals(silver_orders: ray.data.Dataset) -> ray.data.Dataset:
    return map_partitions(silver_orders, ["customer"], per_customer)


def report_rows(rows):
    frame = pl.from_arrow(rows)
    return frame.select([c for c in REPORTED if c in frame.columns]).to_arrow()


@pipeline.table("gold.report", kind=Overwrite())
def report(gold_customer_totals: ray.data.Dataset) -> ray.data.Dataset:
    return gold_customer_totals.map_batches(report_rows, batch_format="pyarrow")
'''
ORDERS = [{"order_id": i, "customer": f"c{i % 4}", "amount": float(i * 5)} for i in range(1, 13)]


def load(source: str, folder: Path) -> ModuleType:
    """The pipeline module from `source`, written to `folder` and imported under a new name, as a fresh process
    would see it."""
    name = f"shop_{uuid.uuid4().hex[:8]}"
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    ray.cloudpickle.register_pickle_by_value(module)  # Ray's workers cannot import it by name
    return module


@pytest.fixture
def shop(tmp_path: Path, ray_local: None) -> Path:
    """A root with one delivery of orders, built once by the original code."""
    root = tmp_path / "root"
    (root / "landing" / "orders").mkdir(parents=True)
    (root / "landing" / "orders" / "orders-1.jsonl").write_text("\n".join(json.dumps(o) for o in ORDERS) + "\n")
    run(root, PIPELINE_SOURCE)
    return root


def run(root: Path, source: str, **options: object) -> RunResult:
    result = Runner(load(source, root.parent).pipeline, load_settings(overrides={"storage": {"root": str(root)}})).run(**options)
    assert result.succeeded, [r.error for r in result.records if r.error]
    return result


def versions(root: Path) -> dict[str, int]:
    return {t: DeltaTable(str(root / t.replace(".", "/"))).version()
            for t in ("bronze.orders", "silver.orders", "gold.customer_totals", "gold.report")}


def table(root: Path, name: str) -> pl.DataFrame:
    return pl.from_arrow(DeltaTable(str(root / name.replace(".", "/"))).to_pyarrow_table()).sort(pl.all())


def statuses(result: RunResult) -> dict[str, str]:
    return {r.table: r.status for r in result.records}


def test_a_comment_or_formatting_edit_rebuilds_nothing(shop: Path) -> None:
    before = versions(shop)
    edited = PIPELINE_SOURCE.replace(
        "    frame = pl.from_arrow(rows)\n    return frame.group_by",
        "    # totals per customer, reformatted\n    frame = pl.from_arrow(\n        rows\n    )\n"
        "    return frame.group_by").replace('def per_customer(rows):', 'def per_customer(rows):\n    """Totals."""')
    assert edited != PIPELINE_SOURCE
    result = run(shop, edited)
    assert set(statuses(result).values()) == {"unchanged"}
    assert versions(shop) == before


def test_an_added_column_rebuilds_that_table_and_not_what_does_not_read_it(shop: Path) -> None:
    before = versions(shop)
    report_before = table(shop, "gold.report")
    edited = PIPELINE_SOURCE.replace(
        'pl.col("amount").sum().alias("total"))',
        'pl.col("amount").sum().alias("total"), pl.len().cast(pl.Int64).alias("orders"))')
    result = run(shop, edited)
    record = next(r for r in result.records if r.table == "gold.customer_totals")
    assert record.status == "succeeded"
    assert record.details["rebuilt"] == {"reason": "definition changed (code): non-breaking",
                                         "change": "non-breaking", "added": ["orders"]}
    after = versions(shop)
    assert after["gold.customer_totals"] > before["gold.customer_totals"]
    assert {t: after[t] for t in ("bronze.orders", "silver.orders")} == {
        t: before[t] for t in ("bronze.orders", "silver.orders")}
    totals = table(shop, "gold.customer_totals")
    expected = pl.DataFrame(ORDERS).group_by("customer").agg(
        pl.col("amount").sum().alias("total"), pl.len().cast(pl.Int64).alias("orders")).sort(pl.all())
    assert totals.select(expected.columns).equals(expected)
    assert statuses(result)["gold.report"] == "unchanged"
    assert table(shop, "gold.report").equals(report_before)
    # the next run has nothing to do, and new orders still flow through incrementally
    assert set(statuses(run(shop, edited)).values()) == {"unchanged"}


def test_a_downstream_table_that_names_an_added_column_is_rebuilt(shop: Path) -> None:
    edited = PIPELINE_SOURCE.replace('REPORTED = ("customer", "total")', 'REPORTED = ("customer", "total", "orders")')
    run(shop, edited)  # the report names `orders` before any input has it: its own change, non-breaking
    edited = edited.replace('pl.col("amount").sum().alias("total"))',
                            'pl.col("amount").sum().alias("total"), pl.len().cast(pl.Int64).alias("orders"))')
    result = run(shop, edited)
    report = next(r for r in result.records if r.table == "gold.report")
    assert report.details["rebuilt"]["reason"] == "reads column(s) `orders` that input `gold.customer_totals` added"
    assert table(shop, "gold.report").columns == ["customer", "total", "orders"]


def test_a_breaking_change_rebuilds_everything_downstream(shop: Path) -> None:
    before = versions(shop)
    edited = PIPELINE_SOURCE.replace("    frame = pl.from_arrow(rows)\n    return frame.group_by",
                                     "    frame = pl.from_arrow(rows).filter(pl.col(\"amount\") > 20)\n"
                                     "    return frame.group_by")
    result = run(shop, edited)
    details = {r.table: r.details.get("rebuilt") for r in result.records}
    assert details["gold.customer_totals"]["change"] == "breaking"
    assert details["gold.report"] == {
        "reason": "input `gold.customer_totals` changed meaning since the table was built (breaking)",
        "change": "breaking"}
    after = versions(shop)
    assert after["silver.orders"] == before["silver.orders"]
    expected = pl.DataFrame(ORDERS).filter(pl.col("amount") > 20).group_by("customer").agg(
        pl.col("amount").sum().alias("total")).sort(pl.all())
    assert table(shop, "gold.report").equals(expected)
    assert set(statuses(run(shop, edited)).values()) == {"unchanged"}


def test_a_change_expected_non_breaking_that_alters_rows_counts_as_breaking(shop: Path) -> None:
    """A new method call on the old expression looks like an added column, but this one filters rows."""
    edited = PIPELINE_SOURCE.replace('    return frame.select([c for c in REPORTED if c in frame.columns]).to_arrow()',
                                     '    return frame.select([c for c in REPORTED if c in frame.columns])'
                                     '.filter(pl.col("total") > 30).to_arrow()')
    result = run(shop, edited)
    assert next(r for r in result.records if r.table == "gold.report").details["rebuilt"]["change"] == "breaking"


def test_the_user_can_say_a_change_is_breaking(shop: Path) -> None:
    edited = PIPELINE_SOURCE.replace(
        'pl.col("amount").sum().alias("total"))',
        'pl.col("amount").sum().alias("total"), pl.len().cast(pl.Int64).alias("orders"))')
    result = run(shop, edited, change_kind={"gold.customer_totals": "breaking"})
    assert statuses(result)["gold.report"] == "succeeded"
    assert next(r for r in result.records if r.table == "gold.customer_totals").details["rebuilt"] == {
        "reason": "definition changed (code): breaking (as told)", "change": "breaking"}


ADDED_COLUMN = ('pl.col("amount").sum().alias("total"))',
                'pl.col("amount").sum().alias("total"), pl.len().cast(pl.Int64).alias("orders"))')
FILTERED = ("    frame = pl.from_arrow(rows)\n    return frame.group_by",
            "    frame = pl.from_arrow(rows).filter(pl.col(\"amount\") > 20)\n    return frame.group_by")


def planned(root: Path, source: str, **options: object) -> dict[str, TablePlan]:
    built = load(source, root.parent).pipeline
    return {p.table: p for p in plan(built, load_settings(overrides={"storage": {"root": str(root)}}), **options)}


def test_the_plan_names_each_table_the_reason_and_the_change_kind(shop: Path) -> None:
    assert {p.action for p in planned(shop, PIPELINE_SOURCE).values()} == {"nothing"}
    added = planned(shop, PIPELINE_SOURCE.replace(*ADDED_COLUMN))
    totals = added["gold.customer_totals"]
    assert (totals.action, totals.change_category, totals.reasons) == (
        "rebuild", "non-breaking", ("definition changed (code): non-breaking",))
    assert totals.rows_to_read == len(ORDERS)
    assert totals.diff[0] == "code:" and any(line.startswith("+") and "'orders'" in line for line in totals.diff)
    assert added["gold.report"].action == "build" and added["silver.orders"].action == "nothing"
    broken = planned(shop, PIPELINE_SOURCE.replace(*FILTERED))
    assert (broken["gold.customer_totals"].action, broken["gold.customer_totals"].change_category) == (
        "rebuild", "breaking")
    assert broken["gold.report"].action == "rebuild"
    assert broken["gold.report"].reasons[0] == "input `gold.customer_totals` is rebuilt by a breaking change"
    told = planned(shop, PIPELINE_SOURCE.replace(*ADDED_COLUMN), change_kind="breaking")
    assert told["gold.customer_totals"].change_category == "breaking" and told["gold.report"].action == "rebuild"


def test_a_new_landing_file_is_planned_with_its_size(shop: Path) -> None:
    landed = shop / "landing" / "orders" / "orders-2.jsonl"
    landed.write_text(json.dumps({"order_id": 99, "customer": "c9", "amount": 1.0}) + "\n")
    plans = planned(shop, PIPELINE_SOURCE)
    assert plans["bronze.orders"].action == "ingest"
    assert plans["bronze.orders"].files == (1, landed.stat().st_size)
    assert plans["silver.orders"].reasons == ("changing in this run: `bronze.orders`",)


def test_an_ingested_tables_changed_definition_does_not_rebuild_it(shop: Path) -> None:
    edited = PIPELINE_SOURCE.replace('FileSource("orders", "jsonl")', 'FileSource("orders", "jsonl", on_drift="rescue")')
    plans = planned(shop, edited)
    assert plans["bronze.orders"].action == "nothing"
    assert "an ingested table is not rebuilt" in plans["bronze.orders"].reasons[1]
    before = versions(shop)
    run(shop, edited)
    assert versions(shop) == before


def test_run_dry_run_prints_the_plan_and_writes_nothing(shop: Path) -> None:
    module = load(PIPELINE_SOURCE.replace(*ADDED_COLUMN), shop.parent)
    before = versions(shop)
    outcome = CliRunner().invoke(main, ["--root", str(shop), "run", f"{module.__name__}:pipeline", "--dry-run"])
    assert outcome.exit_code == 0, outcome.output
    assert "gold.customer_totals" in outcome.output and "rebuild (non-breaking)" in outcome.output
    assert "alias('orders')" in outcome.output
    assert versions(shop) == before


def test_diff_counts_columns_rows_and_keys_between_versions(shop: Path) -> None:
    first = versions(shop)["gold.customer_totals"]
    run(shop, PIPELINE_SOURCE.replace(*ADDED_COLUMN).replace(*FILTERED))
    last = versions(shop)["gold.customer_totals"]
    outcome = CliRunner().invoke(main, ["--root", str(shop), "diff", "gold.customer_totals", "--from", str(first),
                                        "--to", str(last), "--key", "customer"])
    assert outcome.exit_code == 0, outcome.output
    before, after = (pl.from_arrow(DeltaTable(str(shop / "gold/customer_totals"), version=v).to_pyarrow_table())
                     for v in (first, last))
    changed = before.join(after, on="customer").filter(pl.col("total") != pl.col("total_right")).height
    assert changed > 0
    assert f"rows {before.height} -> {after.height} (+{after.height - before.height})" in outcome.output
    assert "columns added: orders" in outcome.output
    assert f"by key (customer): 0 added, 0 removed, {changed} changed" in outcome.output
    missing = CliRunner().invoke(main, ["--root", str(shop), "diff", "gold.customer_totals", "--from", "99"])
    assert missing.exit_code == 1 and "has no version 99" in missing.output


def test_an_ingested_table_is_ingested_again_only_when_a_full_refresh_names_it(shop: Path) -> None:
    edited = PIPELINE_SOURCE.replace('FileSource("orders", "jsonl")', 'FileSource("orders", "jsonl", on_drift="rescue")')
    kept = run(shop, edited, full_refresh=True)
    assert statuses(kept)["bronze.orders"] == "unchanged"
    plans = planned(shop, edited, select="bronze.orders+", full_refresh=True)
    assert plans["bronze.orders"].action == "rebuild" and plans["bronze.orders"].files[0] == 1
    refreshed = run(shop, edited, select="bronze.orders+", full_refresh=True)
    assert statuses(refreshed)["bronze.orders"] == "succeeded"
    bronze = table(shop, "bronze.orders")
    assert bronze.height == len(ORDERS) and bronze["_run_id"].unique().to_list() == [refreshed.run_id]
    downstream = {r.table: r.details.get("rebuilt", {}).get("change") for r in refreshed.records}
    assert downstream["silver.orders"] == "breaking", "downstream of a bronze ingested again is rebuilt"
    assert table(shop, "silver.orders").height == len(ORDERS)
    assert table(shop, "gold.report")["total"].sum() == sum(o["amount"] for o in ORDERS)


def test_a_full_refresh_of_an_ingested_table_whose_files_are_gone_is_refused(shop: Path) -> None:
    (shop / "landing" / "orders" / "orders-1.jsonl").rename(shop / "orders-1.jsonl")
    (shop / "landing" / "orders" / "orders-2.jsonl").write_text(json.dumps(ORDERS[0]) + "\n")
    before = versions(shop)
    assert "refused: 1 landing file(s) it took in are gone" in planned(
        shop, PIPELINE_SOURCE, select="bronze.orders", full_refresh=True)["bronze.orders"].reasons[1]
    result = Runner(load(PIPELINE_SOURCE, shop.parent).pipeline, load_settings(overrides={
        "storage": {"root": str(shop)}})).run("bronze.orders", full_refresh=True)
    assert result.records[0].status == "failed"
    assert "1 landing file(s) it took in are gone" in result.records[0].error
    assert "(first: orders-1.jsonl)" in result.records[0].error
    assert versions(shop) == before


def test_a_large_rebuild_asks_on_a_terminal_and_a_no_writes_nothing(shop: Path) -> None:
    module = load(PIPELINE_SOURCE.replace(*ADDED_COLUMN), shop.parent)
    before = versions(shop)
    primary, secondary = pty.openpty()
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(shop.parent), str(REPO)]),
                        "MEDALLION__RUN__CONFIRM_REBUILD_ROWS": "5", "COLUMNS": "200"}
    process = subprocess.Popen([str(Path(sys.executable).parent / "medallion"), "--root", str(shop), "run",
                                f"{module.__name__}:pipeline"], stdin=secondary, stdout=secondary,
                               stderr=secondary, env=env, cwd=REPO)
    os.close(secondary)
    shown = b""
    while b"[y/N]" not in shown:
        chunk = os.read(primary, 4096)
        assert chunk, shown.decode(errors="replace")
        shown += chunk
    os.write(primary, b"n\n")
    assert process.wait(timeout=60) == 1
    with contextlib.suppress(OSError):
        while chunk := os.read(primary, 4096):
            shown += chunk
    os.close(primary)
    text = shown.decode(errors="replace")
    assert "rebuild gold.customer_totals, reading 12 rows?" in text and "run cancelled" in text
    assert versions(shop) == before
