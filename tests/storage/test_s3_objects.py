"""The engine on S3 object storage, against a real S3 HTTP endpoint (moto's server) on 127.0.0.1 (see conftest.py):
storage calls, commits, leases and configuration errors, and Iceberg tables through a PostgreSQL
catalog.

Credentials, endpoint and region come only from the standard AWS variables of the environment; delta-rs,
pyarrow and Ray workers read them there (`engine/storage.py`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import polars as pl
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable

from engine.cli.main import main
from engine.errors import LeaseHeld, StorageError
from engine.layout import Layout
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
from tests.engine.test_runner import land_orders
from tests.storage.conftest import BUCKET, comparable, free_port, iceberg_rows, object_keys, subprocess_env

pytestmark = pytest.mark.services


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
    env = subprocess_env(s3) | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
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
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    with pytest.raises(StorageError, match=rf"cannot reach the endpoint of .*`{BUCKET}`.*{endpoint}.*AWS_ENDPOINT_URL"):
        check_root(f"s3://{BUCKET}/x")


def test_plain_http_needs_allow_http(s3: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    with pytest.raises(StorageError, match="AWS_ALLOW_HTTP=true"):
        check_root(f"s3://{BUCKET}/x")


SHOP_DRIVER = textwrap.dedent("""
    import json
    import sys

    from engine import Runner, load_settings
    from engine.runtime import ray_session
    from tests.engine.tables.test_iceberg import shop

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


def test_iceberg_tables_on_the_endpoint_through_a_postgresql_catalog(
        s3: dict[str, str], postgres_catalog: str, tmp_path: Path) -> None:
    root = f"s3://{BUCKET}/iceberg"
    land_orders(tmp_path)
    upload(str(tmp_path / "landing"), f"{root}/landing")
    script = tmp_path / "shop.py"
    script.write_text(SHOP_DRIVER)
    env = subprocess_env(s3) | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    refused, on_s3, on_local = _run_shop([(root, "iceberg", None), (root, "iceberg", postgres_catalog),
                                          (str(tmp_path), "delta", None)], env, script)
    assert refused[0][1] == "failed" and "set storage.iceberg_catalog_uri" in refused[0][2]
    assert all(status == "succeeded" for _, status, _ in on_s3)
    assert all(status == "succeeded" for _, status, _ in on_local)
    for table in ("bronze.orders", "silver.orders", "gold.status_counts"):
        local = pl.from_arrow(DeltaTable(f"{tmp_path}/{table.replace('.', '/')}").to_pyarrow_table())
        assert isinstance(local, pl.DataFrame)
        assert iceberg_rows(postgres_catalog, table).equals(comparable(local)), table
    keys = object_keys("iceberg/silver/orders/")
    assert any(k.endswith(".parquet") for k in keys) and any(k.endswith(".metadata.json") for k in keys)
