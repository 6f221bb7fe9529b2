"""Compaction of a plain table in Ray tasks, one per group of small files: the rows stay the same, the commit
changes no data, a writer that appends meanwhile does not stop it, and one that rewrote a compacted file does,
leaving the table as that writer left it. A plain table's Z-order, along one curve sorted by Ray tasks, keeps the
rows and clusters the files."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from engine.config import StorageSettings
from engine.errors import MaintenanceError
from engine.maintenance import optimize
from engine.maintenance.optimize import optimize_table
from engine.maintenance.policy import Maintenance
from engine.tables.files import DataFile

pytestmark = pytest.mark.usefixtures("ray_local")
TARGET_MB = 1


def small_appends(uri: str, commits: int, rows: int = 20_000) -> None:
    """`commits` appends of `rows` incompressible rows each (about 0.3 MB a file)."""
    rng = np.random.default_rng(3)
    for commit in range(commits):
        ids = np.arange(commit * rows, (commit + 1) * rows)
        write_deltalake(uri, pa.table({"id": ids, "noise": rng.random(rows)}), mode="append")


def rows_of(uri: str) -> list[tuple[int, float]]:
    table = DeltaTable(uri).to_pyarrow_table().sort_by("id")
    return list(zip(table.column("id").to_pylist(), table.column("noise").to_pylist()))


def commit_actions(uri: str, version: int) -> list[dict]:
    log = Path(uri) / "_delta_log" / f"{version:020d}.json"
    return [json.loads(line) for line in log.read_text().splitlines()]


def optimize_small(uri: str) -> optimize.Optimized:
    return optimize_table(uri, "bronze.events", storage=StorageSettings(),
                          policy=Maintenance(target_file_mb=TARGET_MB), reason="small files")


def test_a_plain_table_is_compacted_group_by_group_in_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = str(tmp_path / "bronze" / "events")
    small_appends(uri, 12)
    before = rows_of(uri)
    sizes = DeltaTable(uri).get_add_actions(flatten=True).column("size_bytes").to_pylist()
    assert all(size < TARGET_MB * 2**20 // 2 for size in sizes)
    monkeypatch.setattr(pads, "dataset", lambda *a, **k: pytest.fail("rows read in this process"))
    done = optimize_small(uri)
    monkeypatch.undo()

    assert rows_of(uri) == before
    actions = commit_actions(uri, done.version)
    adds = [a["add"] for a in actions if "add" in a]
    removes = [a["remove"] for a in actions if "remove" in a]
    assert len(removes) == 12 == done.files_rewritten and all(not a["dataChange"] for a in adds + removes)
    groups = {add["path"].split("-")[2] for add in adds}
    assert len(groups) >= 3, groups  # one task per group of files of up to the target size
    assert all(add["size"] <= 1.2 * TARGET_MB * 2**20 for add in adds)
    assert done.files_after == len(adds) < done.files_before
    commit = DeltaTable(uri).history(1)[0]
    assert (commit["medallion.operation"], commit["medallion.reason"]) == ("optimize", "small files")
    assert optimize_small(uri).version is None  # nothing left to compact


def test_an_append_meanwhile_is_kept_and_a_rewrite_meanwhile_stops_the_compaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = str(tmp_path / "bronze" / "events")
    small_appends(uri, 6)
    gather = optimize.gather_written

    def then(action: Callable[[], object]) -> Callable[[str, Sequence[Any]], list[DataFile]]:
        """`gather_written`, then `action`: another writer's commit between the tasks' end and the commit."""
        def gathered(folder: str, refs: Sequence[Any]) -> list[DataFile]:
            written = gather(folder, refs)
            action()
            return written
        return gathered

    late = pa.table({"id": pa.array([10**9], pa.int64()), "noise": pa.array([0.5])})
    monkeypatch.setattr(optimize, "gather_written", then(lambda: write_deltalake(uri, late, mode="append")))
    expected = sorted([*rows_of(uri), (10**9, 0.5)])
    done = optimize_small(uri)
    assert rows_of(uri) == expected
    assert done.version == DeltaTable(uri).version() and commit_actions(uri, done.version)[0]["commitInfo"][
        "medallion.operation"] == "optimize"

    uri2 = str(tmp_path / "silver" / "events")
    small_appends(uri2, 6)
    monkeypatch.setattr(optimize, "gather_written", then(lambda: DeltaTable(uri2).delete("id < 100")))
    with pytest.raises(MaintenanceError, match="another writer removed or rewrote files it compacted"):
        optimize_table(uri2, "silver.events", storage=StorageSettings(), policy=Maintenance(target_file_mb=TARGET_MB),
                       reason="small files")
    table = DeltaTable(uri2)
    assert table.history(1)[0]["operation"] == "DELETE" and table.to_pyarrow_table().num_rows == 6 * 20_000 - 100
    on_disk = {p.name for p in Path(uri2).glob("*.parquet")}
    assert not any(name.startswith("part-compacted-") for name in on_disk)  # what the tasks wrote is gone


def test_a_plain_table_is_zordered_along_one_curve_by_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = str(tmp_path / "gold" / "points")
    rng = np.random.default_rng(11)
    for _ in range(4):
        size = 150_000
        labels = pa.array([None if i % 50 == 0 else f"l{i:03d}" for i in rng.integers(0, 300, size)])
        noise = {f"noise{n}": rng.random(size) for n in range(2)}  # about 14 MB in all: files of 1 to 2 MB
        write_deltalake(uri, pa.table({"x": rng.integers(0, 1_000_000, size), "label": labels, **noise}),
                        mode="append")
    before = DeltaTable(uri).to_pyarrow_table().sort_by([("x", "ascending"), ("noise0", "ascending")])

    def per_file() -> tuple[float, float]:
        """The mean width of `x` in a file, and the mean count of distinct labels in a file."""
        widths, labels = [], []
        for path in DeltaTable(uri).file_uris():
            rows = pq.read_table(path.removeprefix("file://"), columns=["x", "label"])
            widths.append(np.ptp(rows.column("x").to_numpy()))
            labels.append(len(set(rows.column("label").to_pylist())))
        return float(np.mean(widths)), float(np.mean(labels))

    wide, mixed = per_file()
    monkeypatch.setattr(pads, "dataset", lambda *a, **k: pytest.fail("rows read in this process"))
    done = optimize_table(uri, "gold.points", storage=StorageSettings(),
                          policy=Maintenance(z_order=("x", "label"), target_file_mb=1), reason="cluster")
    monkeypatch.undo()

    after = DeltaTable(uri).to_pyarrow_table().sort_by([("x", "ascending"), ("noise0", "ascending")])
    assert after.equals(before.select(after.column_names))
    adds = [a["add"] for a in commit_actions(uri, done.version) if "add" in a]
    assert len(adds) == done.files_after >= 6 and done.files_rewritten == 4
    assert all(add["path"].startswith("part-zorder-") and not add["dataChange"] for add in adds)
    narrow, fewer = per_file()
    assert (narrow / wide) * (fewer / mixed) < 0.25, (wide, narrow, mixed, fewer)  # of the (x, label) plane
