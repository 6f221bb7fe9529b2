"""Tests of Delta table writing: Parquet files with stats, one-commit writes, merges by key, storage types."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from engine.arrow import storage_type, to_storage, unify
from engine.columns import REJECTED_REASON, RUN_ID
from engine.config import StorageSettings
from engine.errors import CommitConflict, TableNotFound
from engine.kinds import Merge
from engine.tables import delta, delta_merge
from engine.tables.files import DataFile, RollingParquetWriter
from engine.tables.staging import StagedFiles, data_schema, split_rejected

STORAGE = StorageSettings()
UTC_US = pa.timestamp("us", tz="UTC")
CDC = Merge(keys=["id"], sequence_by="seq", delete_when="op = 'd'", except_columns=["op"])


def staged(uri: str, *tables: pa.Table, prefix: str = "run") -> list[DataFile]:
    """`tables` written as Parquet files under `uri` (not committed)."""
    writer = RollingParquetWriter(uri, STORAGE, prefix)
    for table in tables:
        writer.write(to_storage(table))
    return writer.close()


def rows(uri: str, version: int | None = None, key: str = "id") -> list[dict[str, Any]]:
    """Every row of the Delta table at `uri`, sorted by `key`."""
    return sorted(DeltaTable(uri, version=version).to_pyarrow_table().to_pylist(), key=lambda r: r[key])


def ids(*values: int | None) -> pa.Array:
    """An int64 array."""
    return pa.array(values, pa.int64())


# Parquet files and their statistics


def test_writer_stats_bound_every_column_delta_bounds(tmp_path: Path) -> None:
    first = pa.table({"id": ids(5, 2), "day": pa.array([dt.date(2026, 1, 3), None]),
                      "name": pa.array(["b", None])})
    second = pa.table({"id": ids(9, 1), "day": pa.array([dt.date(2026, 1, 1), dt.date(2026, 2, 1)]),
                       "name": pa.array([None, "a"])})
    [file] = staged(str(tmp_path), first, second)
    stats = json.loads(file.stats)
    assert stats["numRecords"] == 4
    assert stats["nullCount"] == {"id": 0, "day": 1, "name": 2}
    assert stats["minValues"] == {"id": 1, "day": "2026-01-01", "name": "a"}
    assert stats["maxValues"] == {"id": 9, "day": "2026-02-01", "name": "b"}
    assert file.num_rows == 4
    assert file.path.startswith("part-run-") and file.path.endswith(".zstd.parquet")
    on_disk = tmp_path / file.path
    assert file.size == on_disk.stat().st_size
    assert pq.read_table(on_disk).column("id").to_pylist() == [5, 2, 9, 1]
    assert file.schema.equals(pq.read_schema(on_disk).remove_metadata())


def test_filters_through_deltalake_see_every_matching_row(tmp_path: Path) -> None:
    """deltalake's dataset turns a missing bound into a null one and prunes the file from any filter on that
    column, so every column must be bounded; long text by its prefix, opaque columns by bounds that say
    nothing."""
    long = "x" * 40
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
    table = pa.table({"id": ids(1, 2, 3), "name": ["a", long + "z", None], "price": [1.5, float("nan"), 2.5],
                      "at": pa.array([when, None, when], UTC_US), "ok": [True, False, None],
                      "amount": pa.array([1, 2, 3], pa.decimal128(10, 2)), "email": ["ann@x", "bob@y", None]})
    writer = RollingParquetWriter(str(tmp_path), STORAGE, "run", opaque=frozenset({"email"}))
    writer.write(to_storage(table))
    [file] = writer.close()
    delta.commit_files(str(tmp_path), [file], mode="append", metadata={})
    stats = json.loads(file.stats)
    assert stats["maxValues"]["name"] == "x" * 32 + "\U0010ffff"
    assert (stats["minValues"]["email"], stats["maxValues"]["email"]) == ("", "\U0010ffff")
    dataset = DeltaTable(str(tmp_path)).to_pyarrow_dataset()
    for condition, expected in ((pc.field("name") == long + "z", [2]), (pc.field("price") == 2.5, [3]),
                                (pc.field("at") == pa.scalar(when, UTC_US), [1, 3]), (pc.field("ok") == pa.scalar(False), [2]),
                                (pc.field("amount") > pa.scalar(1, pa.decimal128(10, 2)), [2, 3]),
                                (pc.field("email") == "bob@y", [2])):
        assert sorted(dataset.to_table(filter=condition).column("id").to_pylist()) == expected, condition


def test_writer_all_null_column_has_no_min_max(tmp_path: Path) -> None:
    [file] = staged(str(tmp_path), pa.table({"id": pa.array([None, None], pa.int64())}))
    stats = json.loads(file.stats)
    assert stats["nullCount"] == {"id": 2}
    assert stats["minValues"] == {} and stats["maxValues"] == {}


def test_writer_rolls_over_on_schema_change(tmp_path: Path) -> None:
    files = staged(str(tmp_path), pa.table({"id": ids(1, 2)}), pa.table({"id": ids(3)}),
                   pa.table({"id": ids(4), "extra": pa.array(["x"])}))
    assert [f.num_rows for f in files] == [3, 1]
    assert [json.loads(f.stats)["maxValues"] for f in files] == [{"id": 3}, {"id": 4, "extra": "x"}]
    assert files[0].schema.names == ["id"] and files[1].schema.names == ["id", "extra"]
    assert len({f.path for f in files}) == 2
    schema = data_schema(files)
    assert schema is not None and schema.names == ["id", "extra"]
    assert data_schema([]) is None


def test_writer_rolls_over_at_target_size(tmp_path: Path) -> None:
    storage = StorageSettings(target_file_mb=1, compression="none")
    writer = RollingParquetWriter(str(tmp_path), storage, "big")
    chunk = pa.table({"blob": pa.array([os.urandom(1024) for _ in range(600)], pa.binary())})
    for _ in range(3):
        writer.write(chunk)
    files = writer.close()
    assert [f.num_rows for f in files] == [1200, 600]
    assert files[0].size >= 2**20
    assert all(f.path.endswith(".none.parquet") for f in files)


def test_writer_skips_empty_tables_and_close_is_idempotent(tmp_path: Path) -> None:
    writer = RollingParquetWriter(str(tmp_path), STORAGE, "e")
    writer.write(pa.table({"id": pa.array([], pa.int64())}))
    assert writer.close() == []
    assert list(tmp_path.iterdir()) == []


# one-commit writes


def test_commit_create_append_and_overwrite(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    version = delta.commit_files(uri, staged(uri, pa.table({"id": ids(1, 2)})), mode="append",
                                 metadata={"run_id": "r1"})
    assert version == 0
    assert delta.latest_version(uri) == 0
    version = delta.commit_files(uri, staged(uri, pa.table({"id": ids(3)}), pa.table({"id": ids(4)})),
                                 mode="append", metadata={"run_id": "r2"})
    assert version == 1
    assert [r["id"] for r in rows(uri)] == [1, 2, 3, 4]
    assert delta.row_count(uri, "silver.t") == 4
    assert delta.row_count(uri, "silver.t", version=0) == 2
    assert [r["id"] for r in rows(uri, version=0)] == [1, 2]

    version = delta.commit_files(uri, staged(uri, pa.table({"id": ids(7)})), mode="overwrite",
                                 metadata={"run_id": "r3"})
    assert version == 2
    assert rows(uri) == [{"id": 7}]
    assert delta.row_count(uri, "silver.t") == 1
    assert [r["id"] for r in rows(uri, version=1)] == [1, 2, 3, 4]


def test_commit_uses_file_stats(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(4, 8, None)})), mode="append", metadata={})
    actions = pa.table(DeltaTable(uri).get_add_actions(flatten=True)).to_pylist()
    assert [(a["num_records"], a["null_count.id"], a["min.id"], a["max.id"]) for a in actions] == [(3, 1, 4, 8)]


def test_commit_metadata_is_in_history(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(1)})), mode="append",
                       metadata={"run_id": "run-1", "files": [["a.json", 10, 5]]})
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(2)})), mode="append",
                       metadata={"run_id": "run-2", "input_versions": {"bronze.x": 3}})
    history = delta.history(uri, "bronze.t")
    assert [c["version"] for c in history] == [1, 0]
    assert [delta.commit_info_value(c, "run_id") for c in history] == ["run-2", "run-1"]
    assert delta.commit_info_value(history[1], "files") == [["a.json", 10, 5]]
    assert delta.commit_info_value(history[0], "input_versions") == {"bronze.x": 3}
    assert delta.commit_info_value(history[0], "files") is None


def test_commit_info_value_decodes_json_text() -> None:
    commit = {"medallion.a": "[1, 2]", "medallion.b": '{"x": 1}', "medallion.c": "plain", "other": "1"}
    assert delta.commit_info_value(commit, "a") == [1, 2]
    assert delta.commit_info_value(commit, "b") == {"x": 1}
    assert delta.commit_info_value(commit, "c") == "plain"
    assert delta.commit_info_value(commit, "other") is None


def test_commit_append_with_new_column_widens_schema(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(1, 2)})), mode="append", metadata={})
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(3), "tier": pa.array(["gold"])})),
                       mode="append", metadata={})
    assert rows(uri) == [{"id": 1, "tier": None}, {"id": 2, "tier": None}, {"id": 3, "tier": "gold"}]


def test_commit_new_column_within_one_commit(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    files = staged(uri, pa.table({"id": ids(1)}), pa.table({"id": ids(2), "tier": pa.array(["gold"])}))
    assert len(files) == 2
    delta.commit_files(uri, files, mode="append", metadata={})
    assert rows(uri) == [{"id": 1, "tier": None}, {"id": 2, "tier": "gold"}]


def test_commit_append_without_files_commits_nothing(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    assert delta.commit_files(uri, [], mode="append", metadata={}) is None
    assert not delta.table_exists(uri)
    assert delta.latest_version(uri) is None
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(1)})), mode="append", metadata={})
    schema = pa.schema([("id", pa.int64())])
    assert delta.commit_files(uri, [], mode="append", metadata={}, empty_schema=schema) is None
    assert delta.latest_version(uri) == 0


def test_commit_overwrite_without_files_creates_empty_table(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    assert delta.commit_files(uri, [], mode="overwrite", metadata={}) is None
    assert not delta.table_exists(uri)
    schema = pa.schema([("name", pa.large_string()), ("at", pa.timestamp("ns"))])
    assert delta.commit_files(uri, [], mode="overwrite", metadata={"run_id": "r0"}, empty_schema=schema) == 0
    table = DeltaTable(uri).to_pyarrow_table()
    assert table.num_rows == 0
    assert table.schema.names == ["name", "at"]
    assert delta.row_count(uri, "gold.t") == 0
    assert delta.commit_info_value(delta.history(uri, "gold.t")[0], "run_id") == "r0"


def test_commit_overwrite_without_files_empties_existing_table(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(1, 2)})), mode="append", metadata={})
    version = delta.commit_files(uri, [], mode="overwrite", metadata={},
                                 empty_schema=pa.schema([("id", pa.int64())]))
    assert version == 1
    assert rows(uri) == []
    assert delta.row_count(uri, "gold.t") == 0


def test_commit_overwrite_without_files_or_schema_empties_existing_table(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(1, 2)})), mode="append", metadata={})
    assert delta.commit_files(uri, [], mode="overwrite", metadata={}) == 1
    assert rows(uri) == []


# merges by key


def test_first_merge_creates_table_without_deletes(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    changes = pa.table({"id": ids(1, 1, 2, 3, 4), "v": ["a", "b", "c", "d", None], "seq": ids(1, 2, 1, 1, 1),
                        "op": ["c", "u", "c", "d", "c"]})
    outcome = delta_merge.merge_changes(uri, changes, CDC, metadata={"run_id": "m1"})
    assert outcome.version == 0
    assert outcome.duplicates == 1
    assert outcome.metrics["num_target_rows_inserted"] == 3
    assert rows(uri) == [{"id": 1, "v": "b", "seq": 2}, {"id": 2, "v": "c", "seq": 1},
                         {"id": 4, "v": None, "seq": 1}]
    assert DeltaTable(uri).schema().to_arrow().field("v").type == pa.string()
    assert delta.commit_info_value(delta.history(uri, "silver.t")[0], "run_id") == "m1"
    assert delta.row_count(uri, "silver.t") == 3


def test_merge_latest_per_key_within_batch_regardless_of_row_order(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    kind = Merge(keys=["id"], sequence_by="seq")
    changes = pa.table({"id": ids(1, 1, 1, 2, 2), "v": ["late", "first", "mid", "x", "y"],
                        "seq": ids(9, 1, 5, 3, 3)})
    outcome = delta_merge.merge_changes(uri, changes, kind, metadata={})
    assert outcome.duplicates == 3
    assert rows(uri) == [{"id": 1, "v": "late", "seq": 9}, {"id": 2, "v": "y", "seq": 3}]


def test_merge_older_change_never_overwrites_newer(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    first = pa.table({"id": ids(1, 2, 3), "v": ["a", "b", "c"], "seq": ids(5, 5, 5), "op": ["c", "c", "c"]})
    delta_merge.merge_changes(uri, first, CDC, metadata={})
    later = pa.table({"id": ids(1, 2, 3, 4), "v": ["old", "same", "new", "ins"], "seq": ids(4, 5, 6, 1),
                      "op": ["u", "u", "u", "c"]})
    outcome = delta_merge.merge_changes(uri, later, CDC, metadata={"run_id": "m2"})
    assert outcome.version == 1
    assert outcome.duplicates == 0
    assert outcome.metrics["num_target_rows_inserted"] == 1
    assert outcome.metrics["num_target_rows_updated"] == 2
    assert rows(uri) == [{"id": 1, "v": "a", "seq": 5}, {"id": 2, "v": "same", "seq": 5},
                         {"id": 3, "v": "new", "seq": 6}, {"id": 4, "v": "ins", "seq": 1}]
    assert delta.row_count(uri, "silver.t") == 4
    assert rows(uri, version=0) == [{"id": 1, "v": "a", "seq": 5}, {"id": 2, "v": "b", "seq": 5},
                                    {"id": 3, "v": "c", "seq": 5}]


def test_merge_delete_applies_only_when_not_older(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    first = pa.table({"id": ids(1, 2, 3), "v": ["a", "b", "c"], "seq": ids(5, 5, 5), "op": ["c", "c", "c"]})
    delta_merge.merge_changes(uri, first, CDC, metadata={})
    deletes = pa.table({"id": ids(1, 2, 3, 9), "seq": ids(4, 5, 6, 1), "op": ["d", "d", "d", "d"]})
    outcome = delta_merge.merge_changes(uri, deletes, CDC, metadata={})
    assert outcome.metrics["num_target_rows_deleted"] == 2
    assert outcome.metrics["num_target_rows_inserted"] == 0
    assert rows(uri) == [{"id": 1, "v": "a", "seq": 5}]
    assert DeltaTable(uri).schema().to_arrow().names == ["id", "v", "seq"]


def test_merge_delete_then_recreate_in_one_batch(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    delta_merge.merge_changes(uri, pa.table({"id": ids(1), "v": ["a"], "seq": ids(1), "op": ["c"]}), CDC, metadata={})
    changes = pa.table({"id": ids(1, 1), "v": [None, "back"], "seq": ids(2, 3), "op": ["d", "c"]})
    outcome = delta_merge.merge_changes(uri, changes, CDC, metadata={})
    assert outcome.duplicates == 1
    assert rows(uri) == [{"id": 1, "v": "back", "seq": 3}]


def test_merge_except_columns_are_not_stored(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    kind = Merge(keys=["id"], except_columns=["op", "debug"])
    delta_merge.merge_changes(uri, pa.table({"id": ids(1), "v": ["a"], "op": ["c"], "debug": [1]}), kind, metadata={})
    delta_merge.merge_changes(uri, pa.table({"id": ids(2), "v": ["b"], "op": ["c"], "debug": [2]}), kind, metadata={})
    assert DeltaTable(uri).schema().to_arrow().names == ["id", "v"]
    assert rows(uri) == [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]


def test_merge_new_column_is_null_for_rows_not_updated(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    first = pa.table({"id": ids(1, 2, 3), "v": ["a", "b", "c"], "seq": ids(5, 5, 5), "op": ["c", "c", "c"]})
    delta_merge.merge_changes(uri, first, CDC, metadata={})
    later = pa.table({"id": ids(1, 2, 4), "v": ["stale", "new", "ins"], "seq": ids(1, 6, 1),
                      "op": ["u", "u", "c"], "tier": ["x", "gold", "silver"]})
    outcome = delta_merge.merge_changes(uri, later, CDC, metadata={})
    assert outcome.version == delta.latest_version(uri)
    assert DeltaTable(uri).schema().to_arrow().names == ["id", "v", "seq", "tier"]
    assert rows(uri) == [
        {"id": 1, "v": "a", "seq": 5, "tier": None},
        {"id": 2, "v": "new", "seq": 6, "tier": "gold"},
        {"id": 3, "v": "c", "seq": 5, "tier": None},
        {"id": 4, "v": "ins", "seq": 1, "tier": "silver"},
    ]
    assert delta.row_count(uri, "silver.t") == 4


def test_merge_batch_without_a_column_stores_null_for_it(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    kind = Merge(keys=["id"], sequence_by="seq")
    delta_merge.merge_changes(uri, pa.table({"id": ids(1, 2), "v": ["a", "b"], "seq": ids(1, 1)}), kind, metadata={})
    delta_merge.merge_changes(uri, pa.table({"id": ids(2, 3), "seq": ids(2, 2)}), kind, metadata={})
    assert rows(uri) == [{"id": 1, "v": "a", "seq": 1}, {"id": 2, "v": None, "seq": 2},
                         {"id": 3, "v": None, "seq": 2}]


def test_merge_without_sequence_last_row_wins(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    kind = Merge(keys=["k1", "k2"])
    first = pa.table({"k1": ids(1, 1, 1), "k2": ["a", "b", "a"], "v": ids(10, 20, 30)})
    outcome = delta_merge.merge_changes(uri, first, kind, metadata={})
    assert outcome.duplicates == 1
    assert rows(uri, key="k2") == [{"k1": 1, "k2": "a", "v": 30}, {"k1": 1, "k2": "b", "v": 20}]
    second = pa.table({"k1": ids(1, 2, 1), "k2": ["b", "a", "b"], "v": ids(1, 2, 3)})
    outcome = delta_merge.merge_changes(uri, second, kind, metadata={})
    assert outcome.duplicates == 1
    assert sorted(DeltaTable(uri).to_pyarrow_table().to_pylist(), key=lambda r: (r["k1"], r["k2"])) == [
        {"k1": 1, "k2": "a", "v": 30}, {"k1": 1, "k2": "b", "v": 3}, {"k1": 2, "k2": "a", "v": 2},
    ]
    assert delta.row_count(uri, "silver.t") == 3


def test_merge_stores_storage_types(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    kind = Merge(keys=["id"], sequence_by="at")
    at = pa.array([dt.datetime(2026, 1, 1, 12, 0)], pa.timestamp("ns"))
    delta_merge.merge_changes(uri, pa.table({"id": ids(1), "name": pa.array(["a"], pa.large_string()), "at": at}),
                        kind, metadata={})
    schema = DeltaTable(uri).schema().to_arrow()
    assert pa.schema(schema).field("at").type == UTC_US
    assert pa.schema(schema).field("name").type == pa.string()
    later = pa.array([dt.datetime(2026, 1, 2, tzinfo=dt.UTC)], pa.timestamp("ms", tz="UTC"))
    delta_merge.merge_changes(uri, pa.table({"id": ids(1), "name": pa.array(["b"], pa.string_view()), "at": later}),
                        kind, metadata={})
    assert rows(uri) == [{"id": 1, "name": "b", "at": dt.datetime(2026, 1, 2, tzinfo=dt.UTC)}]


# storage types


@pytest.mark.parametrize("source", [
    pa.timestamp("s"), pa.timestamp("ms"), pa.timestamp("us"), pa.timestamp("ns"),
    pa.timestamp("ns", tz="UTC"), pa.timestamp("ms", tz="UTC"),
])
def test_timestamps_are_stored_as_utc_microseconds(source: pa.DataType) -> None:
    assert storage_type(source) == UTC_US
    moment = dt.datetime(2026, 3, 4, 10, 15, 0, 0 if source.unit == "s" else 123000)
    table = to_storage(pa.table({"at": pa.array([moment, None], source)}))
    assert table.schema.field("at").type == UTC_US
    assert table.column("at").to_pylist() == [moment.replace(tzinfo=dt.UTC), None]


def test_zoned_timestamps_are_stored_in_utc() -> None:
    assert storage_type(pa.timestamp("s", tz="Europe/Paris")) == UTC_US


def test_nanosecond_timestamps_are_truncated_to_microseconds() -> None:
    table = to_storage(pa.table({"at": pa.array([1_700_000_000_123_456_789], pa.timestamp("ns"))}))
    assert table.column("at").cast(pa.int64()).to_pylist() == [1_700_000_000_123_456]


def test_strings_and_other_types_are_stored_plain() -> None:
    table = pa.table({
        "large": pa.array(["a"], pa.large_string()),
        "view": pa.array(["b"], pa.string_view()),
        "bin": pa.array([b"c"], pa.large_binary()),
        "dict": pa.array(["d"]).dictionary_encode(),
        "null": pa.nulls(1),
        "nested": pa.array([{"at": dt.datetime(2026, 1, 1), "s": "e"}],
                           pa.struct([("at", pa.timestamp("ns")), ("s", pa.large_string())])),
        "list": pa.array([["f"]], pa.large_list(pa.large_string())),
        "n": ids(1),
    })
    stored = to_storage(table)
    assert stored.schema == pa.schema([
        ("large", pa.string()), ("view", pa.string()), ("bin", pa.binary()), ("dict", pa.string()),
        ("null", pa.string()), ("nested", pa.struct([("at", UTC_US), ("s", pa.string())])),
        ("list", pa.list_(pa.string())), ("n", pa.int64()),
    ])
    assert stored.to_pylist() == [{
        "large": "a", "view": "b", "bin": b"c", "dict": "d", "null": None,
        "nested": {"at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "s": "e"}, "list": ["f"], "n": 1,
    }]


def test_to_storage_drops_metadata_and_is_idempotent() -> None:
    table = pa.table({"n": ids(1)}).replace_schema_metadata({"k": "v"})
    stored = to_storage(table)
    assert stored.schema.metadata is None
    assert to_storage(stored).equals(stored)


def test_unify_widens_and_keeps_first_seen_order() -> None:
    merged = unify([pa.schema([("a", pa.int32()), ("b", pa.string())]),
                    pa.schema([("c", pa.string()), ("a", pa.int64())])])
    assert merged == pa.schema([("a", pa.int64()), ("b", pa.string()), ("c", pa.string())])


# staging


def test_split_rejected_routes_rows_with_a_reason() -> None:
    table = pa.table({"id": ids(1, 2, 3), REJECTED_REASON: pa.array([None, "bad id", ""])})
    accepted, rejected = split_rejected(table, "run-9")
    assert accepted.to_pylist() == [{"id": 1}]
    assert rejected.to_pylist() == [{"id": 2, REJECTED_REASON: "bad id", RUN_ID: "run-9"},
                                    {"id": 3, REJECTED_REASON: "", RUN_ID: "run-9"}]
    assert rejected.schema.field(RUN_ID).type == pa.string()


def test_split_rejected_without_reason_column_accepts_everything() -> None:
    table = pa.table({"id": ids(1, 2)})
    accepted, rejected = split_rejected(table, "run-9")
    assert accepted.equals(table)
    assert rejected.num_rows == 0 and rejected.schema == table.schema


def test_split_rejected_all_accepted_has_no_rejects() -> None:
    table = pa.table({"id": ids(1), REJECTED_REASON: pa.array([None], pa.string())})
    accepted, rejected = split_rejected(table, "r")
    assert accepted.to_pylist() == [{"id": 1}]
    assert rejected.num_rows == 0
    assert rejected.column_names == ["id", REJECTED_REASON, RUN_ID]


def test_staged_files_combine_and_count(tmp_path: Path) -> None:
    data = staged(str(tmp_path), pa.table({"id": ids(1, 2)}))
    quarantine = staged(str(tmp_path / "q"), pa.table({"id": ids(3)}))
    combined = StagedFiles.combine([StagedFiles(tuple(data), ()), StagedFiles((), tuple(quarantine))])
    assert combined.rows == 2
    assert combined.quarantined_rows == 1


# reading


def test_open_missing_table_names_table_and_path(tmp_path: Path) -> None:
    uri = str(tmp_path / "silver" / "orders")
    with pytest.raises(TableNotFound) as caught:
        delta.open_table(uri, "silver.orders")
    assert "silver.orders" in str(caught.value) and uri in str(caught.value)
    assert caught.value.table == "silver.orders" and caught.value.path == uri
    with pytest.raises(TableNotFound):
        delta.row_count(uri, "silver.orders")
    with pytest.raises(TableNotFound):
        delta.history(uri, "silver.orders")
    assert delta.latest_version(uri) is None
    assert not delta.table_exists(uri)


def test_read_dataset_at_version(tmp_path: Path, ray_local: None) -> None:
    uri = str(tmp_path / "t")
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(1, 2), "v": ["a", "b"]})), mode="append", metadata={})
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(3), "v": ["c"]})), mode="append", metadata={})
    old = delta.read_dataset(uri, "silver.t", version=0).take_all()
    assert sorted(old, key=lambda r: r["id"]) == [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]
    latest = delta.read_dataset(uri, "silver.t").take_all()
    assert sorted(r["id"] for r in latest) == [1, 2, 3]
    with pytest.raises(TableNotFound):
        delta.read_dataset(str(tmp_path / "missing"), "silver.missing")


# application transaction markers


def test_commits_carry_increasing_transaction_markers(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    app = "medallion/p/silver.t"
    assert delta.next_transaction(uri, app).version == 1
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(1)})), mode="append", metadata={},
                       transaction=delta.next_transaction(uri, app))
    second = delta.next_transaction(uri, app)
    assert second.version == 2
    delta_merge.merge_changes(uri, pa.table({"id": ids(2)}), Merge(keys=["id"]), metadata={}, transaction=second)
    assert DeltaTable(uri).transaction_version(app) == 2
    assert delta.next_transaction(uri, "medallion/p/other").version == 1


def test_batch_already_committed_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    app = "medallion/p/silver.t"
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(1)})), mode="append", metadata={},
                       transaction=delta.next_transaction(uri, app))
    planned = delta.next_transaction(uri, app)
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(2)})), mode="append", metadata={}, transaction=planned)
    with pytest.raises(CommitConflict, match=r"batch 2 of `medallion/p/silver.t` was already committed"):
        delta.commit_files(uri, staged(uri, pa.table({"id": ids(3)})), mode="append", metadata={},
                           transaction=planned)
    with pytest.raises(CommitConflict):
        delta_merge.merge_changes(uri, pa.table({"id": ids(4)}), Merge(keys=["id"]), metadata={}, transaction=planned)
    assert [r["id"] for r in rows(uri)] == [1, 2]
    assert DeltaTable(uri).version() == 1


def test_concurrent_writer_of_the_same_batch_loses_in_the_commit(tmp_path: Path) -> None:
    """Two writers plan batch 1 from the same snapshot: Delta's conflict check refuses the second."""
    uri = str(tmp_path / "t")
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(0)})), mode="append", metadata={})
    planned = delta.next_transaction(uri, "app")
    snapshot = DeltaTable(uri)
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(1)})), mode="append", metadata={}, transaction=planned)
    late = staged(uri, pa.table({"id": ids(2)}))
    actions = [delta.AddAction(f.path, f.size, {}, f.modification_time, True, f.stats) for f in late]
    with pytest.raises(delta.CommitFailedError, match="Concurrent transaction"):
        snapshot.create_write_transaction(actions, "append", snapshot.schema(),
                                          commit_properties=delta.commit_metadata({}, planned))
    assert [r["id"] for r in rows(uri)] == [0, 1]


