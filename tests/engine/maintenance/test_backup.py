"""Backups: a snapshot of every table's current version and of `_meta`, verified by restoring it."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable, WriterProperties, write_deltalake

from engine.cli.main import main
from engine.errors import MaintenanceError
from engine.kinds import Merge
from engine.layout import Layout
from engine.lease import RunLease
from engine.maintenance import backup as backup_module
from engine.maintenance.backup import backup, read_manifest, restore_backup, verify_backup
from engine.maintenance.pins import list_pins, pin
from engine.tables.distributed_merge import merge_distributed

pytestmark = pytest.mark.usefixtures("ray_local")


def lakehouse(root: Path) -> Layout:
    """A root with an overwritten bronze table, a bucketed merge table, an uncompressed gold table, a
    run-records table and a pin."""
    layout = Layout.at(str(root))
    events = layout.table("bronze.events")
    write_deltalake(events, pa.table({"id": [1, 2], "name": ["a", "b"]}))
    write_deltalake(events, pa.table({"id": [3, 4], "name": ["c", "d"]}), mode="overwrite")
    write_deltalake(events, pa.table({"id": [5], "name": ["e"]}), mode="append")
    changes = pa.table({"id": np.arange(100), "seq": np.zeros(100, np.int64), "tier": ["gold", "silver"] * 50})
    merge_distributed(layout.table("silver.accounts"), "silver.accounts", changes, Merge(keys=["id"], sequence_by="seq"),
                      metadata={}, buckets=4)
    write_deltalake(layout.table("gold.totals"), pa.table({"amount": [111_111_111_111, 222_222_222_222, 333_333_333_333]}),
                    writer_properties=WriterProperties(compression="UNCOMPRESSED"))
    write_deltalake(layout.runs(), pa.table({"run_id": ["r1"], "status": ["succeeded"]}))
    pin(layout, "bronze.events", 1, who="model churn v1")
    return layout


def rows(uri: str) -> list[dict]:
    table = DeltaTable(uri).to_pyarrow_table()
    return table.sort_by([(name, "ascending") for name in table.column_names]).to_pylist()


def test_backup_holds_current_versions_and_restores_to_the_same_tables(tmp_path: Path) -> None:
    layout = lakehouse(tmp_path / "root")
    destination = tmp_path / "backup"
    result = CliRunner().invoke(main, ["--root", layout.root, "backup", "--to", str(destination)])
    assert result.exit_code == 0, result.output
    assert "backed up 4 tables and 1 metadata files" in result.output
    manifest = read_manifest(str(destination))
    assert {t.path: (t.version, t.rows) for t in manifest.tables} == {
        "bronze/events": (2, 3), "silver/accounts": (0, 100), "gold/totals": (0, 3), "_meta/runs": (0, 1)}
    copied = {p.name for p in (destination / "bronze" / "events").glob("*.parquet")}
    needed = [*DeltaTable(layout.table("bronze.events")).file_uris(),
              *DeltaTable(layout.table("bronze.events"), version=1).file_uris()]
    assert copied == {Path(p).name for p in needed}
    assert {t.path: t.pinned for t in manifest.tables}["bronze/events"] == [1]
    verified = CliRunner().invoke(main, ["backup", "verify", str(destination)])
    assert verified.exit_code == 0, verified.output
    assert "every table's rows and content hash match" in verified.output
    restored = Layout.at(str(tmp_path / "restored"))
    result = CliRunner().invoke(main, ["--root", restored.root, "backup", "restore", str(destination)])
    assert result.exit_code == 0, result.output
    for table in ("bronze.events", "silver.accounts"):
        assert rows(restored.table(table)) == rows(layout.table(table))
    assert [p.who for p in list_pins(restored)] == ["model churn v1"]
    assert DeltaTable(restored.table("bronze.events"), version=1).to_pyarrow_table().num_rows == 2
    with pytest.raises(MaintenanceError, match="already holds 3 table"):
        restore_backup(str(destination), restored.root)
    with pytest.raises(MaintenanceError, match="already holds a backup"):
        backup(layout, str(destination))


def test_a_running_run_s_lease_is_not_backed_up(tmp_path: Path) -> None:
    """A backup taken while a run holds its lease restores to a root that no one holds: restoring must not make
    the next run wait for a run of the past."""
    layout = lakehouse(tmp_path / "root")
    held = RunLease(layout, "shop", heartbeat_s=3600)
    held.acquire("run-1")
    manifest = backup(layout, str(tmp_path / "backup"))
    assert [f for f in manifest.files if "leases" in f] == []
    restored = Layout.at(str(tmp_path / "restored"))
    restore_backup(str(tmp_path / "backup"), restored.root)
    RunLease(restored, "shop").acquire("run-2")
    held.release()


def test_verify_detects_a_tampered_or_incomplete_backup(tmp_path: Path) -> None:
    layout = lakehouse(tmp_path / "root")
    destination = tmp_path / "backup"
    backup(layout, str(destination))
    assert verify_backup(str(destination)) == []
    [victim] = (destination / "gold" / "totals").glob("*.parquet")
    original, changed = (np.array([value], np.int64).tobytes() for value in (222_222_222_222, 222_222_222_223))
    victim.write_bytes(victim.read_bytes().replace(original, changed, 1))
    assert sorted(pq.read_table(victim).column("amount").to_pylist())[1] == 222_222_222_223
    problems = verify_backup(str(destination))
    assert len(problems) == 1 and "`gold/totals` v0: its rows differ from the backed-up ones" in problems[0]
    next((destination / "bronze" / "events").glob("*.parquet")).unlink()
    (destination / "_meta" / "pins").iterdir().__next__().write_text("{}")
    result = CliRunner().invoke(main, ["backup", "verify", str(destination)])
    assert result.exit_code == 1 and "failed verification (3 problem(s))" in result.output
    assert "`bronze/events` v2 cannot be read" in result.output and "differs from the backed-up file" in result.output
    (destination / "manifest.json").unlink()
    with pytest.raises(MaintenanceError, match="is incomplete: it holds no manifest.json"):
        verify_backup(str(destination))


REGISTRY = b"\x1a\x011\x22\x0cfeature_view" + bytes(range(256)) * 4
"""Bytes like those of Feast's file registry, a protobuf message named `registry.db`: no SQLite header."""


