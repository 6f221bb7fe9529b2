"""The engine on S3 object storage, against a real S3 HTTP endpoint (moto's server) on 127.0.0.1.

Credentials, endpoint and region come only from the standard AWS variables of the environment; delta-rs,
pyarrow and Ray workers read them there (`engine/storage.py`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import polars as pl
import pytest
import yaml
from click.testing import CliRunner
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

from engine.cli.main import main
from engine.errors import LeaseHeld, StorageError
from engine.lease import RunLease
from engine.runlog import RunRecord, append_records, read_records
from engine.storage import (
    check_root,
    create_only,
    delete_tree,
    delta_tables_under,
    exists,
    files_under,
    filesystem_of,
    upload,
)
from engine.tables.layout import Layout
from tests.engine.test_runner import land_orders

FEATURE_REPO = Path(__file__).resolve().parents[2] / "features"

pytestmark = pytest.mark.services

BUCKET = "lake"
SCALE = "0.02"
UNSAFE = ("AWS_S3_ALLOW_UNSAFE_RENAME", "AWS_CONDITIONAL_PUT", "AWS_S3_LOCKING_PROVIDER", "AWS_PROFILE",
          "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """A moto S3 server on a free local port with the bucket `lake`, and the process environment pointing at it
    (the variables are also returned, for subprocesses). The server runs in its own process: some delta-rs calls
    (`DeltaTable.is_deltatable`) keep the GIL while they wait for the endpoint, so an in-process server
    (`ThreadedMotoServer`) could not answer them."""
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, "moto_server did not start"
            time.sleep(0.1)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ALLOW_HTTP": "true",
           "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name in UNSAFE:
                patch.delenv(name, raising=False)
            for name, value in env.items():
                patch.setenv(name, value)
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


def _subprocess_env(s3: dict[str, str]) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return keep | s3 | {"RAY_AUTH_MODE": "disabled", "MEDALLION__RAY__NUM_CPUS": "2",
                        "MEDALLION_PII_KEY": "test-pii-key"}


def _record(run_id: str, table: str = "bronze.orders") -> RunRecord:
    now = datetime.now(UTC)
    return RunRecord(run_id=run_id, pipeline="test", table=table, status="succeeded", started_at=now,
                     finished_at=now)


def test_delta_and_pyarrow_reach_the_endpoint_from_the_environment_alone(s3: dict[str, str]) -> None:
    root = f"s3://{BUCKET}/basics"
    check_root(root)
    append_records(f"{root}/_meta/runs", [_record("r1")])
    append_records(f"{root}/_meta/runs", [_record("r2")])
    assert read_records(f"{root}/_meta/runs")["run_id"].to_list() == ["r1", "r2"]
    assert DeltaTable(f"{root}/_meta/runs").version() == 1
    assert delta_tables_under(root) == [f"{root}/_meta/runs"]
    assert delta_tables_under(root, skip=("_meta",)) == []
    assert any(name.startswith("_meta/runs/_delta_log/") for name in files_under(root))

    fs, path = filesystem_of(f"{root}/_staging/run-1/silver/orders")
    with fs.open_output_stream(f"{path}/part-0.parquet") as out:
        out.write(b"staged")
    assert exists(f"{root}/_staging/run-1")
    delete_tree(f"{root}/_staging/run-1")
    delete_tree(f"{root}/_staging/never-written")
    assert not exists(f"{root}/_staging/run-1")


WRITER = textwrap.dedent("""
    import sys
    from datetime import UTC, datetime
    from engine.runlog import RunRecord, append_records
    from engine.storage import check_root

    root, writer, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    check_root(root)
    for i in range(count):
        now = datetime.now(UTC)
        append_records(f"{root}/_meta/runs", [RunRecord(run_id=f"{writer}-{i}", pipeline="race",
                       table="bronze.orders", status="succeeded", started_at=now, finished_at=now)])
