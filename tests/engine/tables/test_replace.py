"""Replacing a slice of a table in one commit, and the runner's keyed recompute and backfill."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
import ray.data
from deltalake import DeltaTable

from engine import Pipeline, RecomputeKeys, Runner, map_partitions
from engine.config import StorageSettings
from engine.errors import PipelineDefinitionError
from engine.layout import Layout
from engine.tables import delta
from engine.tables.files import DataFile, RollingParquetWriter
from engine.tables.formats import TableFormats, TableStore
from engine.tables.replace import Slice, replace_slice
from tests.conftest import settings_at

pytestmark = pytest.mark.usefixtures("ray_local")

STORAGE = StorageSettings()
DAY = dt.date(2026, 1, 1)


def write_files(uri: str, *tables: pa.Table) -> list[DataFile]:
    files = []
    for table in tables:
        writer = RollingParquetWriter(uri, STORAGE, "t")
        writer.write(table)
        files.extend(writer.close())
    return files


def daily(customers: list[int | None], days: list[int], value: int) -> pa.Table:
    return pa.table({"customer_id": pa.array(customers, pa.int64()),
                     "date": pa.array([DAY + dt.timedelta(days=d) for d in days], pa.date32()),
                     "value": pa.array([value] * len(days), pa.int64())})


def rows(uri: str, store: TableStore | None = None, table: str = "") -> list[tuple[object, ...]]:
    """The rows of a Delta table, or of any table through its `store`, sorted."""
    stored = DeltaTable(uri).to_pyarrow_table() if store is None else store.read_columns(
        uri, table, store.schema(uri, table).names)
    return sorted(pl.from_arrow(stored).rows(), key=lambda r: (r[0] or -1, r[1]))


def test_replace_keys_rewrites_only_files_holding_them_in_one_commit(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    first = write_files(uri, daily([1, 1, 2], [0, 1, 0], 1))
    second = write_files(uri, daily([7, 8, None], [0, 0, 0], 1))
    delta.commit_files(uri, [*first, *second], mode="append", metadata={})
    new = write_files(uri, daily([1], [5], 9))
    outcome = replace_slice(uri, "gold.t", Slice.of_keys(pa.table({"customer_id": pa.array([1, 3], pa.int64())})),
                            new, storage=STORAGE, prefix="r", metadata={"run_id": "r"})
    assert (outcome.version, outcome.rows_removed, outcome.files_rewritten, outcome.files_skipped) == (1, 2, 1, 1)
    assert rows(uri) == [(None, DAY, 1), (1, DAY + dt.timedelta(days=5), 9), (2, DAY, 1), (7, DAY, 1), (8, DAY, 1)]
    assert second[0].path in {p.rsplit("/", 1)[-1] for p in DeltaTable(uri).file_uris()}


def test_replace_a_date_range(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    delta.commit_files(uri, write_files(uri, daily([1, 1, 1], [0, 1, 2], 1)), mode="append", metadata={})
    new = write_files(uri, daily([1, 2], [1, 1], 5))
    replace_slice(uri, "gold.t", Slice.of_range("date", DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=1)),
                  new, storage=STORAGE, prefix="r", metadata={})
    assert [r[2] for r in rows(uri)] == [1, 5, 1, 5]


@pytest.mark.parametrize("where", [
    Slice.of_keys(pa.table({"customer_id": pa.array([1, 3], pa.int64())})),
    Slice.of_range("date", DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=1)),
], ids=["keys", "dates"])
def test_iceberg_replaces_a_slice_and_finds_changed_keys_like_delta(tmp_path: Path, where: Slice) -> None:
    outcomes, stored, changed = {}, {}, {}
    for table_format in ("delta", "iceberg"):
        store = TableFormats(settings_at(tmp_path / table_format)).store(table_format)
        uri = Layout.at(str(tmp_path / table_format)).table("gold.t")
        store.commit_files(uri, write_files(uri, daily([1, 1, 2], [0, 1, 0], 1), daily([7, 8, None], [0, 0, 0], 1)),
                           mode="append", metadata={})
        outcomes[table_format] = store.replace(uri, "gold.t", where, write_files(uri, daily([1, 2], [1, 5], 9)),
                                               storage=STORAGE, prefix="r", metadata={"run_id": "r"},
                                               transaction=None)
        stored[table_format] = rows(uri, store, "gold.t")
        changed[table_format] = sorted(store.changed_keys(uri, "gold.t", 0, 1, ["customer_id"]).column(0).to_pylist())
    assert outcomes["iceberg"] == outcomes["delta"]
    assert outcomes["iceberg"].version == 1 and outcomes["iceberg"].rows_removed > 0
    assert stored["iceberg"] == stored["delta"]
    assert changed["iceberg"] == changed["delta"] and changed["delta"]


def counting_pipeline(calls: list[int], table_format: str = "delta") -> Pipeline:
    pipeline = Pipeline("keyed", table_format=table_format)

    @pipeline.table("silver.visits")
    def visits() -> ray.data.Dataset:
        return ray.data.from_arrow(pa.table({"customer_id": pa.array(VISITS["customer_id"], pa.int64()),
                                             "day": pa.array(VISITS["day"], pa.date32())}))

    @pipeline.table("gold.visits_per_day", kind=RecomputeKeys(keys=["customer_id"], time_column="day"))
    def visits_per_day(silver_visits: ray.data.Dataset) -> ray.data.Dataset:
        calls.append(silver_visits.count())
        return map_partitions(silver_visits, ["customer_id"], lambda t: pl.from_arrow(t).group_by(
            ["customer_id", "day"]).agg(pl.len().cast(pl.Int64).alias("count()")).to_arrow())

    return pipeline


VISITS: dict[str, list] = {}


@pytest.mark.parametrize("table_format", ["delta", "iceberg"])
def test_keyed_recompute_reads_only_affected_keys_and_backfill_replaces_a_range(tmp_path: Path,
                                                                               table_format: str) -> None:
    calls: list[int] = []
    VISITS.update(customer_id=[1, 1, 2, 3], day=[DAY, DAY, DAY, DAY + dt.timedelta(days=1)])
    runner = Runner(counting_pipeline(calls, table_format), settings_at(tmp_path))
    store = runner.formats.for_table("gold.visits_per_day")
    assert runner.run().succeeded and calls == [4]
    VISITS.update(customer_id=[1, 1, 2, 3, 3], day=[DAY, DAY, DAY, DAY + dt.timedelta(days=1), DAY])
    second = runner.run()
    assert second.succeeded and calls == [4, 2]
    assert second.records[-1].details["keys_recomputed"] == 1
    uri = str(tmp_path / "gold" / "visits_per_day")
    assert rows(uri, store, "gold.visits_per_day") == [(1, DAY, 2), (2, DAY, 1), (3, DAY, 1), (3, DAY + dt.timedelta(days=1), 1)]
    VISITS.update(customer_id=[1, 2, 3, 3], day=[DAY, DAY, DAY + dt.timedelta(days=1), DAY])
    runner.run(select="silver.visits")
    backfilled = runner.backfill("gold.visits_per_day", DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=1))
    assert backfilled.succeeded and backfilled.records[0].details["rows_replaced"] == 1
    assert rows(uri, store, "gold.visits_per_day") == [(1, DAY, 2), (2, DAY, 1), (3, DAY, 1), (3, DAY + dt.timedelta(days=1), 1)]
    assert runner.run().succeeded
    assert rows(uri, store, "gold.visits_per_day") == [(1, DAY, 1), (2, DAY, 1), (3, DAY, 1), (3, DAY + dt.timedelta(days=1), 1)]
    with pytest.raises(PipelineDefinitionError, match="no time partition"):
        runner.backfill("silver.visits", DAY, DAY)


RATES = {"rate": 2}


def lookup_pipeline(keys: list[str], calls: list[tuple[int, int]]) -> Pipeline:
    """Per-customer totals of visits times a rate from a one-row lookup table that has no customer column."""
    pipeline = Pipeline("lookup")

    @pipeline.table("silver.visits")
    def visits() -> ray.data.Dataset:
        return ray.data.from_arrow(pa.table({"customer_id": pa.array(VISITS["customer_id"], pa.int64()),
                                             "day": pa.array(VISITS["day"], pa.date32())}))

    @pipeline.table("silver.rates")
    def rates() -> ray.data.Dataset:
        return ray.data.from_arrow(pa.table({"rate": pa.array([RATES["rate"]], pa.int64())}))

    @pipeline.table("gold.totals", kind=RecomputeKeys(keys=keys))
    def totals(silver_visits: ray.data.Dataset, silver_rates: ray.data.Dataset) -> ray.data.Dataset:
        calls.append((silver_visits.count(), silver_rates.count()))
        rate = silver_rates.take_all()[0]["rate"]
        return silver_visits.map_batches(lambda batch: pl.from_arrow(batch).group_by("customer_id").agg(
            (pl.len().cast(pl.Int64) * rate).alias("total")).to_arrow(), batch_format="pyarrow")

    return pipeline


def test_an_input_without_the_keys_is_read_whole_and_its_change_recomputes_every_key(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    VISITS.update(customer_id=[1, 1, 2, 3], day=[DAY] * 4)
    RATES.update(rate=2)
    runner = Runner(lookup_pipeline(["customer_id"], calls), settings_at(tmp_path))
    uri = str(tmp_path / "gold" / "totals")
    assert runner.run().succeeded
    RATES.update(rate=3)
    second = runner.run()
    assert second.succeeded, [r.error for r in second.records]
    assert sorted(DeltaTable(uri).to_pyarrow_table().to_pylist(), key=lambda r: r["customer_id"]) == [
        {"customer_id": 1, "total": 6}, {"customer_id": 2, "total": 3}, {"customer_id": 3, "total": 3}]
    VISITS.update(customer_id=[1, 1, 2, 3, 3], day=[DAY] * 5)
    third = runner.run()
    assert third.succeeded, [r.error for r in third.records]
    assert third.records[-1].details["keys_recomputed"] == 1
    assert calls[-1] == (2, 1)
    assert sorted(DeltaTable(uri).to_pyarrow_table().to_pylist(), key=lambda r: r["customer_id"]) == [
        {"customer_id": 1, "total": 6}, {"customer_id": 2, "total": 3}, {"customer_id": 3, "total": 6}]


def test_keys_no_input_holds_fail_the_table_before_anything_is_written(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    VISITS.update(customer_id=[1, 2], day=[DAY] * 2)
    runner = Runner(lookup_pipeline(["customer"], calls), settings_at(tmp_path))
    result = runner.run()
    [record] = [r for r in result.records if r.table == "gold.totals"]
    assert record.status == "failed" and calls == []
    assert record.error is not None and "\n" not in record.error
    assert "table `gold.totals` recomputes by keys ['customer'], but no input holds them" in record.error
    assert "input `silver.visits` lacks `customer`" in record.error
    assert "input `silver.rates` lacks `customer`" in record.error
    assert not (tmp_path / "gold" / "totals").exists()