def with_feature_store(layout: Layout) -> tuple[Path, Path]:
    """The root's feature store files: a protobuf `registry.db` and a real SQLite online store."""
    features = Path(layout.root) / "_meta" / "features"
    features.mkdir(parents=True)
    (features / "registry.db").write_bytes(REGISTRY)
    with closing(sqlite3.connect(features / "online_store.db")) as online:
        online.execute("CREATE TABLE rows (k INTEGER, v TEXT)")
        online.executemany("INSERT INTO rows VALUES (?, ?)", [(k, f"v{k}") for k in range(50)])
        online.commit()
    return features / "registry.db", features / "online_store.db"


def stored_rows(database: Path) -> list[tuple[int, str]]:
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute("SELECT k, v FROM rows ORDER BY k").fetchall()


def test_a_root_with_a_feast_registry_backs_up_verifies_and_restores_byte_identical(tmp_path: Path) -> None:
    layout = lakehouse(tmp_path / "root")
    registry, online = with_feature_store(layout)
    destination = tmp_path / "backup"
    result = CliRunner().invoke(main, ["--root", layout.root, "backup", "--to", str(destination)])
    assert result.exit_code == 0, result.output
    assert (destination / "_meta" / "features" / "registry.db").read_bytes() == REGISTRY
    assert stored_rows(destination / "_meta" / "features" / "online_store.db") == stored_rows(online)
    verified = CliRunner().invoke(main, ["backup", "verify", str(destination)])
    assert verified.exit_code == 0, verified.output
    restored = tmp_path / "restored"
    result = CliRunner().invoke(main, ["--root", str(restored), "backup", "restore", str(destination)])
    assert result.exit_code == 0, result.output
    assert (restored / "_meta" / "features" / "registry.db").read_bytes() == registry.read_bytes()
    assert (restored / "_meta" / "features" / "online_store.db").read_bytes() == \
        (destination / "_meta" / "features" / "online_store.db").read_bytes()
    assert stored_rows(restored / "_meta" / "features" / "online_store.db") == stored_rows(online)
    assert rows(Layout.at(str(restored)).table("silver.accounts")) == rows(layout.table("silver.accounts"))


