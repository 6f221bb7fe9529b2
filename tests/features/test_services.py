"""Production configuration against real servers: Redis as the online store, a SQL registry on PostgreSQL."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psycopg
import pytest
import ray
import redis
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

from engine.features import online
from engine.features.materialize import materialize
from engine.features.repo import apply_repo, open_store
from engine.features.server import build_app
from tests.conftest import require_service
from tests.features.conftest import REPO, serving, table_path, write_table
from tests.features.synthetic import customer, customer_rows, customer_view, latest_online
from tests.features.test_materialize import END, IDS, TABLE, expected_values, online_values
from tests.features.test_server import as_columns, call

PRODUCTION = REPO / "production.yaml"


@pytest.mark.services
def test_redis_online_store_and_postgres_registry_serve_exactly_the_current_version(
        ray_local: None, tmp_path: Path, redis_online: dict[str, Any], postgres_registry: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDALLION_REDIS", redis_online["online_store"]["connection_string"])
    monkeypatch.setenv("MEDALLION_REGISTRY_URL", postgres_registry["registry"]["path"])
    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    project = {"project": redis_online["project"]}
    write_table(tmp_path, TABLE, customer_rows(np.random.default_rng(21)))
    store = open_store(str(tmp_path), overlay=PRODUCTION, overrides=project)
    assert (store.config.online_store.type, store.config.registry.registry_type) == ("redis", "sql")
    apply_repo(store, [customer, customer_view()])
    [first] = materialize(store, end=END)
    assert_frame_equal(online_values(store), expected_values(tmp_path, END), check_dtypes=False)

    before = latest_online(DeltaTable(table_path(tmp_path, TABLE)).to_pyarrow_table(), END)
    ids = before["customer_id"].to_list()
    table = DeltaTable(table_path(tmp_path, TABLE))
    table.update(predicate=f"customer_id IN ({ids[0]}, {ids[1]})", updates={"visits": "visits + 100"})
    table.delete(f"customer_id IN ({ids[2]}, {ids[3]})")
    [report] = materialize(store, end=END, incremental=True)

    assert (report.written, report.deleted, report.online_rows) == (2, 2, first.online_rows - 2)
    values = online_values(store)
    assert_frame_equal(values, expected_values(tmp_path, END), check_dtypes=False)
    assert values.filter(pl.col("customer_id").is_in(ids[2:4]))["visits"].to_list() == [None, None]
    with serving(build_app(store)) as port:
        status, answer = call(port, "POST", "/get-online-features", {
            "features": ["customer_stats:spend", "customer_stats:visits"], "entities": {"customer_id": IDS}})
        refused = call(port, "POST", "/get-online-features", {
            "features": ["customer_stats:spend"], "entities": {"customer_id": ["one"]}})
    assert status == 200
    served = as_columns(answer)
    served["spend"] = [float(v) if isinstance(v, str) else v for v in served["spend"]]  # NaN comes as "NaN"
    assert_frame_equal(pl.DataFrame(served).select(values.columns), values, check_dtypes=False)
    assert (refused[0], refused[1]["error"]["code"]) == (422, "wrong_type")
    view = store.get_feature_view("customer_stats")
    assert online.count_rows(store.config, store._get_provider().online_store, view) == report.online_rows

    other = open_store(str(tmp_path), overlay=PRODUCTION, overrides=project)
    assert [v.name for v in other.list_feature_views()] == ["customer_stats"]
    assert_frame_equal(online_values(other), values)
    url = postgres_registry["registry"]["path"].replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as connection:
        stored = connection.execute("SELECT feature_view_name FROM feature_views WHERE project_id = %s",
                                    (project["project"],)).fetchall()
    assert stored == [("customer_stats",)]
    host, port = redis_online["online_store"]["connection_string"].split(":")
    client = redis.Redis(host=host, port=int(port))
    assert sum(1 for _ in client.scan_iter(match=b"*" + project["project"].encode())) == report.online_rows


def test_absent_service_skips_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"Redis is not reachable on 127.0.0.1:{port}"):
        require_service("127.0.0.1", port, "Redis")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_service("127.0.0.1", port, "Redis")
