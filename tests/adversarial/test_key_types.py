"""Keys of mixed types pushed through every shuffle of the engine: co-partitioned joins, map_partitions, and the
hash buckets of the distributed merge, each checked against an independent recomputation with polars or
deltalake on the same data cast to one type."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import ray
import ray.data
from deltalake import DeltaTable

from engine import partitioning
from engine.errors import KeyMismatch
from engine.kinds import Merge
from engine.partitioning import co_partition, map_partitions
from engine.tables import delta_merge
from engine.tables.distributed_merge import merge_distributed

pytestmark = [pytest.mark.adversarial, pytest.mark.usefixtures("ray_local")]

INTEGERS = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]
STRINGS = [pa.string(), pa.large_string()]
"""String types a Ray dataset holds (`ray.data.from_arrow` rejects string views; merges take them, below)."""


def keys(rng: np.random.Generator, size: int, data_type: pa.DataType) -> pa.Array:
    """`size` keys of 0..119 (they fit every integer type) in `data_type`, about one in twenty null."""
    values = rng.integers(0, 120, size)
    nulls = rng.random(size) < 0.05
    if pa.types.is_integer(data_type):
        return pa.array(values, data_type, mask=nulls)
    return pa.array([f"ключ-{v}" if v % 7 else "" for v in values], pa.string(), mask=nulls).cast(data_type)


def blocks(table: pa.Table, count: int) -> ray.data.Dataset:
    """`table` as a dataset of `count` blocks."""
    size = -(-table.num_rows // count)
    return ray.data.from_arrow([table.slice(start, size) for start in range(0, table.num_rows, size)])


def collect(dataset: ray.data.Dataset) -> pl.DataFrame:
    frames = [pl.from_arrow(block) for block in ray.get(dataset.to_arrow_refs()) if block.num_rows]
    return pl.concat(frames) if frames else pl.DataFrame()


def join_cast(left: pa.Table, right: pa.Table, common: dict[str, Any]) -> pa.Table:
    """Inner join on the key columns of `common`, both sides cast to those types, null keys equal."""
    frames = [pl.from_arrow(side).cast(common) for side in (left, right)]
    return frames[0].join(frames[1], on=list(common), how="inner", nulls_equal=True).to_arrow()


def ordered(frame: pl.DataFrame) -> list[tuple[Any, ...]]:
    return sorted(frame.rows(), key=repr)


@pytest.mark.parametrize("left_type", INTEGERS, ids=str)
def test_co_partitioned_join_of_mixed_integer_widths_finds_every_match(left_type: pa.DataType) -> None:
    """README: tables are "joined and aggregated into gold" — a join of an input keyed in `left_type` with one
    keyed in each other integer type (nulls included) meets every match that one type would."""
    rng = np.random.default_rng(len(str(left_type)))
    for right_type in INTEGERS:
        left = pa.table({"k": keys(rng, 400, left_type), "l": np.arange(400)})
        right = pa.table({"k": keys(rng, 300, right_type), "r": np.arange(300)})
        common = {"k": pl.Int64}
        result = collect(co_partition({"left": blocks(left, 3), "right": blocks(right, 2)}, ["k"], join_cast,
                                      num_partitions=8, fn_kwargs={"common": common}))
        expected = pl.from_arrow(join_cast(left, right, common))
        assert expected.height > 1000
        assert ordered(result) == ordered(expected), (left_type, right_type)


@pytest.mark.parametrize("left_type", STRINGS, ids=str)
def test_co_partitioned_join_of_string_variants_and_composite_keys_finds_every_match(left_type: pa.DataType
                                                                                      ) -> None:
    """README: tables are "joined and aggregated into gold" — string and large string keys (empty and non-ASCII
    strings, nulls), alone and beside an integer key of another width, meet as one type would."""
    rng = np.random.default_rng(3)
    for right_type in STRINGS:
        left = pa.table({"s": keys(rng, 300, left_type), "i": keys(rng, 300, pa.int16()), "l": np.arange(300)})
        right = pa.table({"s": keys(rng, 300, right_type), "i": keys(rng, 300, pa.uint32()), "r": np.arange(300)})
        for on in (["s"], ["s", "i"]):
            common = {"s": pl.String, "i": pl.Int64} if on == ["s", "i"] else {"s": pl.String}
            result = collect(co_partition({"left": blocks(left, 2), "right": blocks(right, 3)}, on, join_cast,
                                          num_partitions=5, fn_kwargs={"common": common}))
            expected = pl.from_arrow(join_cast(left, right, common))
            assert expected.height > 0
            assert ordered(result) == ordered(expected), (left_type, right_type, on)


def test_co_partitioned_join_of_timestamps_in_different_units_and_dates_finds_every_match() -> None:
    """README: tables are "joined and aggregated into gold" — the same instants as timestamp[ms] and
    timestamp[us, UTC], and the same days as date32 and date64, meet."""
    start = dt.datetime(2026, 1, 1)
    instants = [start + dt.timedelta(milliseconds=int(n) * 1500) for n in range(200)]
    days = [dt.date(2026, 1, 1) + dt.timedelta(days=n % 40) for n in range(200)]
    left = pa.table({"at": pa.array(instants, pa.timestamp("ms")), "day": pa.array(days, pa.date32()),
                     "l": np.arange(200)})
    right = pa.table({"at": pa.array(instants[::-1], pa.timestamp("us")).cast(pa.timestamp("us", "UTC")),
                      "day": pa.array(days[::-1], pa.date64()), "r": np.arange(200)})
    common = {"at": pl.Datetime("us"), "day": pl.Date}

    def join(left: pa.Table, right: pa.Table) -> pa.Table:
        frames = [pl.from_arrow(side).with_columns(pl.col("at").dt.replace_time_zone(None)).cast(common)
                  for side in (left, right)]
        return frames[0].join(frames[1], on=list(common), how="inner").to_arrow()

    result = collect(co_partition({"left": blocks(left, 2), "right": blocks(right, 2)}, ["at", "day"], join,
                                  num_partitions=6))
    expected = pl.from_arrow(join(left, right))
    assert expected.height == 200
    assert ordered(result) == ordered(expected)


def test_map_partitions_over_blocks_of_different_key_types_sees_every_key_once(monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    """README: keyed gold tables are built per entity ("joined and aggregated into gold") — one dataset whose
    blocks carry the key as int8, int32, uint16 and int64, each block split by its own task, gives each key's
    rows to exactly one call."""
    monkeypatch.setattr(partitioning, "SPLIT_TASK_BYTES", 1)
    rng = np.random.default_rng(11)
    parts = [pa.table({"k": keys(rng, 250, data_type), "v": np.ones(250, np.int64)})
             for data_type in (pa.int8(), pa.int32(), pa.uint16(), pa.int64())]

    def count(table: pa.Table) -> pa.Table:
        frame = pl.from_arrow(table).with_columns(pl.col("k").cast(pl.Int64))
        return frame.group_by("k").agg(pl.col("v").sum()).to_arrow()

    dataset = ray.data.from_arrow(parts[0]).union(*[ray.data.from_arrow(part) for part in parts[1:]])
    result = collect(map_partitions(dataset, ["k"], count, num_partitions=7))
    expected = pl.concat([pl.from_arrow(part).cast({"k": pl.Int64}) for part in parts]).group_by("k").agg(
        pl.col("v").sum())
    assert result["k"].n_unique() == result.height
    assert ordered(result) == ordered(expected)


@pytest.mark.parametrize("change_type", [pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint32(), pa.uint64()],
                         ids=str)
def test_merges_keyed_in_narrower_integers_update_an_int64_bucketed_table_like_deltalake(
        tmp_path: Path, change_type: pa.DataType) -> None:
    """README: `Merge(keys, sequence_by, delete_when)` — changes whose key arrives in another integer type update
    the stored rows of the same keys in their buckets (no duplicate keys), as deltalake's merge of the same
    changes cast to int64 does; null keys never match."""
    rng = np.random.default_rng(5)
    kind = Merge(keys=["k"], sequence_by="seq", delete_when="op = 'd'", except_columns=["op"])
    reference, bucketed = str(tmp_path / "reference"), str(tmp_path / "bucketed")
    for batch in range(4):
        key_type = pa.int64() if batch == 0 else change_type
        changes = pa.table({"k": keys(rng, 150, key_type), "seq": pa.array(rng.integers(0, 20, 150)),
                            "v": pa.array(rng.integers(0, 1000, 150)),
                            "op": pa.array(rng.choice(["u", "d"], 150, p=[0.8, 0.2]))})
        delta_merge.merge_changes(reference, changes.cast(changes.schema.set(0, pa.field("k", pa.int64()))), kind,
                            metadata={})
        merge_distributed(bucketed, "silver.t", changes, kind, metadata={}, buckets=8)
        stored = pl.from_arrow(DeltaTable(bucketed).to_pyarrow_table())
        assert stored.filter(pl.col("k").is_not_null())["k"].is_duplicated().sum() == 0
        assert ordered(stored) == ordered(pl.from_arrow(DeltaTable(reference).to_pyarrow_table())), batch


@pytest.mark.parametrize("change_type", [pa.large_string(), pa.string_view()], ids=str)
def test_merges_keyed_in_string_variants_update_a_string_bucketed_table_like_deltalake(
        tmp_path: Path, change_type: pa.DataType) -> None:
    """README: `Merge(keys, sequence_by, delete_when)` — changes keyed in large strings or string views update
    the rows stored under the same string keys, as deltalake's merge does."""
    rng = np.random.default_rng(9)
    kind = Merge(keys=["k"], sequence_by="seq")
    reference, bucketed = str(tmp_path / "reference"), str(tmp_path / "bucketed")
    for batch in range(3):
        key_type = pa.string() if batch == 0 else change_type
        changes = pa.table({"k": keys(rng, 120, key_type), "seq": pa.array(rng.integers(0, 20, 120)),
                            "v": pa.array(rng.integers(0, 1000, 120))})
        delta_merge.merge_changes(reference, changes.cast(changes.schema.set(0, pa.field("k", pa.string()))), kind,
                            metadata={})
        merge_distributed(bucketed, "silver.t", changes, kind, metadata={}, buckets=4)
        stored = pl.from_arrow(DeltaTable(bucketed).to_pyarrow_table())
        assert stored.filter(pl.col("k").is_not_null())["k"].is_duplicated().sum() == 0
        assert ordered(stored) == ordered(pl.from_arrow(DeltaTable(reference).to_pyarrow_table())), batch


