"""Tests of engine.tables.delta_files and delta_read: a Delta table's data files read by whole-file tasks, columns
pruned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import ray.data
from deltalake import DeltaTable, write_deltalake

from engine.tables import delta, delta_files, delta_read
from engine.tables.delta_files import DataFileEntry
from engine.tables.delta_read import DeltaFilesDatasource, task_groups
from tests.engine.tables.test_delta import ids, staged

pytestmark = pytest.mark.usefixtures("ray_local")


def by_id(dataset: ray.data.Dataset) -> list[dict[str, Any]]:
    """Every row of `dataset`, sorted by `id`."""
    return sorted(dataset.take_all(), key=lambda row: row["id"])


def test_files_written_before_a_column_was_added_read_it_as_null(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(1, 2)})), mode="append", metadata={})
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(3), "tier": pa.array(["gold"])})),
                       mode="append", metadata={})
    dataset = delta.read_dataset(uri, "silver.t")
    assert by_id(dataset) == [{"id": 1, "tier": None}, {"id": 2, "tier": None}, {"id": 3, "tier": "gold"}]
    assert by_id(dataset.select_columns(["id"])) == [{"id": 1}, {"id": 2}, {"id": 3}]


def test_a_projection_reads_only_the_selected_columns(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(1, 2), "name": ["a", "b"], "x": [1.5, 2.5]})),
                       mode="append", metadata={})
    table = DeltaTable(uri)
    source = DeltaFilesDatasource(delta_files.data_files(uri, table), pa.schema(table.schema().to_arrow()))
    projected = source.apply_projection({"x": "x", "id": "id"})
    (task,) = projected.get_read_tasks(parallelism=8)
    (block,) = list(task())
    assert block.column_names == ["x", "id"]
    assert block.to_pylist() == [{"x": 1.5, "id": 1}, {"x": 2.5, "id": 2}]
    assert task.metadata.num_rows == 2
    selected = delta.read_dataset(uri, "silver.t").select_columns(["x", "id"])
    assert selected.schema().names == ["x", "id"]
    assert by_id(selected) == [{"x": 1.5, "id": 1}, {"x": 2.5, "id": 2}]


def test_small_files_share_a_read_task_and_a_large_file_has_its_own() -> None:
    mib = 2**20
    files = [DataFileEntry(f"f{i}", size, 10) for i, size in enumerate([mib, mib, 200 * mib, mib, 127 * mib, mib])]
    assert [[entry.uri for entry in group] for group in task_groups(files)] == [
        ["f0", "f1", "f2"], ["f3", "f4"], ["f5"]]
    assert task_groups([]) == []


def test_every_file_is_read_once_across_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delta_read, "TASK_BYTES", 1)
    uri = str(tmp_path / "t")
    for start in range(0, 6, 2):
        delta.commit_files(uri, staged(uri, pa.table({"id": ids(start, start + 1)})), mode="append", metadata={})
    dataset = delta.read_dataset(uri, "silver.t")
    assert [row["id"] for row in by_id(dataset)] == list(range(6))
    assert dataset.materialize().num_blocks() == 3


def test_a_partitioned_table_is_read_with_its_partition_values(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    write_deltalake(uri, pa.table({"id": ids(1, 2, 3), "day": ["d1", "d2", "d1"]}), partition_by=["day"])
    assert not delta_files.readable_by_files(DeltaTable(uri))
    assert by_id(delta.read_dataset(uri, "silver.t")) == [
        {"id": 1, "day": "d1"}, {"id": 2, "day": "d2"}, {"id": 3, "day": "d1"}]


def test_rows_added_since_a_version_are_read_from_the_added_files_only(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(1, 2)})), mode="append", metadata={})
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(3)})), mode="append", metadata={})
    delta.commit_files(uri, staged(uri, pa.table({"id": ids(4, 5)})), mode="append", metadata={})
    added = delta.read_added_files(uri, "silver.t", 0, 2)
    assert added is not None
    dataset, count = added
    assert count == 3
    assert [row["id"] for row in by_id(dataset)] == [3, 4, 5]
    nothing = delta.read_added_files(uri, "silver.t", 2, 2)
    assert nothing is not None and nothing[1] == 0 and nothing[0].take_all() == []