def test_in_process_reads_give_deltalakes_rows_with_columns_added_later_as_nulls(tmp_path: Path) -> None:
    from deltalake import write_deltalake

    uri = str(tmp_path / "t")
    write_deltalake(uri, pa.table({"id": [1, 2], "name": ["a", "b"]}))
    write_deltalake(uri, pa.table({"id": [3], "name": ["c"], "score": [0.5]}), mode="append", schema_mode="merge")
    write_deltalake(uri, pa.table({"id": [4], "name": ["d"], "score": [1.5]}), mode="append")
    expected = DeltaTable(uri).to_pyarrow_table().sort_by("id")
    assert delta.read_rows(uri, "t").sort_by("id").equals(expected)
    assert delta.rows_dataset(uri, "t").to_table().sort_by("id").equals(expected)
    assert delta.read_rows(uri, "t", version=0).sort_by("id").to_pydict() == {"id": [1, 2], "name": ["a", "b"]}
    assert delta.rows_dataset(uri, "t").head(1, filter=pc.field("score") > 1).to_pydict() == {
        "id": [4], "name": ["d"], "score": [1.5]}
    write_deltalake(str(tmp_path / "parted"), pa.table({"id": [1, 2], "day": ["x", "y"]}), partition_by=["day"])
    assert sorted(delta.read_rows(str(tmp_path / "parted"), "parted").to_pylist(), key=lambda r: r["id"]) == [
        {"id": 1, "day": "x"}, {"id": 2, "day": "y"}]  # partition values live in the log: deltalake's reader


