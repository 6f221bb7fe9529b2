"""Tests of engine.partitioning: hash-partitioned map and co-partitioned work on Ray Datasets."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import ray
import ray.data
from ray._common.test_utils import SignalActor

from engine import partitioning
from engine.errors import KeyMismatch
from engine.keyhash import bucket_of
from engine.partitioning import co_partition, coalesce, default_partitions, map_partitions

pytestmark = pytest.mark.usefixtures("ray_local")

KEYS = 23
ROWS_PER_KEY = [k % 4 + 1 for k in range(KEYS)]


def events() -> pa.Table:
    """KEYS customers (`c`), customer k having k % 4 + 1 rows, interleaved; `region` is a second key."""
    customer = [k for round_ in range(4) for k in range(KEYS) if round_ < ROWS_PER_KEY[k]]
    return pa.table({
        "c": pa.array(customer, pa.int64()),
        "region": pa.array(["eu" if k % 2 else "us" for k in customer]),
        "amount": pa.array([float(k) for k in customer]),
    })


def count_per_key(table: pa.Table, keys: list[str] | None = None) -> pa.Table:
    """One row per key of the partition, with its row count."""
    keys = keys or ["c"]
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.group_by(keys).agg(pl.len().cast(pl.Int64).alias("rows")).to_arrow()


def collect(dataset: ray.data.Dataset) -> list[dict[str, Any]]:
    """Every row of `dataset`."""
    return [row for block in ray.get(dataset.to_arrow_refs()) for row in block.to_pylist()]


def check_counts(result: list[dict[str, Any]]) -> None:
    """Every key of `events()` appears exactly once, with all of its rows."""
    seen = Counter(row["c"] for row in result)
    assert set(seen) == set(range(KEYS))
    assert max(seen.values()) == 1
    assert {row["c"]: row["rows"] for row in result} == dict(enumerate(ROWS_PER_KEY))


@pytest.mark.parametrize("partitions", [1, 3, 64])
def test_map_partitions_gives_each_key_to_one_call(partitions: int) -> None:
    result = collect(map_partitions(ray.data.from_arrow(events()), ["c"], count_per_key,
                                    num_partitions=partitions))
    check_counts(result)


def test_map_partitions_over_several_blocks() -> None:
    table = events()
    blocks = [table.slice(0, 10), table.slice(10, 25), table.slice(35)]
    dataset = ray.data.from_arrow(blocks)
    assert dataset.num_blocks() == 3
    check_counts(collect(map_partitions(dataset, ["c"], count_per_key, num_partitions=4)))


def test_map_partitions_after_repartition() -> None:
    dataset = ray.data.from_arrow(events()).repartition(5)
    check_counts(collect(map_partitions(dataset, ["c"], count_per_key, num_partitions=3)))


def test_map_partitions_calls_once_per_partition_with_default_count(monkeypatch: pytest.MonkeyPatch) -> None:
    def tag(table: pa.Table) -> pa.Table:
        return pa.table({"rows": pa.array([table.num_rows], pa.int64())})

    partitions = default_partitions()
    assert partitions == max(2, 2 * int(ray.cluster_resources()["CPU"]))
    small = collect(map_partitions(ray.data.from_arrow(events()), ["c"], tag))
    assert len(small) == 1  # a few kilobytes: one task costs less than several
    monkeypatch.setattr(partitioning, "SMALL_SHUFFLE_BYTES", 0)
    result = collect(map_partitions(ray.data.from_arrow(events()), ["c"], tag))
    assert len(result) == partitions
    assert sum(row["rows"] for row in result) == sum(row["rows"] for row in small) == events().num_rows


def test_the_keys_of_a_small_input_all_reach_the_one_call() -> None:
    def keys(table: pa.Table) -> pa.Table:
        return pa.table({"keys": pa.array([len(set(table.column("c").to_pylist()))], pa.int64())})

    assert collect(map_partitions(ray.data.from_arrow(events()), ["c"], keys)) == [
        {"keys": len(set(events().column("c").to_pylist()))}]


def test_large_inputs_get_a_partition_per_partition_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    def tag(table: pa.Table) -> pa.Table:
        return pa.table({"rows": pa.array([table.num_rows], pa.int64())})

    assert default_partitions(10 * partitioning.PARTITION_BYTES + 1) == max(11, default_partitions())
    monkeypatch.setattr(partitioning, "PARTITION_BYTES", 64)
    monkeypatch.setattr(partitioning, "SMALL_SHUFFLE_BYTES", 0)
    most = default_partitions(events().nbytes)
    assert most > default_partitions()
    result = collect(map_partitions(ray.data.from_arrow(events()), ["c"], tag))
    assert default_partitions() < len(result) <= most
    assert sum(row["rows"] for row in result) == events().num_rows


def test_coalesced_buckets_are_consecutive_and_of_about_equal_size() -> None:
    sizes = np.array([10, 0, 30, 20, 20, 0, 0, 40, 10, 30])
    groups = coalesce(sizes, 4)
    assert [bucket for group in groups for bucket in group] == list(range(10))
    assert [int(sizes[group].sum()) for group in groups] == [40, 40, 40, 40]
    assert coalesce(sizes, 20) == [[bucket] for bucket in range(10)]
    assert coalesce(np.zeros(6, dtype=np.int64), 3) == [[0, 1], [2, 3], [4, 5]]


def test_map_partitions_on_two_keys() -> None:
    def by_both(table: pa.Table) -> pa.Table:
        return count_per_key(table, ["c", "region"])

    result = collect(map_partitions(ray.data.from_arrow(events()), ["c", "region"], by_both, num_partitions=5))
    assert Counter((r["c"], r["region"]) for r in result).most_common(1)[0][1] == 1
    assert {r["c"]: r["rows"] for r in result} == dict(enumerate(ROWS_PER_KEY))


def test_map_partitions_passes_fn_kwargs() -> None:
    def scaled(table: pa.Table, *, factor: float, label: str) -> pa.Table:
        return pa.table({"c": table.column("c"), "amount": pc.multiply(table.column("amount"), factor),
                         "label": pa.array([label] * table.num_rows)})

    result = collect(map_partitions(ray.data.from_arrow(events()), ["c"], scaled, num_partitions=3,
                                    fn_kwargs={"factor": 10.0, "label": "x"}))
    assert len(result) == events().num_rows
    assert all(row["amount"] == row["c"] * 10.0 and row["label"] == "x" for row in result)


def test_co_partition_join_matches_polars() -> None:
    orders = pa.table({"c": pa.array([1, 2, 2, 3, 5, 7, 7, 7], pa.int64()),
                       "order": pa.array([10, 20, 21, 30, 50, 70, 71, 72], pa.int64())})
    customers = pa.table({"c": pa.array([7, 1, 2, 4, 5, 6], pa.int64()),
                          "name": ["g", "a", "b", "d", "e", "f"]})

    def join(orders: pa.Table, customers: pa.Table) -> pa.Table:
        left, right = pl.from_arrow(orders), pl.from_arrow(customers)
        assert isinstance(left, pl.DataFrame) and isinstance(right, pl.DataFrame)
        return left.join(right, on="c", how="inner").to_arrow()

    inputs = {"orders": ray.data.from_arrow([orders.slice(0, 3), orders.slice(3)]),
              "customers": ray.data.from_arrow(customers).repartition(3)}
    result = collect(co_partition(inputs, ["c"], join, num_partitions=4))
    left, right = pl.from_arrow(orders), pl.from_arrow(customers)
    assert isinstance(left, pl.DataFrame) and isinstance(right, pl.DataFrame)
    expected = left.join(right, on="c", how="inner").to_dicts()
    assert sorted(result, key=lambda row: row["order"]) == sorted(expected, key=lambda row: row["order"])
    assert len(result) == 7


def inner_join(orders: pa.Table, customers: pa.Table) -> pa.Table:
    """Orders joined with their customer (inner join), keys compared by value across integer widths."""
    left, right = pl.from_arrow(orders), pl.from_arrow(customers)
    assert isinstance(left, pl.DataFrame) and isinstance(right, pl.DataFrame)
    return left.join(right.with_columns(pl.col("c").cast(left.schema["c"])), on="c", how="inner").to_arrow()


def test_co_partition_meets_every_match_of_int32_and_int64_keys() -> None:
    keys = np.arange(2000)
    orders = pa.table({"c": pa.array(keys, pa.int32()), "order": pa.array(keys * 10, pa.int64())})
    customers = pa.table({"c": pa.array(keys, pa.int64()), "name": pa.array([f"n{k}" for k in keys])})
    inputs = {"orders": ray.data.from_arrow(orders).repartition(4), "customers": ray.data.from_arrow(customers)}
    result = collect(co_partition(inputs, ["c"], inner_join, num_partitions=16))
    assert len(result) == 2000
    assert sorted((row["c"], row["name"]) for row in result) == sorted((int(k), f"n{k}") for k in keys)


def test_co_partition_refuses_an_integer_key_against_a_string_key() -> None:
    orders = pa.table({"c": pa.array([1, 2], pa.int64()), "order": [10, 20]})
    customers = pa.table({"c": ["1", "2"], "name": ["a", "b"]})
    inputs = {"orders": ray.data.from_arrow(orders), "customers": ray.data.from_arrow(customers)}
    with pytest.raises(KeyMismatch, match=r"`c` is int64 in input `orders` but string in input `customers`"):
        co_partition(inputs, ["c"], inner_join, num_partitions=2)
    with pytest.raises(KeyMismatch, match=r"input `customers` has no key column `order`"):
        co_partition(inputs, ["order"], inner_join, num_partitions=2)


def test_co_partition_empty_input_gets_empty_table_with_columns() -> None:
    def describe(left: pa.Table, right: pa.Table) -> pa.Table:
        return pa.table({"left_rows": [left.num_rows], "right_rows": [right.num_rows],
                         "right_columns": [",".join(right.column_names)],
                         "right_type": [str(right.schema.field("name").type)]})

    right = pa.table({"c": pa.array([], pa.int64()), "name": pa.array([], pa.string())})
    inputs = {"left": ray.data.from_arrow(events()), "right": ray.data.from_arrow(right)}
    seen = collect(co_partition(inputs, ["c"], describe, num_partitions=3))
    assert len(seen) == 3
    assert sum(row["left_rows"] for row in seen) == events().num_rows
    assert {row["right_rows"] for row in seen} == {0}
    assert {row["right_columns"] for row in seen} == {"c,name"}
    assert {row["right_type"] for row in seen} == {"string"}


def test_map_partitions_on_empty_input() -> None:
    def columns(table: pa.Table) -> pa.Table:
        return pa.table({"columns": [",".join(table.column_names)], "rows": [table.num_rows]})

    empty = pa.table({"c": pa.array([], pa.int64()), "amount": pa.array([], pa.float64())})
    result = collect(map_partitions(ray.data.from_arrow(empty), ["c"], columns, num_partitions=2))
    assert result == [{"columns": "c,amount", "rows": 0}] * 2


def test_bucket_of_is_deterministic_and_in_range() -> None:
    table = events()
    numbers = bucket_of(table, ["c"], 7)
    assert len(numbers) == table.num_rows
    assert numbers.min() >= 0 and numbers.max() < 7
    assert np.array_equal(numbers, bucket_of(table, ["c"], 7))
    by_key: dict[int, int] = {}
    for customer, number in zip(table.column("c").to_pylist(), numbers.tolist()):
        assert by_key.setdefault(customer, number) == number
    reordered = table.take(pa.array(list(reversed(range(table.num_rows)))))
    assert np.array_equal(bucket_of(reordered, ["c"], 7), numbers[::-1])
    assert len(set(numbers.tolist())) > 1


def test_bucket_of_is_the_same_in_a_worker() -> None:
    table = events()
    remote = ray.get(ray.remote(bucket_of).remote(table, ["c", "region"], 5))
    assert np.array_equal(remote, bucket_of(table, ["c", "region"], 5))


def test_bucket_of_ignores_string_layout() -> None:
    small = pa.table({"k": pa.array(["a", "b", "c"], pa.string())})
    large = pa.table({"k": pa.array(["a", "b", "c"], pa.large_string())})
    assert np.array_equal(bucket_of(small, ["k"], 4), bucket_of(large, ["k"], 4))


def test_inputs_without_any_schema_skip_the_function(ray_local: None) -> None:
    def fail(table: pa.Table) -> pa.Table:
        raise AssertionError("called without data")

    empty = ray.data.from_arrow(pa.table({})).filter(lambda row: False)
    assert map_partitions(empty, ["k"], fail, num_partitions=2).take_all() == []


def test_co_partition_returns_only_once_every_split_has_finished(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = SignalActor.remote()  # type: ignore[attr-defined]
    split = partitioning._split_blocks

    @ray.remote
    def gated_split(keys: list[str], buckets: int, bounds: list[Any], *blocks: pa.Table) -> tuple[Any, ...]:
        ray.get(gate.wait.remote())
        return tuple(ray.get(split.options(num_returns=buckets + 1).remote(keys, buckets, bounds, *blocks)))

    monkeypatch.setattr(partitioning, "_split_blocks", gated_split)
    returned: dict[str, ray.data.Dataset] = {}
    call = threading.Thread(target=lambda: returned.update(
        dataset=map_partitions(ray.data.from_arrow(events()), ["c"], count_per_key, num_partitions=2)))
    call.start()
    call.join(timeout=3)
    assert call.is_alive() and not returned, "co_partition returned while a split task was still running"
    ray.get(gate.send.remote())
    call.join()
    counts = {row["c"]: row["rows"] for row in collect(returned["dataset"])}
    assert counts == dict(enumerate(ROWS_PER_KEY))


def test_a_worker_importing_one_engine_module_loads_neither_the_runner_nor_pandera() -> None:
    heavy = ("engine.runner", "engine.pipeline", "pandera", "deltalake")
    code = f"import sys, engine.columns; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_sliced_and_pandas_blocks_are_split_as_their_rows() -> None:
    def rows(table: pa.Table) -> pa.Table:
        return pa.table({"rows": pa.array([table.num_rows], pa.int64()), "columns": [",".join(table.column_names)]})

    limited = collect(map_partitions(ray.data.from_arrow([events(), events()]).limit(30), ["c"], rows))
    assert sum(row["rows"] for row in limited) == 30
    from_pandas = collect(map_partitions(ray.data.from_pandas(events().to_pandas()), ["c"], rows))
    assert sum(row["rows"] for row in from_pandas) == events().num_rows
    assert {row["columns"] for row in from_pandas} == {"c,region,amount"}


@pytest.mark.parametrize(("split_bytes", "small_bytes", "partitions"),
                         [(2**30, 2**30, None), (40_000, 0, None), (40_000, 2**30, None), (2**30, 2**30, 3)])
def test_a_join_is_the_same_whether_its_inputs_are_split_while_read_at_the_end_or_not_at_all(
    split_bytes: int, small_bytes: int, partitions: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unsplit (one partition of a small input), split as blocks stream in with the rest split at the end, or
    split into a set number of partitions: every match is met once, and a sliced block keeps only its rows."""
    monkeypatch.setattr(partitioning, "SPLIT_TASK_BYTES", split_bytes)
    monkeypatch.setattr(partitioning, "SMALL_SHUFFLE_BYTES", small_bytes)
    draw = np.random.default_rng(5)
    orders = pa.table({"c": draw.integers(0, 400, 6_000), "order": np.arange(6_000)})
    customers = pa.table({"c": np.arange(0, 500, 2), "name": [f"n{i}" for i in range(250)]})
    sliced = ray.data.from_arrow([orders.slice(i, 500) for i in range(0, 6_000, 500)]).limit(5_500)
    result = collect(co_partition({"orders": sliced, "customers": ray.data.from_arrow(customers).repartition(4)},
                                  ["c"], inner_join, num_partitions=partitions))
    expected = pl.from_arrow(inner_join(orders.slice(0, 5_500), customers)).to_dicts()
    assert sorted(result, key=lambda row: row["order"]) == sorted(expected, key=lambda row: row["order"])
