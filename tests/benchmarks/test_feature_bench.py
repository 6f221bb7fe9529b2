"""The feature-store benchmark on a tiny retail build: every expected online row is materialized (counted
from the gold tables here), latencies are sane, and ingestion throughput counts every landing byte."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis
from deltalake import DeltaTable
from feast import FeatureView

from benchmarks.features import FEATURE_REPO, MATERIALIZE_END, bench_store, redis_project, run
from benchmarks.ingest import ingest_throughput, select_run
from engine.features.offline import delta_source
from engine.features.repo import load_definitions
from engine.layout import Layout
from engine.runlog import read_records
from pipelines.retail.pipeline import retail
from tests.conftest import require_service

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:On demand feature view is an experimental feature")]

SCALE = 0.02
LOOKUPS = 40
WARMUP = 5


@pytest.fixture(scope="module")
def bench(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The benchmark run at a tiny scale, SQLite only."""
    return run(SCALE, tmp_path_factory.mktemp("feature-bench"), LOOKUPS, redis=None, warmup=WARMUP)


def expected_online_rows(root: str) -> dict[str, int]:
    """Per online view: the entities whose latest row at the materialization end is within the view's TTL."""
    expected = {}
    for view in load_definitions(FEATURE_REPO):
        if not isinstance(view, FeatureView) or not view.online:
            continue
        source = delta_source(view)
        rows = pl.from_arrow(DeltaTable(Layout.at(root).table(source.table)).to_pyarrow_table())
        assert isinstance(rows, pl.DataFrame)
        at = pl.col(source.timestamp_field)
        window = at <= MATERIALIZE_END
        if view.ttl:
            window &= at >= MATERIALIZE_END - view.ttl
        expected[view.name] = rows.filter(window).select(view.join_keys).unique().height
    return expected


def assert_sane(latency: dict[str, float]) -> None:
    assert latency["calls"] == LOOKUPS
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert latency["mean"] > 0


def test_sqlite_materializes_every_expected_row_and_times_lookups(bench: dict[str, Any]) -> None:
    sqlite = bench["stores"]["sqlite"]
    expected = expected_online_rows(bench["root"])
    assert sqlite["materialize"]["views"] == expected
    assert sqlite["materialize"]["rows"] == sum(expected.values()) > 0
    assert sqlite["materialize"]["rows_per_s"] > 0
    assert_sane(sqlite["latency_ms"])
    assert bench["stores"]["redis"] == {"skipped": "not requested"}


@pytest.mark.services
def test_redis_materializes_every_expected_row_and_removes_its_keys(bench: dict[str, Any]) -> None:
    address = os.environ.get("MEDALLION_TEST_REDIS", "127.0.0.1:6379")
    host, port = address.split(":")
    require_service(host, int(port), "Redis")
    with redis_project(address) as overrides:
        numbers = bench_store(bench["root"], LOOKUPS, overrides, warmup=WARMUP)
    assert numbers["project"] == overrides["project"]
    assert numbers["materialize"]["views"] == expected_online_rows(bench["root"])
    assert_sane(numbers["latency_ms"])
    client = redis.Redis(host=host, port=int(port))
    assert next(client.scan_iter(match=b"*" + overrides["project"].encode()), None) is None
    client.close()


def test_ingest_throughput_counts_every_landing_byte(bench: dict[str, Any]) -> None:
    root = Path(bench["root"])
    rows = select_run(ingest_throughput(read_records(Layout.at(str(root)).runs()), root), None)
    landed = {name: sorted(p for p in (root / "landing" / d.source.directory).glob(d.source.pattern) if p.is_file())
              for name, d in retail.tables.items() if d.source is not None}
    assert {r["table"]: (r["files"], r["bytes"]) for r in rows} == {
        name: (len(files), sum(p.stat().st_size for p in files)) for name, files in landed.items()}
    assert sum(r["bytes"] for r in rows) == sum(p.stat().st_size for p in (root / "landing").rglob("*") if p.is_file())
    assert all(r["seconds"] > 0 and r["mb_per_s"] > 0 for r in rows)
    assert {r["run_id"] for r in rows} == {read_records(Layout.at(str(root)).runs())["run_id"][0]}