def test_an_append_log_keeps_every_writers_rows_and_survives_a_schema_change_by_another(tmp_path: Path) -> None:
    """Attacks: a table kept open across appends (the run records and quality metrics of a run) losing or
    refusing rows that other writers appended, or changing the schema of, meanwhile."""
    uri = str(tmp_path / "log")
    mine, theirs = delta.AppendLog(uri), delta.AppendLog(uri)
    mine.append(pa.table({"n": [1]}))  # creates the table
    mine.append(pa.table({"n": [2]}))
    theirs.append(pa.table({"n": [3]}))
    mine.append(pa.table({"n": [4]}))  # from version 2, with version 3 by the other writer in between
    theirs.append(pa.table({"n": [5], "note": ["added by the other writer"]}), schema_mode="merge")
    mine.append(pa.table({"n": [6]}), schema_mode="merge")  # the schema changed since it opened the table

    table = DeltaTable(uri)
    assert table.version() == 5
    assert sorted(table.to_pyarrow_table()["n"].to_pylist()) == [1, 2, 3, 4, 5, 6]
    assert [entry["operation"] for entry in table.history()].count("WRITE") == 6


def test_the_newest_commits_are_read_a_few_at_a_time_and_a_restore_across_them_still_hides_what_it_undid(
        tmp_path: Path) -> None:
    """Attacks: reading a long history in pieces losing a value older than the first piece, or a restore whose
    undone commits run across two pieces showing some of them."""
    from deltalake import CommitProperties, write_deltalake

    uri = str(tmp_path / "t")
    restore_at, restored_to = 30, 10
    for version in range(40):
        values = {"marker": f"written at {version}"} if version in (2, 20) else {}
        if version == restore_at:
            values = {delta.RESTORED_TO_KEY: restored_to}
        write_deltalake(uri, pa.table({"n": [version]}), mode="append", commit_properties=CommitProperties(
            custom_metadata={delta.METADATA_PREFIX + k: str(v) for k, v in values.items()}))
    assert restore_at > 40 - delta.FIRST_COMMITS_READ > restored_to  # the first piece ends inside what was undone

    assert [c["version"] for c in delta.newest_commits(uri, uri)] == list(range(39, -1, -1))
    kept = [c["version"] for c in delta.effective_history(uri, uri)]
    assert kept == [*range(39, restore_at - 1, -1), *range(restored_to, -1, -1)]
    assert delta.last_commit_value(uri, uri, "marker") == "written at 2"  # 20 was undone by the restore


