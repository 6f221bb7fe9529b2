"""Tests of the bucketed merge in Ray tasks: same results as deltalake's merge, only touched buckets
rewritten, one commit per merge, concurrent merges retried, tables readable by any Delta reader."""

from __future__ import annotations

import datetime as dt
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet
import pytest
from deltalake import DeltaTable, WriterProperties, write_deltalake
from deltalake.transaction import Transaction

from engine.arrow import to_storage
from engine.config import StorageSettings
from engine.errors import CommitConflict, KeyMismatch, TableFailed
from engine.keyhash import bucket_of, key_hash
from engine.kinds import Merge
from engine.tables import bucket_tasks, delta, delta_merge, distributed_merge
from engine.tables.distributed_merge import merge_distributed
from engine.tables.files import ChangeFiles, RollingParquetWriter

CDC = Merge(keys=["id"], sequence_by="seq", delete_when="op = 'd'", except_columns=["op"])
PLAIN = Merge(keys=["k1", "k2"])
UTC_US = pa.timestamp("us", tz="UTC")
COUNTED = ("num_target_rows_inserted", "num_target_rows_updated", "num_target_rows_deleted")


def rows(uri: str, keys: tuple[str, ...] = ("id",)) -> list[dict[str, Any]]:
    """Every row of the Delta table at `uri`, sorted by `keys` (nulls first), then by all values."""
    return sorted(DeltaTable(uri).to_pyarrow_table().to_pylist(),
                  key=lambda r: (*((r[k] is not None, r[k]) if r[k] is not None else (False, 0) for k in keys), repr(r)))


def paths(uri: str) -> set[str]:
    """The data files of the table's latest version."""
    return set(DeltaTable(uri).get_add_actions(flatten=True).column("path").to_pylist())


def cdc_batch(rng: np.random.Generator, size: int, *, with_tier: bool, with_v: bool) -> pa.Table:
    """Random changes: updates, out-of-order and duplicate keys, deletes, null sequence values."""
    ids = rng.integers(0, 120, size)
    seq = pa.array(rng.integers(0, 30, size), mask=rng.random(size) < 0.05)
    columns: dict[str, Any] = {"id": pa.array(ids, pa.int64()), "seq": seq,
                               "op": pa.array(rng.choice(["c", "u", "d"], size, p=[0.3, 0.5, 0.2]))}
    if with_v:
        columns["v"] = pa.array([f"v{n}" for n in rng.integers(0, 1000, size)])
    if with_tier:
        columns["tier"] = pa.array(rng.choice(["gold", "silver"], size))
    return pa.table(columns)


@pytest.mark.parametrize("seed", [1, 2])
def test_same_result_as_deltalake_merge(tmp_path: Path, ray_local: None, seed: int) -> None:
    rng = np.random.default_rng(seed)
    reference, bucketed = str(tmp_path / "reference"), str(tmp_path / "bucketed")
    shapes = [(True, False), (True, False), (False, True), (True, True), (True, False), (False, False)]
    for number, (with_v, with_tier) in enumerate(shapes):
        changes = cdc_batch(rng, 300, with_tier=with_tier, with_v=with_v or number == 0)
        expected = delta_merge.merge_changes(reference, changes, CDC, metadata={"batch": number})
        outcome = merge_distributed(bucketed, "silver.t", changes, CDC, metadata={"batch": number}, buckets=4)
        assert rows(bucketed) == rows(reference)
        assert (outcome.version, outcome.duplicates) == (expected.version, expected.duplicates)
        assert {k: outcome.metrics[k] for k in expected.metrics if k in COUNTED} == \
            {k: v for k, v in expected.metrics.items() if k in COUNTED}
    assert DeltaTable(bucketed).schema().to_arrow() == DeltaTable(reference).schema().to_arrow()
    assert delta.commit_info_value(delta.history(bucketed, "silver.t")[0], "batch") == len(shapes) - 1