""")


def test_concurrent_writers_in_two_processes_lose_no_commit(s3: dict[str, str], tmp_path: Path) -> None:
    root, commits = f"s3://{BUCKET}/race", 12
    uri = f"{root}/_meta/runs"
    append_records(uri, [_record("seed")])
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = _subprocess_env(s3) | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    writers = [subprocess.Popen([sys.executable, str(script), root, name, str(commits)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for writer in writers:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
    table = DeltaTable(uri)
    assert table.version() == 2 * commits  # version 0 (seed) plus one commit per append
    assert len(table.history()) == 2 * commits + 1
    run_ids = sorted(read_records(uri)["run_id"].to_list())
    assert run_ids == sorted(["seed", *[f"{w}-{i}" for w in "ab" for i in range(commits)]])


def test_of_concurrent_lease_takers_on_s3_exactly_one_holds_it(s3: dict[str, str]) -> None:
    """Attacks: "a second run refuses at once", on an object store, with eight runs taking the lease at the
    same moment (conditional PUTs against the endpoint): exactly one holds it, the others are refused naming it."""
    layout = Layout.at(f"s3://{BUCKET}/leased")
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def take(index: int) -> None:
        lease = RunLease(layout, "shop", heartbeat_s=3600)
        barrier.wait()
        try:
            lease.acquire(f"run-{index}")
            outcomes.append(f"held run-{index}")
        except LeaseHeld as refused:
            outcomes.append(str(refused))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    held = [o for o in outcomes if o.startswith("held ")]
    assert len(held) == 1 and len(outcomes) == 8
    holder = held[0].removeprefix("held ")
    assert all(holder in o for o in outcomes if o not in held)
    keys = object_keys("leased/_meta/leases/shop/")
    assert len(keys) == 1 and json.loads(boto3.client("s3").get_object(
        Bucket=BUCKET, Key=keys[0])["Body"].read())["run_id"] == holder
    assert create_only(f"s3://{BUCKET}/{keys[0]}", b"another") is False


@pytest.mark.parametrize("variable, value", [("AWS_S3_ALLOW_UNSAFE_RENAME", "true"),
                                             ("AWS_CONDITIONAL_PUT", "disabled"),
                                             ("AWS_S3_LOCKING_PROVIDER", "dynamodb")])
def test_a_configuration_unsafe_for_concurrent_writers_is_refused_unless_allowed(
        s3: dict[str, str], monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(StorageError, match=rf"unsafe for concurrent writers.*`{BUCKET}`.*{variable}.*"
                                           r"MEDALLION__STORAGE__ALLOW_UNSAFE_WRITES"):
        check_root(f"s3://{BUCKET}/unsafe")
    check_root(f"s3://{BUCKET}/unsafe", allow_unsafe_writes=True)

    monkeypatch.setenv("MEDALLION__STORAGE__ALLOW_UNSAFE_WRITES", "true")
    result = CliRunner().invoke(main, ["--root", f"s3://{BUCKET}/unsafe", "status"])
    assert result.exit_code == 0, result.output


def test_missing_credentials_name_the_root_and_what_to_set(s3: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(StorageError, match=rf"no credentials for storage root `s3://{BUCKET}/x` .*AWS_ACCESS_KEY_ID"):
        check_root(f"s3://{BUCKET}/x")
    result = CliRunner().invoke(main, ["--root", f"s3://{BUCKET}/x", "status"])
    assert result.exit_code == 1 and "AWS_SECRET_ACCESS_KEY" in result.output


def test_an_unknown_bucket_is_named(s3: dict[str, str]) -> None:
    with pytest.raises(StorageError, match=r"bucket `no-such-bucket` .* does not exist: create it"):
        check_root("s3://no-such-bucket/lakehouse")
    result = CliRunner().invoke(main, ["--root", "s3://no-such-bucket/lakehouse", "status"])
    assert result.exit_code == 1 and "no-such-bucket" in result.output


def test_an_unreachable_endpoint_is_named(s3: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    with pytest.raises(StorageError, match=rf"cannot reach the endpoint of .*`{BUCKET}`.*{endpoint}.*AWS_ENDPOINT_URL"):
        check_root(f"s3://{BUCKET}/x")


def test_plain_http_needs_allow_http(s3: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    with pytest.raises(StorageError, match="AWS_ALLOW_HTTP=true"):
        check_root(f"s3://{BUCKET}/x")


def object_keys(prefix: str) -> list[str]:
    """The keys of the bucket's objects under `prefix`, listed through boto3."""
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _medallion(root: str, env: dict[str, str], *args: str) -> str:
    command = [str(Path(sys.executable).with_name("medallion")), "--root", root, *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _gold(uri: str) -> pl.DataFrame:
    frame = pl.from_arrow(DeltaTable(uri).to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    columns = [c for c in frame.columns if not c.startswith("_")]
    return frame.select(columns).sort(columns)


@pytest.fixture(scope="module")
def retail_on_s3(s3: dict[str, str]) -> str:
    """The retail demo run once on the S3 endpoint; the root."""
    root = f"s3://{BUCKET}/retail"
    _medallion(root, _subprocess_env(s3), "demo", "--scale", SCALE, "--as-of", "2026-05-30")
    return root


@pytest.mark.slow
def test_the_retail_pipeline_runs_on_s3_like_on_a_local_root(s3: dict[str, str], retail_on_s3: str,
                                                             tmp_path: Path) -> None:
    root, env = retail_on_s3, _subprocess_env(s3)
    _medallion(str(tmp_path), env, "demo", "--scale", SCALE, "--as-of", "2026-05-30")

    on_s3 = delta_tables_under(root, skip=("_meta", "landing"))
    local = delta_tables_under(str(tmp_path), skip=("_meta", "landing"))
    assert [t.removeprefix(root) for t in on_s3] == [t.removeprefix(str(tmp_path)) for t in local]
    assert any(t.endswith("/gold/customer_features") for t in on_s3)
    for table in ("gold/customer_features", "gold/fct_order_lines", "gold/dim_customer"):
        assert _gold(f"{root}/{table}").equals(_gold(f"{tmp_path}/{table}")), table
    assert not [f for f in files_under(f"{root}/_staging")], "staged files were left behind"
    assert not read_records(f"{root}/_meta/runs").filter(pl.col("status") == "failed").height
    assert DeltaTable(f"{root}/_meta/quality").version() >= 0

    again = _medallion(root, env, "run", "retail")
    assert "unchanged" in again
    assert "gold.customer_features" in _medallion(root, env, "status")
    _medallion(root, env, "history", "silver.orders")
    _medallion(root, env, "maintain", "optimize", "silver.orders")
    _medallion(root, env, "maintain", "vacuum", "--dry-run")
    backup = f"s3://{BUCKET}/backups/one"
    _medallion(root, env, "backup", "--to", backup)
    _medallion(root, env, "backup", "verify", backup)  # exits non-zero when anything differs


@pytest.mark.slow
def test_the_feature_store_and_mlflow_artifacts_live_on_the_same_object_store(
        s3: dict[str, str], retail_on_s3: str, redis_online: dict[str, Any], tmp_path: Path) -> None:
    import mlflow

    from engine.features.repo import open_store

    root, prefix = retail_on_s3, retail_on_s3.removeprefix(f"s3://{BUCKET}/")
    overlay = tmp_path / "online.yaml"
    overlay.write_text(yaml.safe_dump(redis_online))
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    env = _subprocess_env(s3) | {"MLFLOW_TRACKING_URI": tracking}
    features = ["features", "--repo", str(FEATURE_REPO), "--feast-config", str(overlay)]
    _medallion(root, env, *features, "apply")
    gold = pl.from_arrow(DeltaTable(f"{root}/gold/customer_features").to_pyarrow_table())
    assert isinstance(gold, pl.DataFrame)
    end = gold["event_timestamp"].max()
    _medallion(root, env, *features, "materialize", "--end", end.isoformat())

    assert f"{prefix}/_meta/features/registry.db" in object_keys(prefix)
    latest = gold.filter(pl.col("event_timestamp") == end).sort("customer_id").head(1)
    store = open_store(root, FEATURE_REPO, overlay=overlay)
    online = store.get_online_features(features=["customer_features:order_count_30d"],
                                       entity_rows=[{"customer_id": latest["customer_id"][0]}]).to_dict()
    assert online["order_count_30d"] == latest["order_count_30d"].to_list()

    trained = _medallion(root, env, "train", "--repo", str(FEATURE_REPO), "--feast-config", str(overlay))
    assert "registered version 1" in trained
    mlflow.set_tracking_uri(tracking)
    experiment = mlflow.get_experiment_by_name("retail/churn")
    assert experiment is not None
    assert experiment.artifact_location == f"{root}/_meta/mlflow/artifacts/retail-churn"
    assert any(key.endswith("/MLmodel") for key in object_keys(f"{prefix}/_meta/mlflow/artifacts/"))
    assert not (tmp_path / "artifacts").exists()
    model = mlflow.pyfunc.load_model("models:/retail_churn/1")
    example = model.input_example
    assert example is not None and len(model.predict(example)) == len(example)


SHOP_DRIVER = textwrap.dedent("""
    import json
    import sys

    from engine import Runner, load_settings
    from engine.runtime import ray_session
    from tests.engine.test_iceberg import shop

    outcomes = []
    with ray_session(load_settings().ray):
        for root, table_format, catalog in json.loads(sys.argv[1]):
            settings = load_settings(overrides={"storage": {"root": root, "iceberg_catalog_uri": catalog}})
            result = Runner(shop(table_format), settings).run()
            outcomes.append([[r.table, r.status, r.error] for r in result.records])
    print(json.dumps(outcomes))
""")


def _run_shop(runs: list[tuple[str, str, str | None]], env: dict[str, str], script: Path) -> list[list[list[Any]]]:
    """The shop pipeline of the Iceberg tests run once per (root, table format, catalog), one run after the
    other in a process of their own on one private Ray instance (its workers get the AWS variables); per run,
    each table's [name, status, error]."""
    done = subprocess.run([sys.executable, str(script), json.dumps(runs)], env=env, timeout=900,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _iceberg_rows(catalog: str, table: str) -> pl.DataFrame:
    from pyiceberg.catalog.sql import SqlCatalog

    from engine.storage import iceberg_io_properties

    frame = pl.from_arrow(SqlCatalog("medallion", uri=catalog, **iceberg_io_properties())
                          .load_table(tuple(table.split("."))).scan().to_arrow())
    assert isinstance(frame, pl.DataFrame)
    return _comparable(frame)


def _comparable(frame: pl.DataFrame) -> pl.DataFrame:
    """The columns not starting with `_`, in name order, rows sorted by the exact columns before the floats
    (whose last bits may differ between runs)."""
    columns = sorted(c for c in frame.columns if not c.startswith("_"))
    floats = [c for c in columns if frame.schema[c].is_float()]
    return frame.select(columns).sort([c for c in columns if c not in floats] + floats)


def test_iceberg_tables_on_the_endpoint_through_a_postgresql_catalog(
        s3: dict[str, str], postgres_catalog: str, tmp_path: Path) -> None:
    root = f"s3://{BUCKET}/iceberg"
    land_orders(tmp_path)
    upload(str(tmp_path / "landing"), f"{root}/landing")
    script = tmp_path / "shop.py"
    script.write_text(SHOP_DRIVER)
    env = _subprocess_env(s3) | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    refused, on_s3, local = _run_shop([(root, "iceberg", None), (root, "iceberg", postgres_catalog),
                                       (str(tmp_path), "delta", None)], env, script)
    assert refused[0][1] == "failed" and "set storage.iceberg_catalog_uri" in refused[0][2]
    assert all(status == "succeeded" for _, status, _ in on_s3)
    assert all(status == "succeeded" for _, status, _ in local)
    for table in ("bronze.orders", "silver.orders", "gold.status_counts"):
        local = pl.from_arrow(DeltaTable(f"{tmp_path}/{table.replace('.', '/')}").to_pyarrow_table())
        assert isinstance(local, pl.DataFrame)
        assert _iceberg_rows(postgres_catalog, table).equals(_comparable(local)), table
    keys = object_keys("iceberg/silver/orders/")
    assert any(k.endswith(".parquet") for k in keys) and any(k.endswith(".metadata.json") for k in keys)


@pytest.mark.slow
def test_the_retail_pipeline_on_iceberg_on_s3_gives_the_gold_of_the_delta_run(
        s3: dict[str, str], retail_on_s3: str, postgres_catalog: str) -> None:
    root = f"s3://{BUCKET}/retail-iceberg"
    env = _subprocess_env(s3) | {"MEDALLION__STORAGE__TABLE_FORMAT": "iceberg",
                                 "MEDALLION__STORAGE__ICEBERG_CATALOG_URI": postgres_catalog}
    _medallion(root, env, "demo", "--scale", SCALE, "--as-of", "2026-05-30")
    assert not delta_tables_under(root, skip=("_meta", "landing", "quarantine", "_changes"))
    for table in ("gold.customer_features", "gold.customer_daily", "gold.fct_order_lines", "gold.dim_customer",
                  "gold.dim_product"):
        delta_gold = _comparable(_gold(f"{retail_on_s3}/{table.replace('.', '/')}"))
        assert_frame_equal(_iceberg_rows(postgres_catalog, table), delta_gold, check_exact=False, rel_tol=1e-9,
                           abs_tol=1e-9)
