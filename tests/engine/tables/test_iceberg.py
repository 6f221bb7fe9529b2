"""Iceberg as a second table format: the shop pipeline gives the same tables as on Delta, incremental reads,
exactly-once commits, racing writers, merges by key, format mismatches and a PostgreSQL catalog."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
import ray.data
from click.testing import CliRunner
from deltalake import DeltaTable
from deltalake.transaction import Transaction
from polars.testing import assert_frame_equal

from engine import SCD2, Append, FileSource, Merge, Overwrite, Pipeline, Runner, load_settings
from engine.arrow import to_storage
from engine.catalog import build_catalog
from engine.cli.main import main
from engine.config import Settings
from engine.errors import CommitConflict, PipelineDefinitionError, TableFormatError
from engine.freshness import Freshness
from engine.layout import Layout
from engine.quality.checks import Quality, References
from engine.quality.gate import reference_keys
from engine.runlog import read_records
from engine.staleness import table_freshness
from engine.tables import delta, delta_merge
from engine.tables.files import RollingParquetWriter
from engine.tables.formats import TableFormats
from engine.tables.iceberg import IcebergTables, without_metrics
from tests.conftest import require_service, settings_at
from tests.engine.test_runner import land_orders, parse_orders, write_orders
from tests.threads import all_at_once

pytestmark = pytest.mark.usefixtures("ray_local")

VOLATILE = ["_ingested_at", "_run_id", "_source_file"]


def shop(table_format: str) -> Pipeline:
    """The shop pipeline of test_runner: bronze ingest (Append) -> silver Merge -> gold Overwrite."""
    pipeline = Pipeline("shop", table_format=table_format)
    pipeline.ingest("bronze.orders", FileSource("orders", "jsonl"))

    @pipeline.table("silver.orders", kind=Merge(keys=["order_id"], sequence_by="updated_at"), incremental=True)
    def orders(bronze_orders: ray.data.Dataset) -> ray.data.Dataset:
        return bronze_orders.map_batches(parse_orders, batch_format="pyarrow")

    @pipeline.table("gold.status_counts", kind=Overwrite())
    def status_counts(silver_orders: ray.data.Dataset) -> ray.data.Dataset:
        return silver_orders.map_batches(
            lambda t: pl.from_arrow(t).group_by("status").len().to_arrow(), batch_format="pyarrow", batch_size=None)

    return pipeline


def more_landing(root: Path) -> None:
    write_orders(root, "orders-3.jsonl", [
        {"order_id": 2, "status": "shipped", "updated_at": "2026-01-03T00:00:00Z"},
        {"order_id": 3, "status": "placed", "updated_at": "2026-01-03T00:00:00Z"},
        {"order_id": 1, "status": "placed", "updated_at": "2025-12-31T00:00:00Z"},
    ])


def rows(settings: Settings, table: str, table_format: str) -> pl.DataFrame:
    uri = Layout.at(settings.storage.root).table(table)
    store = TableFormats(settings).store(table_format)
    blocks = ray.get(store.read_dataset(uri, table).to_arrow_refs())
    frame = pl.from_arrow(pa.concat_tables([to_storage(b) for b in blocks], promote_options="permissive"))
    assert isinstance(frame, pl.DataFrame)
    frame = frame.drop([c for c in VOLATILE if c in frame.columns])
    return frame.select(sorted(frame.columns)).sort(sorted(frame.columns), nulls_last=True)


def record(result: Any, table: str) -> Any:
    return next(r for r in result.records if r.table == table)


def test_shop_pipeline_on_iceberg_matches_delta_and_reads_incrementally(tmp_path: Path) -> None:
    roots = {f: tmp_path / f for f in ("delta", "iceberg")}
    settings = {f: settings_at(root) for f, root in roots.items()}
    for root in roots.values():
        land_orders(root)
    first = {f: Runner(shop(f), settings[f]).run() for f in roots}
    assert all(r.succeeded for r in first.values()), {f: [x.error for x in r.records] for f, r in first.items()}
    assert (roots["iceberg"] / "_meta" / "iceberg" / "catalog.db").is_file()
    assert not (roots["iceberg"] / "silver" / "orders" / "_delta_log").exists()
    for table in ("bronze.orders", "silver.orders", "gold.status_counts"):
        assert_frame_equal(rows(settings["iceberg"], table, "iceberg"), rows(settings["delta"], table, "delta"),
                           check_dtypes=False)
        assert record(first["iceberg"], table).output_version == record(first["delta"], table).output_version == 0
    assert (record(first["iceberg"], "silver.orders").rows_in, record(first["iceberg"], "silver.orders").rows_written,
            record(first["iceberg"], "silver.orders").rows_quarantined) == (5, 2, 1)

    for root in roots.values():
        more_landing(root)
    second = {f: Runner(shop(f), settings[f]).run() for f in roots}
    for table_format, result in second.items():
        assert result.succeeded, [r.error for r in result.records]
        silver = record(result, "silver.orders")
        assert silver.rows_in == 3, table_format
        assert silver.input_versions == {"bronze.orders": 1}
        records = read_records(Layout.at(str(roots[table_format])).runs())
        assert records.filter(pl.col("table") == "bronze.orders")["output_version"].to_list() == [0, 1]
    for table in ("bronze.orders", "silver.orders", "gold.status_counts"):
        assert_frame_equal(rows(settings["iceberg"], table, "iceberg"), rows(settings["delta"], table, "delta"),
                           check_dtypes=False)
    silver = rows(settings["iceberg"], "silver.orders", "iceberg")
    assert silver.sort("order_id")["status"].to_list() == ["paid", "shipped", "placed"]
    merge = json.loads(read_records(Layout.at(str(roots["iceberg"])).runs()).filter(
        pl.col("table") == "silver.orders")["details"][-1])["merge"]
    assert (merge["num_target_rows_inserted"], merge["num_target_rows_updated"]) == (1, 1)

    third = Runner(shop("iceberg"), settings["iceberg"]).run()
    assert [r.status for r in third.records] == ["unchanged"] * 3
    iceberg = IcebergTables(str(roots["iceberg"]))
    history = iceberg.history(str(roots["iceberg"] / "silver" / "orders"), "silver.orders")
    assert [h["version"] for h in history] == [1, 0]
    assert history[0]["medallion.run_id"] == second["iceberg"].run_id
    assert history[0]["medallion.input_versions"] == {"bronze.orders": 1}

    root = str(roots["iceberg"])
    status = CliRunner().invoke(main, ["--root", root, "status"])
    assert status.exit_code == 0, status.output
    lines = {line.split()[1]: line.split() for line in status.output.splitlines() if "." in line and "│" in line}
    assert lines["silver.orders"][3:5] == ["1", "│"] and lines["silver.orders"][5] == "3"
    assert "quarantine.silver.orders" in lines
    shown = CliRunner().invoke(main, ["--root", root, "history", "silver.orders"])
    assert shown.exit_code == 0, shown.output
    assert "OVERWRITE" in shown.output and "APPEND" in shown.output and second["iceberg"].run_id in shown.output
    old = CliRunner().invoke(main, ["--root", root, "show", "silver.orders", "--as-of", "0"])
    assert old.exit_code == 0, old.output
    assert "silver.orders v0, first 2 rows" in old.output and "shipped" not in old.output


def staged(folder: Path, table: pa.Table, prefix: str) -> list[Any]:
    writer = RollingParquetWriter(str(folder), settings_at(folder).storage, prefix)
    writer.write(table)
    return writer.close()


def orders_batch(ids: list[int]) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()), "status": pa.array(["new"] * len(ids))})


def test_a_repeated_commit_of_the_same_batch_is_refused(tmp_path: Path) -> None:
    tables = IcebergTables(str(tmp_path))
    uri = f"{tmp_path}/silver/orders"
    batch = Transaction("medallion/shop/silver.orders", 1)
    files = staged(Path(uri), orders_batch([1, 2]), "a")
    assert tables.commit_files(uri, files, mode="append", metadata={"run_id": "r1"}, transaction=batch) == 0
    again = staged(Path(uri), orders_batch([1, 2]), "b")
    with pytest.raises(CommitConflict, match="batch 1 of `medallion/shop/silver.orders` was already committed"):
        tables.commit_files(uri, again, mode="append", metadata={"run_id": "r2"}, transaction=batch)
    assert tables.row_count(uri, "silver.orders") == 2
    assert tables.next_transaction(uri, batch.app_id).version == 2
    assert tables.latest_version(uri) == 0


@pytest.fixture
def racing_commits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Makes the first commit of each of two threads wait for the other, so both build on the same table."""
    from pyiceberg.table import Transaction as IcebergTransaction

    barrier, seen, calls = threading.Barrier(2, timeout=30), threading.local(), []
    original = IcebergTransaction.commit_transaction

    def commit(self: IcebergTransaction) -> Any:
        calls.append(threading.current_thread().name)
        if not getattr(seen, "waited", False):
            seen.waited = True
            barrier.wait()
        return original(self)

    monkeypatch.setattr(IcebergTransaction, "commit_transaction", commit)
    yield calls


