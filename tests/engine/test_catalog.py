"""The catalog: declarations, schema from the Delta log with column docs, lineage both ways, search, JSON."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
import ray.data
from click.testing import CliRunner
from deltalake import write_deltalake
from deltalake.transaction import CommitProperties

from engine import FileSource, Freshness, Merge, Overwrite, Pipeline, Runner
from engine.catalog import build_catalog, search
from engine.cli.main import main
from engine.declarations import DeclaredPipeline, record_declarations, recorded_declarations
from engine.errors import PipelineDefinitionError
from engine.layout import Layout
from engine.runlog import read_records
from tests.conftest import settings_at
from tests.engine.test_runner import parse_orders, write_orders

REFERENCE = f"{__name__}:SHOP"


def _shop(name: str = "catalog_shop", silver_owner: str = "Order Squad") -> Pipeline:
    shop = Pipeline(name)
    shop.ingest("bronze.orders", FileSource("orders", "jsonl"), description="Order feed as received.",
                owner="ingest-team", tags=("raw",))

    @shop.table("silver.orders", kind=Merge(keys=["order_id"], sequence_by="updated_at"), incremental=True,
                owner=silver_owner, tags=("sales", "orders"),
                columns={"order_id": "the order's id", "status": "latest STATUS of the order"})
    def orders(bronze_orders: ray.data.Dataset) -> ray.data.Dataset:
        """Orders with their latest status."""
        return bronze_orders.map_batches(parse_orders, batch_format="pyarrow")

    @shop.table("gold.status_counts", kind=Overwrite(), owner="analytics", tags=("kpi",),
                columns={"status": "order status", "len": "orders in that status", "margin": "not produced"},
                freshness=Freshness(max_age="1d"))
    def status_counts(silver_orders: ray.data.Dataset) -> ray.data.Dataset:
        """Orders per status."""
        return silver_orders.map_batches(lambda t: pl.from_arrow(t).group_by("status").len().to_arrow(),
                                         batch_format="pyarrow", batch_size=None)

    return shop


SHOP = _shop()


def write(root: Path, table: str, rows: dict[str, Any], pipeline: str = REFERENCE) -> None:
    layer, name = table.split(".")
    write_deltalake(str(root / layer / name), pa.table(rows), mode="append",
                    commit_properties=CommitProperties(custom_metadata={"medallion.pipeline": pipeline,
                                                                        "medallion.operation": "run"}))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """bronze.orders and silver.orders written directly; gold.status_counts never built."""
    write(tmp_path, "bronze.orders", {"order_id": ["1", "2"], "status": ["placed", "paid"]})
    write(tmp_path, "silver.orders", {"order_id": pa.array([1, 2], pa.int64()), "status": ["placed", "paid"],
                                      "updated_at": pa.array([dt.datetime(2026, 1, 1, tzinfo=dt.UTC)] * 2,
                                                             pa.timestamp("us", "UTC"))})
    write(tmp_path, "silver.other", {"x": [1]}, pipeline="nosuchpipeline")
    return tmp_path


def test_declarations_are_kept_and_checked() -> None:
    definition = SHOP.tables["silver.orders"]
    assert definition.owner == "Order Squad" and definition.tags == ("sales", "orders")
    assert definition.columns == {"order_id": "the order's id", "status": "latest STATUS of the order"}
    assert definition.unknown_documented_columns(["order_id"]) == ["status"]
    pipeline = Pipeline("bad")
    with pytest.raises(PipelineDefinitionError, match="table `bronze.a`: tags must be a tuple of non-empty strings"):
        pipeline.ingest("bronze.a", FileSource("a", "jsonl"), tags="raw")
    with pytest.raises(PipelineDefinitionError, match="table `silver.b`: columns maps column names"):
        pipeline.table("silver.b", columns={"a": 1})  # type: ignore[dict-item]


def test_catalog_lists_schema_with_docs_sizes_and_neighbours_both_ways(root: Path) -> None:
    entries = {e.table: e for e in build_catalog(Layout.at(str(root)))}
    assert list(entries) == ["bronze.orders", "silver.orders", "gold.status_counts", "silver.other"]
    silver = entries["silver.orders"]
    assert (silver.pipeline, silver.owner, silver.description) == ("catalog_shop", "Order Squad",
                                                                   "Orders with their latest status.")
    assert [(c.name, c.type, c.doc) for c in silver.columns] == [
        ("order_id", "long", "the order's id"), ("status", "string", "latest STATUS of the order"),
        ("updated_at", "timestamp", "")]
    assert (silver.version, silver.rows) == (0, 2)
    assert silver.upstream == ("bronze.orders",) and silver.downstream == ("gold.status_counts",)
    assert entries["bronze.orders"].upstream == ("landing/orders",)
    assert entries["bronze.orders"].downstream == ("silver.orders",)
    gold = entries["gold.status_counts"]
    assert gold.version is None and gold.upstream == ("silver.orders",) and gold.downstream == ()
    assert [c.name for c in gold.columns] == ["status", "len", "margin"] and gold.columns[0].type is None
    assert gold.freshness is not None and gold.freshness.state == "unknown"
    assert silver.freshness is not None and silver.freshness.state == "untracked"
    other = entries["silver.other"]
    assert other.pipeline is None and [c.name for c in other.columns] == ["x"]


def test_search_matches_every_field_case_insensitively(root: Path) -> None:
    entries = build_catalog(Layout.at(str(root)))

    def hits(text: str) -> dict[str, tuple[str, ...]]:
        return {e.table: e.matches for e in search(entries, text)}

    assert hits("STATUS_c") == {"gold.status_counts": ("table name",)}
    assert hits("per status")["gold.status_counts"] == ("description",)
    assert hits("KPI") == {"gold.status_counts": ("tag kpi",)}
    assert hits("squad") == {"silver.orders": ("owner",)}
    assert hits("updated_AT") == {"silver.orders": ("column updated_at",)}
    assert hits("latest status") == {"silver.orders": ("description", "doc of column status")}
    assert hits("not produced") == {"gold.status_counts": ("doc of column margin",)}
    assert hits("nothing like this") == {}


def test_unknown_documented_column_is_reported_by_the_catalog(tmp_path: Path) -> None:
    write(tmp_path, "gold.status_counts", {"status": ["paid"], "len": pa.array([1], pa.uint32())})
    entry = next(e for e in build_catalog(Layout.at(str(tmp_path)), [SHOP], only_pipelines=True)
                 if e.table == "gold.status_counts")
    assert entry.problems == ("table `gold.status_counts` documents column `margin`, which it does not have "
                              "(columns: status, len)",)
    assert [c.name for c in entry.columns] == ["status", "len"]
    result = CliRunner().invoke(main, ["--root", str(tmp_path), "catalog", "--pipeline", REFERENCE])
    assert result.exit_code == 0, result.output
    assert "documents column `margin`, which it does not have" in result.output
    assert "3 table(s), 1 declaration problem(s)" in result.output


def test_cli_prints_and_searches_and_json_parses(root: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["--root", str(root), "catalog"])
    assert result.exit_code == 0, result.output
    for expected in ("silver.orders", "Order Squad", "sales, orders", "upstream   bronze.orders",
                     "downstream gold.status_counts", "latest STATUS of the order", "not built", "4 table(s)"):
        assert expected in result.output
    result = runner.invoke(main, ["--root", str(root), "catalog", "--search", "squad", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [e["table"] for e in listed] == ["silver.orders"]
    assert listed[0]["columns"][1] == {"name": "status", "type": "string", "doc": "latest STATUS of the order"}
    assert listed[0]["matches"] == ["owner"] and listed[0]["downstream"] == ["gold.status_counts"]
    result = runner.invoke(main, ["--root", str(root), "catalog", "--pipeline", REFERENCE, "--json"])
    assert [e["table"] for e in json.loads(result.output)] == ["bronze.orders", "silver.orders", "gold.status_counts"]
    assert json.loads(result.output)[2]["freshness"]["state"] == "unknown"
    result = runner.invoke(main, ["--root", str(root), "catalog", "--search", "zzz"])
    assert result.exit_code == 0 and "matches `zzz`" in result.output


def test_a_run_reports_documented_columns_the_built_table_lacks(ray_local: None, tmp_path: Path) -> None:
    write_orders(tmp_path, "orders-1.jsonl", [
        {"order_id": 1, "status": "placed", "updated_at": "2026-01-01T00:00:00Z"},
        {"order_id": 2, "status": "paid", "updated_at": "2026-01-01T00:00:00Z"},
    ])
    result = Runner(SHOP, settings_at(tmp_path)).run()
    assert result.succeeded, [r.error for r in result.records]
    records = read_records(Layout.at(str(tmp_path)).runs())
    details = {row["table"]: json.loads(row["details"]) for row in records.iter_rows(named=True)}
    assert details["gold.status_counts"]["unknown_documented_columns"] == ["margin"]
    assert "unknown_documented_columns" not in details["silver.orders"]
    now = dt.datetime.now(dt.UTC)
    entries = {e.table: e for e in build_catalog(Layout.at(str(tmp_path)), [SHOP], now=now)}
    assert entries["gold.status_counts"].freshness.state == "fresh"  # type: ignore[union-attr]
    assert entries["silver.orders"].downstream == ("gold.status_counts",)
    assert [c.doc for c in entries["gold.status_counts"].columns if c.name == "len"] == ["orders in that status"]
    recorded = {e.table: e for e in build_catalog(Layout.at(str(tmp_path)), now=now)}  # as the run recorded it
    assert [e.to_json() for e in recorded.values()] == [e.to_json() for e in entries.values()]
    assert recorded["gold.status_counts"].pipeline == "catalog_shop"


def test_declarations_round_trip_and_a_changed_declaration_is_recorded_only_by_a_run(tmp_path: Path) -> None:
    layout = Layout.at(str(tmp_path))
    assert recorded_declarations(layout, SHOP.name) is None
    record_declarations(layout, SHOP)
    assert recorded_declarations(layout, SHOP.name) == DeclaredPipeline.of(SHOP)
    assert recorded_declarations(layout, SHOP.name).tables[2].freshness == Freshness(max_age="1d")  # type: ignore[union-attr]
    written = Path(layout.declarations(SHOP.name)).stat().st_mtime_ns
    record_declarations(layout, _shop())  # the same declarations: the file is left as it is
    assert Path(layout.declarations(SHOP.name)).stat().st_mtime_ns == written
    for table in ("bronze.orders", "silver.orders"):
        write(tmp_path, table, {"order_id": ["1"], "status": ["placed"]}, pipeline=SHOP.name)
    changed = _shop(silver_owner="New Owners")
    assert build_catalog(layout)[1].owner == "Order Squad"  # recorded by the last run
    assert build_catalog(layout, [changed])[1].owner == "New Owners"  # --pipeline: the current code
    record_declarations(layout, changed)
    assert build_catalog(layout)[1].owner == "New Owners"
    Path(layout.declarations(SHOP.name)).write_text("{not json")
    assert [e.pipeline for e in build_catalog(layout)] == [None, None]  # unreadable, and not loadable by name


def test_status_and_catalog_answer_from_the_root_without_importing_the_pipeline(tmp_path: Path) -> None:
    from engine.entrypoints import load_pipeline

    retail = load_pipeline("retail")
    for table in ("bronze.orders", "silver.orders"):
        write(tmp_path, table, {"order_id": ["1"], "status": ["placed"]}, pipeline=retail.name)
    record_declarations(Layout.at(str(tmp_path)), retail)
    code = f"""
import json, sys
from engine.cli.main import main
for command in (["status"], ["catalog", "--json"]):
    main.main(["--root", {str(tmp_path)!r}, *command], prog_name="medallion", standalone_mode=False)
print(json.dumps([m for m in ("ray", "pandera", "pandas", "pipelines.retail") if m in sys.modules]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
    description = retail.tables["silver.orders"].description
    assert "gold.customer_daily" in done.stdout and "never built" in done.stdout and description in done.stdout