@pytest.mark.usefixtures("ray_local")
def test_changed_keys_compared_in_ray_tasks_equal_those_compared_here(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Above `LOCAL_CHANGE_BYTES` the rows of the files that differ are compared by Ray tasks, hash-partitioned on
    the keys; the keys found are the same, and no row of those files is read in this process."""
    from deltalake import write_deltalake

    uri = str(tmp_path / "t")
    base = pa.table({"k": [1, 2, 2, 3, None, 5], "part": ["a", "a", "b", "c", "n", "e"], "v": [1.0, 2.0, 2.0, 3.0, 0.0, 5.0]})
    write_deltalake(uri, base)
    write_deltalake(uri, pa.table({"k": [6, 2], "part": ["f", "a"], "v": [6.0, 2.0]}), mode="append")  # 6 new, 2 copied
    DeltaTable(uri).delete("k = 3")  # rewrites the file that held 3: its other rows come back unchanged
    write_deltalake(uri, pa.table({"k": [5, None], "part": ["e", "n"], "v": [5.5, 0.0]}), mode="append")
    here = {(since, until): delta.changed_keys(uri, "t", since, until, ["k", "part"]) for since, until in
            [(0, 1), (0, 2), (1, 3), (0, 3)]}

    monkeypatch.setattr(delta, "LOCAL_CHANGE_BYTES", -1)
    monkeypatch.setattr(delta, "parquet_dataset", lambda *a, **k: pytest.fail("rows read in this process"))
    for (since, until), expected in here.items():
        found = delta.changed_keys(uri, "t", since, until, ["k", "part"])
        assert found is not None and expected is not None
        assert sorted(found.to_pylist(), key=str) == sorted(expected.to_pylist(), key=str), (since, until)
    assert sorted(here[(0, 3)].to_pylist(), key=str) == sorted(
        [{"k": 6, "part": "f"}, {"k": 2, "part": "a"}, {"k": 3, "part": "c"}, {"k": 5, "part": "e"},
         {"k": None, "part": "n"}], key=str)