def test_two_racing_appends_both_land(tmp_path: Path, racing_commits: list[str]) -> None:
    uri = f"{tmp_path}/bronze/events"
    IcebergTables(str(tmp_path)).commit_files(uri, staged(Path(uri), orders_batch([0]), "base"), mode="append",
                                              metadata={})
    batches = {name: staged(Path(uri), orders_batch(ids), name) for name, ids in (("a", [1, 2]), ("b", [3]))}
    errors: list[BaseException] = []

    def append(name: str) -> None:
        try:
            IcebergTables(str(tmp_path)).commit_files(uri, batches[name], mode="append", metadata={"writer": name},
                                                      transaction=Transaction(f"app/{name}", 1))
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=append, args=(name,), name=name) for name in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(racing_commits) == 3, "one writer lost the race and committed again"
    tables = IcebergTables(str(tmp_path))
    assert sorted(tables.read_table(uri, "bronze.events")["id"].to_pylist()) == [0, 1, 2, 3]
    assert [h["version"] for h in tables.history(uri, "bronze.events")] == [2, 1, 0]


def test_two_writers_racing_with_the_same_batch_commit_it_once(tmp_path: Path, racing_commits: list[str]) -> None:
    uri = f"{tmp_path}/bronze/events"
    batches = {name: staged(Path(uri), orders_batch([1]), name) for name in ("a", "b")}
    IcebergTables(str(tmp_path)).commit_files(uri, staged(Path(uri), orders_batch([0]), "base"), mode="append",
                                              metadata={})
    outcomes: dict[str, Any] = {}

    def append(name: str) -> None:
        try:
            outcomes[name] = IcebergTables(str(tmp_path)).commit_files(
                uri, batches[name], mode="append", metadata={}, transaction=Transaction("app", 1))
        except CommitConflict as err:
            outcomes[name] = err

    threads = [threading.Thread(target=append, args=(name,), name=name) for name in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(type(o).__name__ for o in outcomes.values()) == ["CommitConflict", "int"]
    assert sorted(IcebergTables(str(tmp_path)).read_table(uri, "bronze.events")["id"].to_pylist()) == [0, 1]


def changes_batch(rows: list[tuple[int | None, str, int | None, str]]) -> pa.Table:
    ids, status, seq, op = zip(*rows)
    return pa.table({"id": pa.array(ids, pa.int64()), "status": pa.array(status), "seq": pa.array(seq, pa.int64()),
                     "op": pa.array(op)})


def test_merge_keeps_the_latest_change_per_key_like_delta(tmp_path: Path) -> None:
    kind = Merge(keys=["id"], sequence_by="seq", delete_when="op = 'd'", except_columns=["op"])
    batches = [
        changes_batch([(1, "a", 1, "u"), (2, "a", 1, "u"), (3, "a", 1, "u"), (None, "n", 1, "u")]),
        changes_batch([(1, "b", 2, "u"), (1, "c", 3, "u"), (2, "old", 0, "u"), (3, "gone", 2, "d"),
                       (4, "new", 1, "u"), (5, "never", 1, "d"), (2, "nul", None, "u")]),
        changes_batch([(1, "late", 2, "u"), (6, "x", 1, "u")]),
    ]
    tables = IcebergTables(str(tmp_path / "ice"))
    ice, dl = f"{tmp_path}/ice/silver/t", f"{tmp_path}/dl/silver/t"
    outcomes = []
    for number, batch in enumerate(batches, start=1):
        outcomes.append(tables.merge_changes(ice, "silver.t", batch, kind, metadata={"batch": number},
                                             transaction=Transaction("app", number)))
        delta_merge.merge_changes(dl, batch, kind, metadata={"batch": number})
    expected = pl.from_arrow(DeltaTable(dl).to_pyarrow_table()).sort("id", nulls_last=True)
    assert_frame_equal(pl.from_arrow(tables.read_table(ice, "silver.t")).sort("id", nulls_last=True), expected)
    assert [o.version for o in outcomes] == [0, 1, 2]
    assert outcomes[1].duplicates == 2
    assert (outcomes[1].metrics["num_target_rows_updated"], outcomes[1].metrics["num_target_rows_deleted"],
            outcomes[1].metrics["num_target_rows_inserted"]) == (1, 1, 1)
    assert outcomes[2].metrics["num_target_files_removed"] == 0, "inserts only and a stale update: an append"
    assert [h["operation"] for h in tables.history(ice, "silver.t")] == ["APPEND", "OVERWRITE", "APPEND"]
    with pytest.raises(CommitConflict):
        tables.merge_changes(ice, "silver.t", batches[2], kind, metadata={}, transaction=Transaction("app", 3))


def test_a_delta_table_where_iceberg_is_declared_fails_clearly(tmp_path: Path) -> None:
    land_orders(tmp_path)
    assert Runner(shop("delta"), settings_at(tmp_path)).run().succeeded
    write_orders(tmp_path, "orders-9.jsonl", [{"order_id": 9, "status": "x", "updated_at": "2026-01-09T00:00:00Z"}])
    result = Runner(shop("iceberg"), settings_at(tmp_path)).run()
    bronze = record(result, "bronze.orders")
    assert bronze.status == "failed"
    assert "table `bronze.orders` is declared `iceberg` but" in bronze.error
    assert "holds a delta table" in bronze.error
    assert [r.status for r in result.records[1:]] == ["skipped", "skipped"]
    assert delta.latest_version(Layout.at(str(tmp_path)).table("bronze.orders")) == 0


def test_table_format_is_declared_per_pipeline_or_per_table() -> None:
    with pytest.raises(PipelineDefinitionError, match="table format `hudi` is unknown; use one of `delta`, `iceberg`"):
        Pipeline("p", table_format="hudi")
    pipeline = Pipeline("p", table_format="iceberg")
    pipeline.ingest("bronze.a", FileSource("a", "csv"), table_format="delta")

    @pipeline.table("silver.a", kind=Append())
    def a(bronze_a: ray.data.Dataset) -> ray.data.Dataset:
        return bronze_a

    assert {n: d.table_format for n, d in pipeline.tables.items()} == {"bronze.a": "delta", "silver.a": "iceberg"}
    with pytest.raises(PipelineDefinitionError, match="table `silver.h`: table format `ICEBERG` is unknown"):
        pipeline.table("silver.h", table_format="ICEBERG")(a)
    pipeline.table("silver.s", kind=SCD2(keys=["k"], sequence_by="t"), pii={"email": "tokenize"})(a)
    assert pipeline.tables["silver.s"].table_format == "iceberg"
    plain = Pipeline("plain")
    plain.table("silver.a", kind=Append())(a)
    assert plain.table_format is None and plain.tables["silver.a"].table_format is None


def test_the_catalog_uri_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDALLION__STORAGE__ICEBERG_CATALOG_URI", "postgresql+psycopg://u:pw@db/cat")
    settings = load_settings()
    assert settings.storage.iceberg_catalog_uri is not None
    assert "pw" not in repr(settings) and "pw" not in str(settings.model_dump())
    assert settings.storage.iceberg_catalog_uri.get_secret_value().endswith("@db/cat")


@pytest.mark.services
def test_shop_pipeline_on_a_postgresql_catalog(tmp_path: Path, postgres_catalog: str) -> None:
    land_orders(tmp_path)
    settings = load_settings(overrides={"storage": {"root": str(tmp_path), "iceberg_catalog_uri": postgres_catalog}})
    result = Runner(shop("iceberg"), settings).run()
    assert result.succeeded, [r.error for r in result.records]
    assert not (tmp_path / "_meta" / "iceberg").exists()
    silver = rows(settings, "silver.orders", "iceberg")
    assert silver.sort("order_id")["status"].to_list() == ["paid", "placed"]
    more_landing(tmp_path)
    again = Runner(shop("iceberg"), settings).run()
    assert record(again, "silver.orders").rows_in == 3
    import psycopg

    with psycopg.connect(postgres_catalog.replace("postgresql+psycopg", "postgresql")) as connection:
        stored = connection.execute("SELECT table_namespace, table_name FROM iceberg_tables ORDER BY 1, 2").fetchall()
    assert stored == [("bronze", "orders"), ("gold", "status_counts"), ("silver", "orders")]


def test_an_iceberg_table_where_delta_is_declared_fails_clearly(tmp_path: Path) -> None:
    uri = f"{tmp_path}/silver/orders"
    IcebergTables(str(tmp_path)).commit_files(uri, staged(Path(uri), orders_batch([1]), "a"), mode="append",
                                              metadata={})
    formats = TableFormats(settings_at(tmp_path), {"silver.orders": "delta"})
    with pytest.raises(TableFormatError, match="table `silver.orders` is declared `delta` but .* holds a iceberg"):
        formats.for_table("silver.orders")
    assert TableFormats(settings_at(tmp_path)).for_table("silver.orders").name == "iceberg"


def test_references_to_an_iceberg_table_are_checked(tmp_path: Path) -> None:
    uri = f"{tmp_path}/silver/customers"
    IcebergTables(str(tmp_path)).commit_files(uri, staged(Path(uri), orders_batch([1, 2, 2]), "a"), mode="append",
                                              metadata={})
    quality = Quality(references=[References("customer_id", "silver.customers", key="id")])
    formats = TableFormats(settings_at(tmp_path), {"silver.customers": "iceberg"})
    keys = reference_keys(quality, Layout.at(str(tmp_path)), formats)
    assert sorted(ray.get(keys["customer_id->silver.customers.id"]).to_pylist()) == [1, 2]


def test_an_absent_postgresql_skips_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"PostgreSQL is not reachable on 127.0.0.1:{port}"):
        require_service("127.0.0.1", port, "PostgreSQL")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_service("127.0.0.1", port, "PostgreSQL")