def test_a_backup_without_its_manifest_is_refused_as_incomplete(tmp_path: Path) -> None:
    layout = lakehouse(tmp_path / "root")
    destination = tmp_path / "backup"
    backup(layout, str(destination))
    (destination / "manifest.json").unlink()
    for command in (["backup", "verify", str(destination)],
                    ["--root", str(tmp_path / "restored"), "backup", "restore", str(destination)]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1
        assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output
        assert f"backup `{destination}` is incomplete: it holds no manifest.json" in result.output
    assert not (tmp_path / "restored" / "silver").exists()


def test_a_backup_interrupted_by_a_failing_copy_leaves_no_manifest(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    layout = lakehouse(tmp_path / "root")
    with_feature_store(layout)
    copy_files = pafs.copy_files

    def failing(source: str, target: str, **kwargs: object) -> None:
        if source.endswith("registry.db"):
            raise OSError("No space left on device")
        copy_files(source, target, **kwargs)

    monkeypatch.setattr(pafs, "copy_files", failing)
    destination = tmp_path / "backup"
    result = CliRunner().invoke(main, ["--root", layout.root, "backup", "--to", str(destination)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0
    assert f"backup `{destination}` is incomplete (it has no manifest.json)" in result.output
    assert "registry.db" in result.output and "No space left on device" in result.output
    assert (destination / "silver" / "accounts").is_dir() and not (destination / "manifest.json").exists()
    with pytest.raises(MaintenanceError, match="is incomplete: it holds no manifest.json"):
        verify_backup(str(destination))


def test_large_tables_are_copied_and_hashed_by_ray_tasks_into_the_same_backup(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    layout = lakehouse(tmp_path / "root")
    in_process = backup(layout, str(tmp_path / "in-process"))
    monkeypatch.setattr(backup_module, "TASKS_FROM_BYTES", 0)  # every table counts as large
    copied_here: list[str] = []
    copy_files = pafs.copy_files

    def recorded(source: str, target: str, **kwargs: object) -> None:
        copied_here.append(source)
        copy_files(source, target, **kwargs)

    monkeypatch.setattr(pafs, "copy_files", recorded)
    by_tasks = backup(layout, str(tmp_path / "by-tasks"))

    assert not [source for source in copied_here if source.endswith(".parquet") or "_delta_log" in source], \
        "no table file passed through this process"
    assert len(list((tmp_path / "by-tasks").rglob("*.parquet"))) == len(list((tmp_path / "in-process").rglob("*.parquet")))
    assert [(t.path, t.version, t.rows, t.content_hash, t.files, t.pinned) for t in by_tasks.tables] == \
        [(t.path, t.version, t.rows, t.content_hash, t.files, t.pinned) for t in in_process.tables]
    assert verify_backup(str(tmp_path / "by-tasks")) == []
    (next((tmp_path / "by-tasks" / "silver" / "accounts").glob("*.parquet"))).unlink()
    problems = verify_backup(str(tmp_path / "by-tasks"))
    assert len(problems) == 1 and problems[0].startswith("`silver/accounts` v0 cannot be read: cannot read `"), problems
    assert "\n" not in problems[0] and "No such file" in problems[0], "one line, naming the file, not a traceback"
