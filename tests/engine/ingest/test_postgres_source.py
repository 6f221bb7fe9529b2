"""A PostgreSQL table into bronze, against the real local PostgreSQL: the first snapshot by key ranges, then its
changes from the replication slot, exactly once across kills, with silver (a `Merge` table) equal to the source
table after every step, checked by a query on PostgreSQL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import ray
from click.testing import CliRunner
from deltalake import DeltaTable

from engine import Pipeline, PostgresSource, Runner
from engine.cli.main import main
from engine.errors import PipelineDefinitionError
from engine.ingest.postgres.database import SlotState
from engine.run import ingest_database
from engine.run.sources import source_states
from tests.conftest import SOURCE_DSN_CANARY, require_service, settings_at
from tests.engine.ingest.pg_pipeline import DSN_ENV, build

pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parents[3]

@dataclass(frozen=True)
class Source:
    """A scratch schema with a `customers` table, and a pipeline reading it into bronze and silver."""

    schema: str
    slot: str
    root: Path
    pipeline: Pipeline

    def sql(self, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with psycopg.connect(os.environ[DSN_ENV], autocommit=True) as connection:
            cursor = connection.execute(statement.replace("S.", f"{self.schema}."), params or None)
            return cursor.fetchall() if cursor.description else []

    def run(self, **options: object) -> dict[str, object]:
        result = Runner(self.pipeline, settings_at(self.root)).run(**options)
        assert result.succeeded, [r.error for r in result.records if r.error]
        return {r.table: r for r in result.records}

    def bronze(self) -> pa.Table:
        return DeltaTable(str(self.root / "bronze" / "customers")).to_pyarrow_table()

    def silver(self) -> list[tuple[object, ...]]:
        table = DeltaTable(str(self.root / "silver" / "customers")).to_pyarrow_table()
        rows = table.select(["id", "name", "amount"]).to_pylist()
        return sorted((r["id"], r["name"], None if r["amount"] is None else Decimal(r["amount"])) for r in rows)

    def source_rows(self) -> list[tuple[object, ...]]:
        return sorted(self.sql("SELECT id, name, amount FROM S.customers"))  # type: ignore[arg-type]


def _pipeline(schema: str, slot: str, **source: object) -> Pipeline:
    return build(schema, slot, **source)


@pytest.fixture
def source(tmp_path: Path, ray_local: None) -> Iterator[Source]:
    require_service("127.0.0.1", 5432, "PostgreSQL")
    schema = f"src_{uuid.uuid4().hex[:10]}"
    slot = f"medallion_test_{schema}"
    made = Source(schema, slot, tmp_path, _pipeline(schema, slot, snapshot_rows_per_task=300))
    level = made.sql("SHOW wal_level")[0][0]
    if level != "logical":
        message = f"PostgreSQL's wal_level is {level}, not logical; scripts/services sets it"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    # Slots of test processes that died before their teardown would hold the server's WAL forever.
    made.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active "
             "AND slot_name LIKE 'medallion\\_test\\_%'")
    made.sql(f"CREATE SCHEMA {schema}")
    made.sql("CREATE TABLE S.customers (id bigint PRIMARY KEY, name text, amount numeric(10, 2))")
    yield made
    made.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    made.sql(f"DROP PUBLICATION IF EXISTS {slot}")
    made.sql(f"DROP SCHEMA {schema} CASCADE")


def test_snapshot_then_inserts_updates_deletes_and_a_rolled_back_transaction(source: Source) -> None:
    source.sql("INSERT INTO S.customers SELECT i, 'name ' || i, i * 1.5 FROM generate_series(1, 1000) i")
    source.sql("ANALYZE S.customers")
    records = source.run()
    assert records["bronze.customers"].details["snapshot_tasks"] > 1  # read by key ranges in parallel
    bronze = source.bronze()
    assert bronze.num_rows == 1000 and set(bronze["_op"].to_pylist()) == {"r"}
    assert bronze.column("id").type == pa.string() and sorted(map(int, bronze["id"].to_pylist())) == list(range(1, 1001))
    assert source.silver() == source.source_rows()

    source.sql("INSERT INTO S.customers VALUES (1001, 'new', 7.25), (1002, NULL, NULL)")
    source.sql("UPDATE S.customers SET name = 'changed', amount = 0 WHERE id <= 10")
    source.sql("DELETE FROM S.customers WHERE id BETWEEN 11 AND 20")
    with psycopg.connect(os.environ[DSN_ENV]) as connection:  # never committed: never ingested
        connection.execute(f"INSERT INTO {source.schema}.customers VALUES (5000, 'rolled back', 1)")
        connection.rollback()
    with psycopg.connect(os.environ[DSN_ENV]) as connection:  # one transaction touching one key twice
        connection.execute(f"UPDATE {source.schema}.customers SET name = 'first' WHERE id = 30")
        connection.execute(f"UPDATE {source.schema}.customers SET name = 'second' WHERE id = 30")
    records = source.run()
    assert records["bronze.customers"].details["changes"] == 2 + 10 + 10 + 2
    changes = source.bronze().filter(pc.field("_op") != "r")
    assert sorted(changes["_op"].to_pylist()) == ["c"] * 2 + ["d"] * 10 + ["u"] * 12
    assert "5000" not in source.bronze()["id"].to_pylist()
    assert source.silver() == source.source_rows()
    assert ("30", "second") in {(r["id"], r["name"]) for r in source.bronze().to_pylist()}

    idle = source.run()
    assert idle["bronze.customers"].status == "unchanged"
    assert source.bronze().num_rows == 1000 + 24
    holding = [path for path in source.root.rglob("*") if path.is_file() and SOURCE_DSN_CANARY.encode()
               in path.read_bytes()]
    assert not holding, holding  # the connection string's password is in no table, log, record or staged file


def _failure(source: Source, **options: object) -> str:
    """The error of a run that must fail on the bronze table."""
    result = Runner(source.pipeline, settings_at(source.root)).run(**options)
    errors = [r.error for r in result.records if r.table == "bronze.customers" and r.error]
    assert not result.succeeded and errors, [r.status for r in result.records]
    return errors[0]


def test_a_run_dying_after_its_commit_or_before_it_takes_every_change_once(source: Source,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    source.sql("INSERT INTO S.customers SELECT i, 'n', 1 FROM generate_series(1, 50) i")
    source.run()
    source.sql("UPDATE S.customers SET amount = 2 WHERE id <= 5")
    # Dies right after its commit: the slot is never advanced.
    with monkeypatch.context() as patched:
        patched.setattr(ingest_database, "_advance", lambda *_: None)
        source.run()
    source.sql("DELETE FROM S.customers WHERE id = 6")
    # Dies before its commit: nothing is committed, the slot stays.
    with monkeypatch.context() as patched:
        def dying(*_: object, **__: object) -> None:
            raise RuntimeError("killed before the commit")
        patched.setattr(ingest_database, "bronze_schema", dying)
        assert "killed before the commit" in _failure(source)
    source.sql("INSERT INTO S.customers VALUES (51, 'late', 3)")
    source.run()
    ops = source.bronze().filter(pc.field("_op") != "r")
    assert sorted(ops["_op"].to_pylist()) == ["c", "d"] + ["u"] * 5  # each change exactly once
    assert source.silver() == source.source_rows()


def test_a_dropped_slot_or_one_moved_elsewhere_is_reported_with_the_fix(source: Source) -> None:
    source.sql("INSERT INTO S.customers SELECT i, 'n', 1 FROM generate_series(1, 20) i")
    source.run()
    source.sql("UPDATE S.customers SET name = 'lost' WHERE id = 1")
    source.sql("SELECT pg_replication_slot_advance(%s, pg_current_wal_lsn())", (source.slot,))
    moved = _failure(source)
    assert f"slot `{source.slot}`" in moved and "consumed elsewhere" in moved and "--full-refresh" in moved

    source.sql("SELECT pg_drop_replication_slot(%s)", (source.slot,))
    gone = _failure(source)
    assert "gone" in gone and "--full-refresh --select bronze.customers" in gone

    renamed = Source(source.schema, source.slot, source.root, _pipeline(source.schema, f"{source.slot}_renamed"))
    assert f"slot `{source.slot}`" in _failure(renamed) and "name the old slot again" in _failure(renamed)

    source.run(full_refresh=True, select="bronze.customers+")
    assert set(source.bronze()["_op"].to_pylist()) == {"r"}  # a new snapshot
    assert source.silver() == source.source_rows()
    source.sql("UPDATE S.customers SET name = 'after' WHERE id = 2")
    source.run()
    assert source.silver() == source.source_rows()


def test_new_and_changed_columns_go_through_the_drift_policy(source: Source) -> None:
    source.sql("INSERT INTO S.customers VALUES (1, 'a', 1)")
    source.run()
    source.sql("ALTER TABLE S.customers ADD COLUMN email text")
    source.sql("INSERT INTO S.customers VALUES (2, 'b', 2, 'b@example.com')")
    records = source.run()
    assert [d.split(": ", 1)[1] for d in records["bronze.customers"].details["schema_drift"]] == ["new column `email`"]
    assert source.bronze().filter(pc.field("id") == "2")["email"].to_pylist() == ["b@example.com"]

    source.sql("ALTER TABLE S.customers ALTER COLUMN amount TYPE numeric(12, 3)")
    source.sql("UPDATE S.customers SET amount = 2.5 WHERE id = 2")
    records = source.run()
    assert [d.split(": ", 1)[1] for d in records["bronze.customers"].details["schema_drift"]] == [
        "`amount` changed from numeric(10,2) to numeric(12,3)"]
    assert source.silver() == source.source_rows()

    strict = _pipeline(source.schema, source.slot, on_drift="fail")
    source.sql("ALTER TABLE S.customers ADD COLUMN phone text")
    source.sql("INSERT INTO S.customers VALUES (3, 'c', 3, NULL, '555')")
    failing = Source(source.schema, source.slot, source.root, strict)
    error = _failure(failing)
    assert "new column `phone`" in error and "on_drift" in error
    assert "phone" not in source.bronze().column_names  # nothing committed, the slot kept the changes
    records = source.run()
    assert "phone" in source.bronze().column_names

    source.sql("ALTER TABLE S.customers DROP COLUMN email")
    source.sql("UPDATE S.customers SET name = 'd' WHERE id = 3")
    records = source.run()
    assert [d.split(": ", 1)[1] for d in records["bronze.customers"].details["schema_drift"]] == [
        "missing column `email`"]
    assert source.bronze().filter(pc.field("name") == "d")["email"].to_pylist() == [None]
    assert source.silver() == source.source_rows()


def test_the_rescue_policy_keeps_a_new_columns_values_in_rescued_data(source: Source) -> None:
    rescuing = Source(source.schema, source.slot, source.root, _pipeline(source.schema, source.slot,
                                                                          on_drift="rescue"))
    source.sql("INSERT INTO S.customers VALUES (1, 'a', 1)")
    rescuing.run()
    source.sql("ALTER TABLE S.customers ADD COLUMN email text")
    source.sql("INSERT INTO S.customers VALUES (2, 'b', 2, 'b@example.com')")
    records = rescuing.run()
    assert records["bronze.customers"].details["schema_drift"]
    bronze = source.bronze()
    assert "email" not in bronze.column_names
    assert bronze.filter(pc.field("id") == "2")["_rescued_data"].to_pylist() == ['{"email":"b@example.com"}']


def test_a_truncate_is_recorded_and_empties_silver(source: Source) -> None:
    source.sql("INSERT INTO S.customers SELECT i, 'n', 1 FROM generate_series(1, 30) i")
    source.run()
    source.sql("DELETE FROM S.customers WHERE id = 1")
    source.sql("TRUNCATE S.customers")
    source.sql("INSERT INTO S.customers VALUES (7, 'after truncate', 7)")
    records = source.run()
    assert records["bronze.customers"].details["truncates"] == 1
    assert source.bronze().filter(pc.field("_op") == "t").num_rows == 1
    assert source.silver() == source.source_rows() == [(7, "after truncate", Decimal("7.00"))]


def test_a_hundred_thousand_changes_in_bounded_batches(source: Source) -> None:
    batched = Source(source.schema, source.slot, source.root,
                     _pipeline(source.schema, source.slot, batch_changes=40_000))
    source.sql("INSERT INTO S.customers SELECT i, 'n', 1 FROM generate_series(1, 10) i")
    batched.run()
    for start in range(0, 100_000, 25_000):
        source.sql(f"INSERT INTO S.customers SELECT i, 'x' || i, i FROM generate_series({start + 11}, {start + 25_010}) i")
    taken = []
    while True:
        records = batched.run()
        taken.append(records["bronze.customers"].details.get("changes", 0))
        if not taken[-1]:
            break
    assert sum(taken) == 100_000 and max(taken) <= 50_000 and len(taken) >= 3
    assert batched.silver() == source.source_rows()


def test_runs_killed_at_random_points_take_every_change_exactly_once(source: Source) -> None:
    """`medallion run` processes killed (SIGKILL) at random points, then a run to completion: every change is in
    bronze once (no position twice, every update counted) and silver equals the source."""
    source.sql("INSERT INTO S.customers SELECT i, 'n', 0 FROM generate_series(1, 200) i")
    source.run()
    chance = random.Random(int(os.environ.get("MEDALLION_TEST_SEED", "7")))
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "MEDALLION_TEST_SOURCE_SCHEMA": source.schema,
                        "MEDALLION_TEST_SOURCE_SLOT": source.slot}
    command = [str(Path(sys.executable).parent / "medallion"), "--root", str(source.root), "--address",
               ray.get_runtime_context().gcs_address, "run", "tests.engine.ingest.pg_pipeline:pipeline"]
    updates = 0
    for _ in range(4):
        source.sql("UPDATE S.customers SET amount = amount + 1 WHERE id <= 60")
        updates += 60
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=chance.uniform(1.0, 6.0))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
    source.run()
    changes = source.bronze().filter(pc.field("_op") != "r")
    assert len(set(changes["_position"].to_pylist())) == changes.num_rows  # no change taken twice
    assert changes.filter(pc.field("_op") == "u").num_rows == updates  # none lost
    assert source.silver() == source.source_rows()


def test_watch_takes_each_change_to_silver_until_stopped(source: Source) -> None:
    source.sql("INSERT INTO S.customers SELECT i, 'n', 1 FROM generate_series(1, 10) i")
    runner = Runner(source.pipeline, settings_at(source.root))
    stop, batches = threading.Event(), []
    watching = threading.Thread(target=runner.watch, args=(0.2, stop), kwargs={"after": batches.append})
    watching.start()

    def caught_up() -> bool:
        return (source.root / "silver" / "customers").exists() and source.silver() == source.source_rows()

    try:
        assert _within(120, caught_up)
        source.sql("UPDATE S.customers SET name = 'watched' WHERE id = 3")
        source.sql("DELETE FROM S.customers WHERE id = 4")
        assert _within(120, caught_up)
    finally:
        stop.set()
        watching.join(timeout=120)
    assert not watching.is_alive() and all(b.succeeded for b in batches)
    assert ("3", "watched") in {(r["id"], r["name"]) for r in source.bronze().to_pylist()}


def _within(seconds: float, condition: Callable[[], bool]) -> bool:
    """Whether `condition` holds at some check before `seconds` pass (checked every 0.2 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_a_source_declared_wrongly_or_unreachable_is_one_clear_error(source: Source,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PipelineDefinitionError, match="schema.table"):
        PostgresSource("a.b.c", dsn_env=DSN_ENV)
    with pytest.raises(PipelineDefinitionError, match="slot `Bad-Slot`"):
        PostgresSource("customers", dsn_env=DSN_ENV, slot="Bad-Slot")
    missing = Source(source.schema, source.slot, source.root, _pipeline(source.schema, source.slot))
    working = os.environ[DSN_ENV]
    monkeypatch.delenv(DSN_ENV)
    assert f"environment variable {DSN_ENV}" in _failure(missing)
    secret = "s3cr3t-canary-password"
    monkeypatch.setenv(DSN_ENV, f"postgresql://root:{secret}@127.0.0.1:1/test")
    refused = _failure(missing)
    assert "connecting to its database failed" in refused and secret not in refused
    monkeypatch.setenv(DSN_ENV, working)
    source.sql("CREATE TABLE S.keyless (id int)")
    keyless = Source(source.schema, source.slot, source.root / "keyless", Pipeline("keyless"))
    keyless.pipeline.ingest("bronze.customers", PostgresSource(f"{source.schema}.keyless", dsn_env=DSN_ENV,
                                                               slot=f"{source.slot}_k"))
    assert "no primary key" in _failure(keyless)
    on_iceberg = Source(source.schema, source.slot, source.root / "iceberg", Pipeline("on_iceberg"))
    on_iceberg.pipeline.ingest("bronze.customers", PostgresSource(f"{source.schema}.customers", dsn_env=DSN_ENV,
                                                                  slot=f"{source.slot}_i"), table_format="iceberg")
    assert "is a Delta table" in _failure(on_iceberg)


def test_medallion_sources_lists_each_position_and_lag_and_the_fix_for_a_lost_slot(
        source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDALLION_TEST_SOURCE_SCHEMA", source.schema)
    monkeypatch.setenv("MEDALLION_TEST_SOURCE_SLOT", source.slot)

    def sources(*options: str) -> tuple[int, list[str]]:
        done = CliRunner().invoke(main, ["--root", str(source.root), "sources", "tests.engine.ingest.pg_pipeline:pipeline",
                                         *options], env={"COLUMNS": "250"})
        row = next(line for line in done.output.splitlines() if "bronze.customers" in line)
        return done.exit_code, [cell.strip() for cell in row.split("│")[1:-1]]

    assert sources()[1][3:6] == ["no snapshot yet", "?", "no slot"]
    planned = CliRunner().invoke(main, ["--root", str(source.root), "plan", "tests.engine.ingest.pg_pipeline:pipeline"])
    assert planned.exit_code == 0 and f"a new snapshot of PostgreSQL table `{source.schema}.customers`" in " ".join(
        planned.output.split())
    source.sql("INSERT INTO S.customers VALUES (1, 'a', 1)")
    source.run()
    position = source.bronze()["_lsn"][0].as_py()
    code, cells = sources("--check")
    assert code == 0 and cells[1] == "postgres" and cells[3] == position and cells[5] in ("ok", "behind")
    source.sql("INSERT INTO S.customers SELECT i, 'b', 2 FROM generate_series(2, 500) i")
    assert sources()[1][5] == "behind" and int(sources()[1][4].split()[0]) > 0
    source.sql("SELECT pg_drop_replication_slot(%s)", (source.slot,))
    code, cells = sources("--check")
    assert code == 1 and cells[5] == "slot gone" and "--full-refresh" in cells[6]
    [state] = source_states(source.pipeline, settings_at(source.root))
    assert state.fix == "medallion run --full-refresh --select bronze.customers+"


def test_before_values_are_the_key_by_default_and_the_whole_old_row_with_replica_identity_full(source: Source) -> None:
    source.sql("INSERT INTO S.customers VALUES (1, 'old', 1.50), (2, 'two', 2)")
    source.run()
    source.sql("UPDATE S.customers SET name = 'new' WHERE id = 1")
    source.sql("DELETE FROM S.customers WHERE id = 2")
    source.sql("ALTER TABLE S.customers REPLICA IDENTITY FULL")
    source.sql("UPDATE S.customers SET name = 'newer' WHERE id = 1")
    source.run()
    changes = source.bronze().filter(pc.field("_op") != "r").sort_by("_position").to_pylist()
    assert [(c["_op"], c["id"], c["name"], c["_before"]) for c in changes] == [
        ("u", "1", "new", None),  # the default identity sends no old row for an update that keeps its key
        ("d", "2", None, '{"id":"2"}'),
        ("u", "1", "newer", '{"id":"1","name":"new","amount":"1.50"}'),
    ]
    assert all(c["_commit_time"] is not None and c["_lsn"].count("/") == 1 for c in changes)
    assert source.silver() == source.source_rows()


def test_wal_of_other_tables_is_released_by_an_empty_commit_once_it_passes_the_threshold(source: Source) -> None:
    releasing = Source(source.schema, source.slot, source.root,
                       _pipeline(source.schema, source.slot, release_wal_bytes=256 * 1024))
    source.sql("INSERT INTO S.customers VALUES (1, 'a', 1)")
    releasing.run()
    version = DeltaTable(str(source.root / "bronze" / "customers")).version()
    source.sql("CREATE TABLE S.other (id int PRIMARY KEY, padding text)")
    source.sql("INSERT INTO S.other SELECT i, repeat('x', 100) FROM generate_series(1, 5000) i")  # about 1 MB of WAL
    records = releasing.run()
    assert records["bronze.customers"].status == "unchanged" and records["bronze.customers"].details["changes"] == 0
    bronze = DeltaTable(str(source.root / "bronze" / "customers"))
    assert bronze.version() == version + 1 and bronze.to_pyarrow_table().num_rows == 1  # an empty commit
    confirmed = source.sql("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                           (source.slot,))[0][0]
    assert confirmed == records["bronze.customers"].details["position"]  # the slot released the WAL up to it
    source.sql("UPDATE S.customers SET name = 'b' WHERE id = 1")
    releasing.run()
    assert releasing.silver() == source.source_rows()


def test_a_slot_holding_back_more_wal_than_the_server_keeps_for_certain_is_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    definition = build("public", "medallion_test_lag").tables["bronze.customers"]
    assert isinstance(definition.source, PostgresSource)
    assert ingest_database._lagging(definition, definition.source, SlotState(100, 5_000, "reserved")) == {}
    with caplog.at_level("WARNING", logger="engine.runner"):
        noted = ingest_database._lagging(definition, definition.source, SlotState(100, 5_000, "unreserved"))
    assert noted == {"slot_wal_status": "unreserved", "slot_lag_bytes": 4_900}
    assert "max_slot_wal_keep_size" in caplog.text and "medallion_test_lag" in caplog.text