PEOPLE_PII = {"email": "encrypt", "phone": "tokenize", "name": "mask"}
ICEBERG_KEY = "5a" * 32


def people_pipeline() -> Pipeline:
    """Personal data on Iceberg: a merged silver table and an SCD2 history, both with personal columns."""
    pipeline = Pipeline("crm", table_format="iceberg")
    pipeline.ingest("bronze.people", FileSource("people", "jsonl"))

    def people(bronze_people: ray.data.Dataset) -> ray.data.Dataset:
        return bronze_people.map_batches(lambda b: b.select(["id", "email", "phone", "name", "city", "seq"]),
                                         batch_format="pyarrow")

    pipeline.table("silver.people", kind=Merge(keys=["id"], sequence_by="seq"), incremental=True,
                   pii=PEOPLE_PII)(people)
    pipeline.table("gold.people_history", kind=SCD2(keys=["id"], sequence_by="seq", tracked_columns=["city"]),
                   incremental=True, pii=PEOPLE_PII)(people)
    return pipeline


def write_people(root: Path, name: str, people: list[dict[str, Any]]) -> None:
    folder = root / "landing" / "people"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(person) + "\n" for person in people))


def manifest_metrics(tables: IcebergTables, uri: str, table: str) -> list[dict[str, set[str]]]:
    """For every data file entry of every manifest of every snapshot: the columns with bounds and with counts."""
    loaded = tables.open_table(uri, table)
    names = {f.field_id: f.name for f in loaded.schema().fields}
    entries = [entry.data_file for snapshot in loaded.snapshots() for manifest in snapshot.manifests(loaded.io)
               for entry in manifest.fetch_manifest_entry(loaded.io, discard_deleted=False)]
    return [{"bounds": {names[i] for i in [*(f.lower_bounds or {}), *(f.upper_bounds or {})]},
             "counts": {names[i] for i in [*(f.value_counts or {}), *(f.null_value_counts or {})]}} for f in entries]