def test_keys_that_never_compare_equal_are_refused_by_every_shuffle(tmp_path: Path) -> None:
    """README: tables are "joined and aggregated into gold" and merged by `Merge(keys, ...)` — an integer key
    against a string key (or a float, or a key column one input lacks) is refused naming both inputs, the
    column and both types, instead of silently matching nothing."""
    numbers = pa.table({"k": pa.array([1, 2, 3], pa.int32()), "v": [1, 2, 3]})
    texts = pa.table({"k": pa.array(["1", "2", "3"], pa.large_string()), "w": [1, 2, 3]})
    floats = pa.table({"k": pa.array([1.0, 2.0, 3.0]), "w": [1, 2, 3]})
    for other, shown in ((texts, "large_string"), (floats, "double")):
        with pytest.raises(KeyMismatch, match=rf"key column `k` is int32 in input `numbers` but {shown} in input "
                                              r"`other`"):
            co_partition({"numbers": ray.data.from_arrow(numbers), "other": ray.data.from_arrow(other)}, ["k"],
                         lambda numbers, other: numbers, num_partitions=2)
    with pytest.raises(KeyMismatch, match=r"input `other` has no key column `v`"):
        co_partition({"numbers": ray.data.from_arrow(numbers), "other": ray.data.from_arrow(texts)}, ["v"],
                     lambda numbers, other: numbers, num_partitions=2)
    uri = str(tmp_path / "t")
    merge_distributed(uri, "silver.t", numbers, Merge(keys=["k"]), metadata={})
    with pytest.raises(KeyMismatch, match=r"merge into `silver.t`: key column `k` is int32 in table `silver.t` but "
                                          r"large_string in the changes"):
        merge_distributed(uri, "silver.t", texts.rename_columns(["k", "v"]), Merge(keys=["k"]), metadata={})
    assert sorted(DeltaTable(uri).to_pyarrow_table().column("k").to_pylist()) == [1, 2, 3]
