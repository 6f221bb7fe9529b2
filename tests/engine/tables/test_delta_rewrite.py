"""Tests of rewriting every row of a Delta table through a function: in this process for a small table, in Ray
tasks for a large one, with the same result, one commit, and nothing left behind when it fails."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, write_deltalake

from engine.config import StorageSettings
from engine.errors import TableFailed
from engine.tables import delta, delta_rewrite

STORAGE = StorageSettings()


def migrated(rows: pa.Table) -> pa.Table:
    """`v` renamed to `value` and widened to float64, `note` dropped, `id` kept."""
    return pa.table({"id": rows["id"], "value": pc.cast(rows["v"], pa.float64())})


def table_of_files(uri: str, files: int = 4) -> None:
    """A table of `files` appends of three rows each, ids 0 to 3*files-1."""
    for part in range(files):
        ids = list(range(part * 3, part * 3 + 3))
        write_deltalake(uri, pa.table({"id": ids, "v": pa.array(ids, pa.int32()), "note": [f"n{i}" for i in ids]}),
                        mode="append")


def content(uri: str) -> pa.Table:
    return DeltaTable(uri).to_pyarrow_table().sort_by("id")


def data_files_on_disk(uri: str) -> set[str]:
    return {p.name for p in Path(uri).glob("*.parquet")}


@pytest.mark.usefixtures("ray_local")
def test_a_large_table_is_rewritten_by_ray_tasks_as_this_process_would(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    table_of_files(here)
    table_of_files(there)
    version = delta_rewrite.rewrite(here, "t", migrated, metadata={"reason": "test"}, storage=STORAGE,
                                    need_ray=lambda: pytest.fail("a small table needs no Ray"))
    assert version == 4

    asked: list[bool] = []
    monkeypatch.setattr(delta_rewrite, "TASKS_FROM_BYTES", -1)
    monkeypatch.setattr(delta_rewrite, "BYTES_PER_TASK", 1)  # a task per file
    monkeypatch.setattr(delta_rewrite, "read_data_file", lambda *a: pytest.fail("rows read in this process"))
    assert delta_rewrite.rewrite(there, "t", migrated, metadata={"reason": "test"}, storage=STORAGE,
                                 need_ray=lambda: asked.append(True)) == 4
    assert asked == [True]
    for uri in (here, there):
        loaded = DeltaTable(uri)
        assert loaded.schema().to_arrow().names == ["id", "value"]
        assert delta.commit_info_value(loaded.history(1)[0], "reason") == "test"
        assert content(uri).equals(pa.table({"id": list(range(12)), "value": [float(i) for i in range(12)]}))
    assert len(DeltaTable(there).file_uris()) == 4  # one new file per task


@pytest.mark.usefixtures("ray_local")
def test_a_task_that_fails_leaves_the_table_and_its_folder_as_they_were(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    uri = str(tmp_path / "t")
    table_of_files(uri)
    files = data_files_on_disk(uri)

    def fails_on_id_7(rows: pa.Table) -> pa.Table:
        if 7 in rows["id"].to_pylist():
            raise ValueError("cannot migrate row 7")
        return migrated(rows)

    monkeypatch.setattr(delta_rewrite, "TASKS_FROM_BYTES", -1)
    monkeypatch.setattr(delta_rewrite, "BYTES_PER_TASK", 1)
    with pytest.raises(TableFailed, match=r"rewriting the rows of table `t` failed, nothing was changed: .*row 7"):
        delta_rewrite.rewrite(uri, "t", fails_on_id_7, metadata={}, storage=STORAGE, need_ray=lambda: None)
    assert DeltaTable(uri).version() == 3
    assert data_files_on_disk(uri) == files  # the groups that succeeded were deleted again
    assert content(uri).num_rows == 12


def test_a_commit_by_another_writer_meanwhile_fails_the_rewrite_and_keeps_its_rows(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    table_of_files(uri, files=1)

    def with_a_writer_meanwhile(rows: pa.Table) -> pa.Table:
        if rows.num_rows:
            write_deltalake(uri, pa.table({"id": [100], "v": pa.array([100], pa.int32()), "note": ["late"]}),
                            mode="append")
        return migrated(rows)

    files = data_files_on_disk(uri)
    with pytest.raises(TableFailed, match="another writer committed meanwhile; nothing was changed"):
        delta_rewrite.rewrite(uri, "t", with_a_writer_meanwhile, metadata={}, storage=STORAGE,
                              need_ray=lambda: None)
    assert DeltaTable(uri).version() == 1
    assert content(uri)["id"].to_pylist() == [0, 1, 2, 100]  # the other writer's row is not lost
    late = {Path(p).name for p in DeltaTable(uri).file_uris()} - files
    assert len(late) == 1 and data_files_on_disk(uri) == files | late  # the rewrite's own files were deleted


def test_an_empty_table_takes_the_new_schema(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    write_deltalake(uri, pa.table({"id": pa.array([], pa.int64()), "v": pa.array([], pa.int32()),
                                   "note": pa.array([], pa.string())}))
    assert delta_rewrite.rewrite(uri, "t", migrated, metadata={}, storage=STORAGE, need_ray=lambda: None) == 1
    assert DeltaTable(uri).schema().to_arrow().names == ["id", "value"]
    assert content(uri).num_rows == 0