def test_personal_columns_stay_out_of_iceberg_manifests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.governance.encryption import ENCRYPTED_PROPERTY, ROW_KEY_PROPERTY, ColumnKey

    monkeypatch.setenv("MEDALLION_ENCRYPTION_KEY", ICEBERG_KEY)
    people = [{"id": i, "email": f"p{i}@hidden.example", "phone": f"0770{i:04d}", "name": f"Name{i}",
               "city": "Leeds", "seq": 1} for i in range(10)]
    write_people(tmp_path, "people-1.jsonl", people)
    first = Runner(people_pipeline(), settings_at(tmp_path)).run()
    assert first.succeeded, [r.error for r in first.records if r.error]
    write_people(tmp_path, "people-2.jsonl", [people[1] | {"city": "Hull", "email": "moved@hidden.example", "seq": 2}])
    second = Runner(people_pipeline(), settings_at(tmp_path)).run()
    assert second.succeeded, [r.error for r in second.records if r.error]
    assert record(second, "silver.people").details["merge"]["num_target_files_removed"] == 1

    tables, layout = IcebergTables(str(tmp_path)), Layout.at(str(tmp_path))
    key = ColumnKey.parse(ICEBERG_KEY, "test")
    for table in ("silver.people", "gold.people_history"):
        uri = layout.table(table)
        assert [h["version"] for h in tables.history(uri, table)] == [1, 0]
        metrics = manifest_metrics(tables, uri, table)
        assert len(metrics) >= 3
        assert all(not (m["bounds"] | m["counts"]) & set(PEOPLE_PII) for m in metrics), metrics
        assert all({"id", "city"} <= m["bounds"] for m in metrics)
        properties = tables.table_properties(uri, table)
        assert properties[ENCRYPTED_PROPERTY] == f"email:{key.key_id}" and properties[ROW_KEY_PROPERTY] == "id"
        assert {properties[f"write.metadata.metrics.column.{c}"] for c in PEOPLE_PII} == {"none"}
        stored = tables.read_table(uri, table)
        assert stored.schema.field("email").type == pa.binary()
        assert all(p.startswith("v1:") for p in stored.column("phone").to_pylist())
    history = tables.read_table(layout.table("gold.people_history"), "gold.people_history")
    assert sorted(r["city"] for r in history.to_pylist() if str(r["id"]) == "1") == ["Hull", "Leeds"]
    shown = CliRunner().invoke(main, ["--root", str(tmp_path), "show", "silver.people", "--decrypt"])
    assert shown.exit_code == 0, shown.output
    assert "moved@hidden.example" in shown.output and "p3@hidden.example" in shown.output