def test_same_result_without_sequence_with_composite_and_null_keys(tmp_path: Path, ray_local: None) -> None:
    reference, bucketed = str(tmp_path / "reference"), str(tmp_path / "bucketed")
    rng = np.random.default_rng(7)
    for _ in range(3):
        changes = pa.table({"k1": pa.array(rng.integers(0, 5, 80), mask=rng.random(80) < 0.05),
                            "k2": pa.array(rng.choice(["a", "b", "c", "d"], 80)),
                            "at": pa.array(rng.integers(0, 10**12, 80), pa.timestamp("ns")),
                            "n": pa.array(rng.integers(0, 100, 80), pa.int32())})
        expected = delta_merge.merge_changes(reference, changes, PLAIN, metadata={})
        outcome = merge_distributed(bucketed, "silver.t", changes, PLAIN, metadata={}, buckets=3)
        assert rows(bucketed, ("k1", "k2")) == rows(reference, ("k1", "k2"))
        assert outcome.duplicates == expected.duplicates
    assert pa.schema(DeltaTable(bucketed).schema().to_arrow()).field("at").type == UTC_US


def test_first_merge_buckets_a_table_written_by_deltalake(tmp_path: Path, ray_local: None) -> None:
    reference, converted = str(tmp_path / "reference"), str(tmp_path / "converted")
    first = pa.table({"id": pa.array(range(200), pa.int64()), "v": [f"a{i}" for i in range(200)],
                      "seq": pa.array([1] * 200, pa.int64()), "op": ["c"] * 200})
    for uri in (reference, converted):
        delta_merge.merge_changes(uri, first, CDC, metadata={})
    delta_merge.merge_changes(converted, first.slice(0, 5), CDC, metadata={})
    loose = paths(converted)
    changes = pa.table({"id": pa.array([3, 250], pa.int64()), "v": ["b3", "new"], "seq": pa.array([2, 1], pa.int64()),
                        "op": ["u", "c"]})
    delta_merge.merge_changes(reference, changes, CDC, metadata={})
    outcome = merge_distributed(converted, "silver.t", changes, CDC, metadata={}, buckets=4)
    assert rows(converted) == rows(reference)
    assert outcome.metrics["num_buckets_rewritten"] == 4
    assert outcome.metrics["num_target_files_removed"] == len(loose)
    assert not paths(converted) & loose
    assert all(p.startswith("part-b") and "of00004-k" in p for p in paths(converted))