def test_columns_kept_out_of_metrics_later_warn_of_earlier_files(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    tables, uri = IcebergTables(str(tmp_path)), f"{tmp_path}/silver/orders"
    tables.commit_files(uri, staged(Path(uri), orders_batch([1]), "a"), mode="append", metadata={})
    assert not caplog.records
    tables.commit_files(uri, staged(Path(uri), orders_batch([2]), "b"), mode="append", metadata={},
                        table_properties=without_metrics(["status"]))
    assert "columns `status` are kept out of column metrics from this commit on" in caplog.text
    assert "--full-refresh --select silver.orders" in caplog.text
    bounds = {frozenset(m["bounds"]) for m in manifest_metrics(tables, uri, "silver.orders")}
    assert bounds == {frozenset({"id", "status"}), frozenset({"id"})}


def test_freshness_and_catalog_read_an_iceberg_table_as_a_delta_one(tmp_path: Path) -> None:
    """Attacks: "freshness, status and the catalog hold for both formats": the same pipeline on Delta and Iceberg
    gives the same ages, newest values, versions, rows and column types, from each table's own metadata."""
    roots = {f: tmp_path / f for f in ("delta", "iceberg")}
    settings = {f: settings_at(root) for f, root in roots.items()}
    for table_format, root in roots.items():
        land_orders(root)
        assert Runner(shop(table_format), settings[table_format]).run().succeeded
    now = datetime(2026, 1, 2, 6, tzinfo=UTC)
    by_event_time = Freshness(max_age="1h", time_column="updated_at")
    by_commit = Freshness(max_age="1h", partition_column="updated_at", partition_max_age="2d")
    measured = {}
    for table_format, root in roots.items():
        formats = TableFormats(settings[table_format])
        store, uri = formats.for_table("silver.orders"), Layout.at(str(root)).table("silver.orders")
        assert store.name == table_format
        measured[table_format] = (table_freshness(store, uri, "silver.orders", by_event_time, now=now),
                                  table_freshness(store, uri, "silver.orders", by_commit))
    for event_time, commit_age in measured.values():
        assert (event_time.state, event_time.age) == ("late", timedelta(hours=6))
        assert event_time.age_source == "newest updated_at 2026-01-02T00:00:00+00:00"
        assert commit_age.age_source.startswith("data commit v0 at ") and commit_age.partition_age is not None
        assert commit_age.newest_partition == datetime(2026, 1, 2, tzinfo=UTC)
    entries = {f: {e.table: e for e in build_catalog(Layout.at(str(root)), formats=TableFormats(settings[f]))}
               for f, root in roots.items()}
    for table in ("bronze.orders", "silver.orders", "gold.status_counts"):
        delta_entry, iceberg_entry = entries["delta"][table], entries["iceberg"][table]
        assert (iceberg_entry.version, iceberg_entry.rows) == (delta_entry.version, delta_entry.rows) == (0, iceberg_entry.rows)
        assert [c.name for c in iceberg_entry.columns] == [c.name for c in delta_entry.columns]
        if table != "gold.status_counts":  # its count is a uint32, which Iceberg stores as a long
            assert [c.type for c in iceberg_entry.columns] == [c.type for c in delta_entry.columns]
    assert ("updated_at", "timestamp") in [(c.name, c.type) for c in entries["iceberg"]["silver.orders"].columns]
    status = CliRunner().invoke(main, ["--root", str(roots["iceberg"]), "status"])
    assert status.exit_code == 0 and "never built" not in status.output and "silver.orders" in status.output


def test_a_layer_created_by_another_writer_at_the_same_moment_is_no_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two tables of a new layer committed at once (a run builds independent tables together) both race to
    create the layer's namespace; the loser's insert is refused by the catalog, and its table is created all
    the same."""
    from pyiceberg.catalog.sql import SqlCatalog

    from engine.tables.iceberg.catalog import IcebergCatalog

    catalog = IcebergCatalog(str(tmp_path))
    schema = pa.schema([("id", pa.int64())])
    catalog.commit(str(tmp_path / "bronze" / "first"), schema, None, lambda tx, created: None)
    real = SqlCatalog.namespace_exists
    answers = iter([False])  # the check before the insert sees no namespace, as if the other writer were late

    def racing(self: SqlCatalog, namespace: Any) -> bool:
        answer = next(answers, None)
        return real(self, namespace) if answer is None else answer

    monkeypatch.setattr(SqlCatalog, "namespace_exists", racing)
    catalog.commit(str(tmp_path / "bronze" / "second"), schema, None, lambda tx, created: None)

    assert catalog.load(str(tmp_path / "bronze" / "second")) is not None
    assert next(answers, "spent") == "spent"


def test_catalogs_of_a_new_root_opened_at_once_all_open(tmp_path: Path) -> None:
    """Opening a catalog creates its own tables when missing; tables of one run built together open theirs at
    the same moment."""
    from engine.tables.iceberg.catalog import IcebergCatalog

    for attempt in range(3):
        root = str(tmp_path / f"root-{attempt}")
        errors = all_at_once(lambda root=root: IcebergCatalog(root).catalog.list_namespaces(), 8)
        assert not errors, errors[0]