def test_files_outside_the_layout_are_split_by_row_groups(
    tmp_path: Path, ray_local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = str(tmp_path / "t")
    write_deltalake(uri, pa.table({"id": pa.array(range(1000), pa.int64()), "seq": pa.array([1] * 1000, pa.int64())}),
                    writer_properties=WriterProperties(max_row_group_size=100))
    [loose] = paths(uri)
    monkeypatch.setattr(bucket_tasks, "_SPLIT_ROWS", 250)
    assert bucket_tasks.row_group_chunks(uri, loose) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    changes = pa.table({"id": pa.array([5, 2000], pa.int64()), "seq": pa.array([2, 1], pa.int64()), "op": ["d", "c"]})
    outcome = merge_distributed(uri, "silver.t", changes, CDC, metadata={}, buckets=4)
    assert outcome.metrics["num_target_rows_deleted"] == 1 and outcome.metrics["num_target_rows_inserted"] == 1
    assert [r["id"] for r in rows(uri)] == [i for i in range(1000) if i != 5] + [2000]
    assert loose not in paths(uri)


def test_only_touched_buckets_are_rewritten_in_one_commit(tmp_path: Path, ray_local: None) -> None:
    uri = str(tmp_path / "t")
    ids = pa.array(np.arange(2000), pa.int64())
    merge_distributed(uri, "silver.t", pa.table({"id": ids, "v": pa.array(np.zeros(2000), pa.float64()),
                                                 "seq": pa.array(np.ones(2000, np.int64)), "op": ["c"] * 2000}),
                      CDC, metadata={}, buckets=8)
    before, version = paths(uri), delta.latest_version(uri)
    assert len(before) == 8
    buckets = bucket_of(pa.table({"id": ids}), ["id"], 8)
    chosen = ids.filter(pa.array(np.isin(buckets, [2, 5]))).to_numpy()[:40]
    changes = pa.table({"id": pa.array(chosen, pa.int64()), "v": pa.array(np.full(len(chosen), 9.0)),
                        "seq": pa.array(np.full(len(chosen), 2, np.int64)), "op": ["u"] * len(chosen)})
    marker = Transaction("medallion/test/silver.t", 1)
    outcome = merge_distributed(uri, "silver.t", changes, CDC, metadata={"run_id": "r2"}, transaction=marker)
    after = paths(uri)
    assert outcome.version == version + 1 == delta.latest_version(uri)
    assert outcome.metrics["num_buckets"] == 8 and outcome.metrics["num_buckets_rewritten"] == 2
    assert outcome.metrics["num_target_rows_updated"] == len(chosen)
    assert len(before - after) == 2 and len(after - before) == 2
    assert all(p.startswith(("part-b00002of00008", "part-b00005of00008")) for p in before - after)
    assert DeltaTable(uri).transaction_version(marker.app_id) == 1
    assert delta.commit_info_value(delta.history(uri, "silver.t")[0], "run_id") == "r2"
    assert sum(r["v"] == 9.0 for r in rows(uri)) == len(chosen) and len(rows(uri)) == 2000


def test_new_column_is_a_metadata_commit_without_the_marker(tmp_path: Path, ray_local: None) -> None:
    uri = str(tmp_path / "t")
    first = pa.table({"id": pa.array([1, 2], pa.int64()), "seq": pa.array([1, 1], pa.int64()), "op": ["c", "c"]})
    merge_distributed(uri, "silver.t", first, CDC, metadata={})
    marker = Transaction("medallion/test/silver.t", 4)
    later = pa.table({"id": pa.array([2], pa.int64()), "seq": pa.array([2], pa.int64()), "op": ["u"],
                      "tier": ["gold"]})
    outcome = merge_distributed(uri, "silver.t", later, CDC, metadata={"run_id": "r"}, transaction=marker)
    assert outcome.version == 2
    assert DeltaTable(uri, version=1).transaction_version(marker.app_id) is None
    assert DeltaTable(uri, version=2).transaction_version(marker.app_id) == 4
    assert rows(uri) == [{"id": 1, "seq": 1, "tier": None}, {"id": 2, "seq": 2, "tier": "gold"}]
    with pytest.raises(CommitConflict):
        merge_distributed(uri, "silver.t", later, CDC, metadata={}, transaction=marker)


@pytest.fixture
def commits_in_lockstep(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make two threads' first data commits wait for each other, so both merges read the same version
    and the second commit really conflicts with the first."""
    barrier = threading.Barrier(2, timeout=60)
    waited = threading.local()
    original: Callable[..., None] = DeltaTable.create_write_transaction

    def synchronised(self: DeltaTable, *args: Any, **kwargs: Any) -> None:
        if not getattr(waited, "done", False):
            waited.done = True
            barrier.wait()
        original(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "create_write_transaction", synchronised)
    yield


def base_table(uri: str) -> pa.Table:
    """A 1000-row table of 4 buckets at `uri`; returns its rows as changes."""
    base = updates(range(1000), "base", 1, "c")
    merge_distributed(uri, "silver.t", base, CDC, metadata={}, buckets=4)
    return base


def updates(ids: range | list[int], value: str, seq: int, op: str = "u") -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()), "v": [value] * len(ids),
                     "seq": pa.array([seq] * len(ids), pa.int64()), "op": [op] * len(ids)})


def test_racing_merges_apply_every_change_exactly_once(
    tmp_path: Path, ray_local: None, commits_in_lockstep: None
) -> None:
    uri, reference = str(tmp_path / "t"), str(tmp_path / "reference")
    base = base_table(uri)
    first = updates(range(0, 600), "A", 2)
    second = pa.concat_tables([updates(range(400, 1000), "B", 3), updates(range(1000, 1100), "B", 3, "c"),
                               updates(range(0, 50), "", 4, "d")])
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda changes: merge_distributed(uri, "silver.t", changes, CDC, metadata={}),
                                 [first, second]))
    assert sorted(o.version for o in outcomes) == [1, 2]
    assert sorted(o.metrics["attempts"] for o in outcomes) == [1, 2]
    delta_merge.merge_changes(reference, base, CDC, metadata={})
    for changes in [first, second] if outcomes[0].version < outcomes[1].version else [second, first]:
        delta_merge.merge_changes(reference, changes, CDC, metadata={})
    assert rows(uri) == rows(reference)
    # keys 0-49: deleted when the deletes commit last; re-inserted by the older updates otherwise, as in a
    # sequential merge (a table keeps no tombstones)
    assert len(rows(uri)) in (1050, 1100)
    referenced = set().union(*(paths_at(uri, v) for v in range(delta.latest_version(uri) + 1)))
    assert {p.name for p in Path(uri).glob("*.parquet")} == referenced


def test_lost_commit_keeps_the_buckets_the_winner_left_alone(
    tmp_path: Path, ray_local: None, commits_in_lockstep: None
) -> None:
    uri = str(tmp_path / "t")
    base_table(uri)
    ids = np.arange(1000)
    buckets = bucket_of(pa.table({"id": pa.array(ids)}), ["id"], 4)
    first = updates(ids[buckets == 0][:20].tolist(), "A", 2)
    second = updates(ids[buckets == 1][:20].tolist(), "B", 2)
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda changes: merge_distributed(uri, "silver.t", changes, CDC, metadata={}),
                                 [first, second]))
    loser = max(outcomes, key=lambda o: o.metrics["attempts"])
    assert loser.metrics["attempts"] == 2 and loser.metrics["num_buckets_reused"] == 1
    assert sorted(r["v"] for r in rows(uri) if r["v"] != "base") == ["A"] * 20 + ["B"] * 20


def test_merges_racing_to_create_the_table_both_apply(
    tmp_path: Path, ray_local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = str(tmp_path / "t")
    barrier = threading.Barrier(2, timeout=60)
    create = distributed_merge.create_table_with_add_actions

    def synchronised(*args: Any, **kwargs: Any) -> None:
        barrier.wait()
        create(*args, **kwargs)

    monkeypatch.setattr(distributed_merge, "create_table_with_add_actions", synchronised)
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda changes: merge_distributed(uri, "silver.t", changes, CDC, metadata={}),
                                 [updates(range(0, 60), "A", 2, "c"), updates(range(40, 100), "B", 1, "c")]))
    assert sorted(o.version for o in outcomes) == [0, 1]
    assert [(r["id"], r["v"]) for r in rows(uri)] == [(i, "A" if i < 60 else "B") for i in range(100)]
    referenced = paths_at(uri, 0) | paths_at(uri, 1)
    assert {p.name for p in Path(uri).glob("*.parquet")} == referenced


def paths_at(uri: str, version: int) -> set[str]:
    return set(DeltaTable(uri, version=version).get_add_actions(flatten=True).column("path").to_pylist())


def test_merge_that_keeps_losing_its_commit_fails_naming_the_table(
    tmp_path: Path, ray_local: None, commits_in_lockstep: None
) -> None:
    uri = str(tmp_path / "t")
    base_table(uri)

    def attempt(changes: pa.Table) -> str:
        try:
            merge_distributed(uri, "silver.t", changes, CDC, metadata={}, attempts=1)
        except TableFailed as err:
            assert err.table == "silver.t" and "`silver.t`" in str(err)
            return "lost"
        return "won"

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(attempt, [updates(range(0, 10), "A", 2), updates(range(5, 15), "B", 3)]))
    assert sorted(results) == ["lost", "won"]
    winner = "A" if results[0] == "won" else "B"
    assert {r["v"] for r in rows(uri)} == {"base", winner}
    assert delta.latest_version(uri) == 1
    assert {p.name for p in Path(uri).glob("*.parquet")} == paths_at(uri, 0) | paths_at(uri, 1)


def test_table_is_readable_by_plain_readers(tmp_path: Path, ray_local: None) -> None:
    uri = str(tmp_path / "t")
    kind = Merge(keys=["name"], sequence_by="at")
    at = pa.array([dt.datetime(2026, 1, d) for d in (1, 2, 3)], pa.timestamp("ns"))
    merge_distributed(uri, "silver.t", pa.table({"name": pa.array(["x", "y", "z"], pa.large_string()), "at": at,
                                                 "n": pa.array([1, 2, 3], pa.int64())}), kind, metadata={})
    later = pa.array([dt.datetime(2026, 2, 1)], pa.timestamp("ms", tz="UTC"))
    merge_distributed(uri, "silver.t", pa.table({"name": pa.array(["y"], pa.string_view()), "at": later,
                                                 "n": pa.array([20], pa.int64())}), kind, metadata={})
    expected = [{"name": "x", "at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "n": 1},
                {"name": "y", "at": dt.datetime(2026, 2, 1, tzinfo=dt.UTC), "n": 20},
                {"name": "z", "at": dt.datetime(2026, 1, 3, tzinfo=dt.UTC), "n": 3}]
    by_deltalake = DeltaTable(uri).to_pyarrow_table()
    assert by_deltalake.schema == pa.schema([("name", pa.string()), ("at", UTC_US), ("n", pa.int64())])
    assert sorted(by_deltalake.to_pylist(), key=lambda r: r["name"]) == expected
    assert pl.read_delta(uri).sort("name").to_dicts() == expected
    assert delta.row_count(uri, "silver.t") == 3


def test_changes_that_do_not_fit_the_table_fail_naming_it(tmp_path: Path, ray_local: None) -> None:
    uri = str(tmp_path / "t")
    kind = Merge(keys=["id"])
    merge_distributed(uri, "silver.orders", pa.table({"id": pa.array([1], pa.int64()), "n": [1]}), kind, metadata={})
    with pytest.raises(TableFailed, match="`silver.orders`"):
        merge_distributed(uri, "silver.orders", pa.table({"id": pa.array([1], pa.int64()), "n": ["one"]}), kind,
                          metadata={})
    assert rows(uri) == [{"id": 1, "n": 1}]


def test_key_hash_is_stable_and_type_consistent() -> None:
    table = pa.table({"i": pa.array([1, None, -7], pa.int64()), "s": pa.array(["", "é", None])})
    assert key_hash(table, ["i"]).tolist() == key_hash(pa.table({"i": pa.array([1, None, -7], pa.int32())}),
                                                      ["i"]).tolist()
    for string_type in (pa.large_string(), pa.string_view()):
        assert key_hash(table.cast(pa.schema([("i", pa.int64()), ("s", string_type)])), ["s"]).tolist() == \
            key_hash(table, ["s"]).tolist()
    chunked = pa.Table.from_batches([b for b in table.to_batches(max_chunksize=1)])
    assert key_hash(chunked, ["i", "s"]).tolist() == key_hash(table, ["i", "s"]).tolist()
    assert bucket_of(table, ["i", "s"], 16).tolist() == [0, 14, 14]
    assert bucket_of(pa.table({"s": ["alpha", "beta", "gamma" * 40]}), ["s"], 1000).tolist() == [444, 145, 604]
    at = to_storage(pa.table({"at": pa.array([dt.datetime(2026, 1, 1)], pa.timestamp("ns"))}))
    assert bucket_of(at, ["at"], 97).tolist() == [52]


@pytest.mark.parametrize("key_type", [pa.int8(), pa.int16(), pa.int32(), pa.uint16(), pa.uint32(), pa.uint64()])
def test_narrower_integer_keys_land_in_the_buckets_of_int64_keys(tmp_path: Path, ray_local: None,
                                                               key_type: pa.DataType) -> None:
    uri = str(tmp_path / "t")
    ids = np.arange(100)
    merge_distributed(uri, "silver.t", pa.table({"id": pa.array(ids, pa.int64()), "v": pa.array(ids * 0)}),
                      Merge(keys=["id"]), metadata={}, buckets=8)
    changed = ids[::3]
    merge_distributed(uri, "silver.t", pa.table({"id": pa.array(changed, key_type), "v": pa.array(changed + 1)}),
                      Merge(keys=["id"]), metadata={})
    stored = rows(uri)
    assert [r["id"] for r in stored] == list(range(100))
    assert {r["id"]: r["v"] for r in stored} == {int(i): int(i) + 1 if i % 3 == 0 else 0 for i in ids}
    for path in paths(uri):
        name = distributed_merge.BUCKET_FILE.match(path)
        assert name is not None
        ids_in_file = pa.parquet.read_table(f"{uri}/{path}", columns=["id"])
        assert set(bucket_of(ids_in_file, ["id"], 8).tolist()) == {int(name[1])}


def test_string_keys_into_an_integer_keyed_table_are_refused(tmp_path: Path, ray_local: None) -> None:
    uri = str(tmp_path / "t")
    merge_distributed(uri, "silver.t", pa.table({"id": pa.array([1, 2], pa.int64()), "v": [1, 2]}),
                      Merge(keys=["id"]), metadata={})
    with pytest.raises(KeyMismatch, match=r"merge into `silver.t`: key column `id` is int64 in table `silver.t` "
                                          r"but string in the changes"):
        merge_distributed(uri, "silver.t", pa.table({"id": ["1"], "v": [9]}), Merge(keys=["id"]), metadata={})
    assert rows(uri) == [{"id": 1, "v": 1}, {"id": 2, "v": 2}]


def test_the_bucket_count_follows_the_table_size_and_never_shrinks_on_its_own() -> None:
    mib = 2**20
    assert distributed_merge.bucket_count(None, 0, 128 * mib) == 1
    assert distributed_merge.bucket_count(None, 300 * mib, 128 * mib) == 4  # 3 needed, a power of two
    assert distributed_merge.bucket_count(16, 4096 * mib, 128 * mib) == 16  # at twice the target: kept
    assert distributed_merge.bucket_count(16, 4097 * mib, 128 * mib) == 64  # grown past it: sized again
    assert distributed_merge.bucket_count(16, 1 * mib, 128 * mib) == 16  # small now, but not rewritten for it
    assert distributed_merge.bucket_count(None, 10**18, 1) == distributed_merge.MAX_BUCKETS


def bucket_counts(uri: str) -> set[int]:
    return {int(name[2]) for name in map(distributed_merge.BUCKET_FILE.match, paths(uri)) if name}


def test_a_growing_table_is_re_bucketed_and_an_explicit_count_re_buckets_it_too(
        tmp_path: Path, ray_local: None) -> None:
    """The merge with the new layout rewrites every file into it; rows are those of deltalake's merge."""
    uri, reference = str(tmp_path / "t"), str(tmp_path / "reference")
    small = StorageSettings(target_file_mb=1)
    rng = np.random.default_rng(7)

    def batch(start: int, size: int) -> pa.Table:
        return pa.table({"id": pa.array(np.arange(start, start + size), pa.int64()),
                         "v": pa.array([rng.bytes(24).hex() for _ in range(size)]),  # incompressible
                         "seq": pa.array(np.ones(size, np.int64)), "op": ["c"] * size})

    first = batch(0, 1000)
    merge_distributed(uri, "silver.t", first, CDC, metadata={}, storage=small)
    delta_merge.merge_changes(reference, first, CDC, metadata={})
    assert bucket_counts(uri) == {1}  # the first changes fit one target size
    grown = batch(1000, 100_000)  # about 3 MB stored: more than twice the target in the one bucket
    merge_distributed(uri, "silver.t", grown, CDC, metadata={}, storage=small)
    delta_merge.merge_changes(reference, grown, CDC, metadata={})
    assert bucket_counts(uri) == {1}
    late = batch(101_000, 10)  # the next merge finds the table grown
    outcome = merge_distributed(uri, "silver.t", late, CDC, metadata={}, storage=small)
    delta_merge.merge_changes(reference, late, CDC, metadata={})
    [count] = bucket_counts(uri)
    assert count > 1 and outcome.metrics["num_buckets"] == count == outcome.metrics["num_buckets_rewritten"]
    assert sum(DeltaTable(uri).get_add_actions(flatten=True).column("size_bytes").to_pylist()) <= \
        count * small.target_file_mb * 2**20 * distributed_merge.GROW_FACTOR
    assert rows(uri) == rows(reference)

    updates = batch(0, 10)
    outcome = merge_distributed(uri, "silver.t", updates, CDC, metadata={}, buckets=3, storage=small)
    delta_merge.merge_changes(reference, updates, CDC, metadata={})
    assert bucket_counts(uri) == {3} and outcome.metrics["num_buckets_rewritten"] == 3
    assert rows(uri) == rows(reference)
    again = merge_distributed(uri, "silver.t", batch(20, 5), CDC, metadata={}, storage=small)
    assert bucket_counts(uri) == {3} and again.metrics["num_buckets"] == 3  # the recorded count is kept


def test_the_bucket_count_is_part_of_the_layout_not_of_the_definition() -> None:
    from engine.changes.fingerprint import definition_parts
    from engine.pipeline import Pipeline

    fingerprints = []
    for buckets in (None, 8, 64):
        pipeline = Pipeline("p")

        @pipeline.table("silver.t", kind=Merge(keys=["id"], sequence_by="seq", buckets=buckets))
        def t(bronze_t: pa.Table) -> pa.Table:
            return bronze_t

        fingerprints.append(definition_parts(pipeline.tables["silver.t"]).fingerprint)
    assert len(set(fingerprints)) == 1
    with pytest.raises(ValueError, match="buckets"):
        Merge(keys=["id"], buckets=0)


def staged(folder: Path, *batches: pa.Table) -> ChangeFiles:
    """`batches` staged as Parquet files under `folder`, one or more each, as a run's write tasks stage them."""
    writer = RollingParquetWriter(str(folder), StorageSettings(), "stage")
    for batch in batches:
        writer.write(to_storage(batch))
        writer.close()
    return ChangeFiles(str(folder), tuple(writer.close()))


def cdc(ids: Any, seq: int, op: str) -> pa.Table:
    ids = list(ids)
    return pa.table({"id": pa.array(ids, pa.int64()), "seq": pa.array([seq] * len(ids), pa.int64()),
                     "op": [op] * len(ids), "v": [f"{op}{seq}-{i}" for i in ids]})


def test_staged_changes_and_their_deletes_log_are_handled_by_ray_tasks_only(
        tmp_path: Path, ray_local: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver splits no change: Ray tasks read the staged files, split them by bucket, drop the changes a
    delete of their key supersedes (logged in an earlier batch, or in the same one) and log the new deletes."""
    uri, log = str(tmp_path / "silver" / "t"), str(tmp_path / "_changes" / "silver" / "t")
    monkeypatch.setattr(ChangeFiles, "read", lambda self: pytest.fail("staged changes read in this process"))
    merge = functools.partial(merge_distributed, uri, "silver.t", kind=CDC, metadata={}, buckets=4, change_log=log)
    merge(staged(tmp_path / "stage1", cdc(range(100), 1, "c")))
    second = staged(tmp_path / "stage2", cdc(range(10), 5, "d"), cdc(range(10, 20), 3, "u"),
                    cdc(range(5), 3, "u"), cdc([2000], 2, "c"))  # ids 0-4: older than their delete, in another file
    outcome = merge(second)
    expected = {i: f"c1-{i}" for i in range(10, 100)} | {i: f"u3-{i}" for i in range(10, 20)} | {2000: "c2-2000"}
    assert {r["id"]: r["v"] for r in rows(uri)} == expected
    assert outcome.duplicates == 5 and outcome.metrics["num_target_rows_deleted"] == 10
    logged = DeltaTable(log).to_pyarrow_table().sort_by("id")
    assert logged.select(["id", "seq"]).to_pylist() == [{"id": i, "seq": 5} for i in range(10)]

    replayed = merge(second)  # the same batch again: nothing new to log, the rows as they were
    assert {r["id"]: r["v"] for r in rows(uri)} == expected
    assert DeltaTable(log).to_pyarrow_table().num_rows == 10 and replayed.metrics["num_target_rows_deleted"] == 0
    merge(staged(tmp_path / "stage3", cdc([3], 4, "u"), cdc([7], 6, "c")))  # late for 3, after the delete for 7
    assert {r["id"]: r["v"] for r in rows(uri)} == expected | {7: "c6-7"}
    assert {p.name for p in Path(log).glob("*.parquet")} == {Path(f).name for f in DeltaTable(log).file_uris()}
