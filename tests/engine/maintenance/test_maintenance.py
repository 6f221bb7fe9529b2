"""Maintenance: compaction (plain and within hash buckets), z-order, vacuum with pinned versions, and
maintenance run after runs when due."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable, write_deltalake
from deltalake.table import TableOptimizer

from engine.cli.main import main
from engine.config import MaintenanceSettings, StorageSettings
from engine.errors import MaintenanceError, TableFailed
from engine.keyhash import bucket_of
from engine.kinds import Merge
from engine.layout import Layout
from engine.maintenance.due import optimize_due, run_due_maintenance, vacuum_due
from engine.maintenance.optimize import optimize_table
from engine.maintenance.pins import list_pins, pin, unpin
from engine.maintenance.policy import Maintenance
from engine.maintenance.vacuum import vacuum_table
from engine.pipeline import Pipeline
from engine.tables.delta import FIRST_COMMITS_READ
from engine.tables.distributed_merge import merge_distributed
from tests.conftest import lease_held_elsewhere, settings_at
from tests.engine.cdc_pipeline import PIPELINE, assert_same_tables, run_to_completion, write_batch

pytestmark = pytest.mark.usefixtures("ray_local")

BUCKET = re.compile(r"^part-b(\d{5})of(\d{5})-k[0-9a-f]{8}-")


def sorted_rows(uri: str, version: int | None = None) -> list[dict]:
    table = DeltaTable(uri, version=version).to_pyarrow_table()
    return table.sort_by([(name, "ascending") for name in table.column_names]).to_pylist()


def appended(root: Path, table: str = "bronze.events", commits: int = 12, rows: int = 50) -> str:
    """A table written by `commits` small appends; its folder."""
    uri = Layout.at(str(root)).table(table)
    for commit in range(commits):
        ids = np.arange(commit * rows, (commit + 1) * rows)
        write_deltalake(uri, pa.table({"id": ids, "value": [f"v{i}" for i in ids]}), mode="append")
    return uri


def files(uri: str, version: int | None = None) -> list[str]:
    return DeltaTable(uri, version=version).get_add_actions(flatten=True).column("path").to_pylist()


def test_compaction_reduces_files_and_keeps_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = appended(tmp_path)
    before = sorted_rows(uri)
    for method in ("compact", "z_order"):  # in this process; a Ray worker imports deltalake anew
        monkeypatch.setattr(TableOptimizer, method, lambda *a, **k: pytest.fail("rows rewritten in this process"))
    done = optimize_table(uri, "bronze.events", storage=StorageSettings(), reason="too many files")
    assert (done.files_before, done.files_after, done.files_rewritten, done.bucketed) == (12, 1, 12, False)
    assert len(files(uri)) == 1 and sorted_rows(uri) == before
    commit = DeltaTable(uri).history(1)[0]
    assert (commit["medallion.operation"], commit["medallion.reason"]) == ("optimize", "too many files")
    again = optimize_table(uri, "bronze.events", storage=StorageSettings(), reason="again")
    assert again.version is None and DeltaTable(uri).version() == done.version


def test_zorder_makes_file_ranges_tighter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = str(tmp_path / "gold" / "points")
    rng = np.random.default_rng(7)
    for _ in range(4):
        size = 100_000
        write_deltalake(uri, pa.table({"x": rng.integers(0, 1_000_000, size), "y": rng.integers(0, 1_000_000, size),
                                       "noise": rng.random(size)}), mode="append")
    before = sorted_rows(uri)

    def spread() -> float:
        stats = pa.table(DeltaTable(uri).get_add_actions(flatten=True))
        widths = pc.subtract(stats.column("max.x"), stats.column("min.x")).to_numpy()
        return float(widths.mean())

    wide = spread()
    monkeypatch.setattr(TableOptimizer, "z_order", lambda *a, **k: pytest.fail("rows rewritten in this process"))
    done = optimize_table(uri, "gold.points", storage=StorageSettings(),
                          policy=Maintenance(z_order=("x",), target_file_mb=1), reason="cluster by x")
    assert done.version is not None and done.files_after >= 2
    assert spread() < wide / 2
    assert sorted_rows(uri) == before
    assert DeltaTable(uri).history(1)[0]["medallion.z_order"] == "x"
    with pytest.raises(MaintenanceError, match=r"table `gold.points` has no column\(s\) \['nope'\]"):
        optimize_table(uri, "gold.points", storage=StorageSettings(), policy=Maintenance(z_order=("nope",)),
                       reason="x")


def bucket_files_hold_their_buckets(uri: str, keys: list[str]) -> None:
    """Every data file is named after one bucket, and holds only rows of that bucket."""
    for path in files(uri):
        name = BUCKET.match(path)
        assert name is not None, path
        rows = pa.parquet.read_table(f"{uri}/{path}", columns=keys)
        assert set(bucket_of(rows, keys, int(name[2])).tolist()) == {int(name[1])}, path


def test_a_bucketed_merge_table_is_compacted_within_its_buckets(tmp_path: Path) -> None:
    uri = str(tmp_path / "silver" / "accounts")
    kind = Merge(keys=["id"], sequence_by="seq")
    size = 600_000
    rng = np.random.default_rng(3)
    first = pa.table({"id": np.arange(size), "seq": np.zeros(size, np.int64), "v": rng.integers(0, 2**62, size)})
    small = StorageSettings(target_file_mb=1)
    merge_distributed(uri, "silver.accounts", first, kind, metadata={}, buckets=2, storage=small)
    touch = pa.table({"id": np.array([0, 1, 2, 3]), "seq": np.ones(4, np.int64), "v": np.arange(4)})
    merge_distributed(uri, "silver.accounts", touch, kind, metadata={}, buckets=2, storage=small)
    assert len(files(uri)) > 2
    before = sorted_rows(uri)
    done = optimize_table(uri, "silver.accounts", storage=StorageSettings(target_file_mb=64),
                          policy=Maintenance(z_order=("v",)), reason="compact buckets")
    assert done.bucketed and done.files_after == 2 and done.files_rewritten == done.files_before
    bucket_files_hold_their_buckets(uri, ["id"])
    assert sorted_rows(uri) == before
    later = pa.table({"id": np.array([5, size + 1]), "seq": np.full(2, 2, np.int64), "v": np.array([-1, -2])})
    outcome = merge_distributed(uri, "silver.accounts", later, kind, metadata={}, buckets=2)
    assert outcome.metrics["num_target_rows_inserted"] == 1 and outcome.metrics["num_target_rows_updated"] == 1
    bucket_files_hold_their_buckets(uri, ["id"])


def test_vacuum_refuses_a_retention_below_the_safe_minimum(tmp_path: Path) -> None:
    appended(tmp_path, commits=2)
    layout = Layout.at(str(tmp_path))
    with pytest.raises(MaintenanceError, match=r"vacuum of `bronze.events` refused: a retention of 1 h is below "
                                               r"the safe minimum of 168 h.*or --force"):
        vacuum_table(layout, "bronze.events", settings=MaintenanceSettings(), hours=1)
    result = CliRunner().invoke(main, ["--root", str(tmp_path), "maintain", "vacuum", "bronze.events",
                                       "--retention-hours", "0"])
    assert result.exit_code == 1 and "below the safe minimum of 168 h" in result.output


def test_a_forced_vacuum_is_refused_while_another_process_runs_a_pipeline_on_the_root(tmp_path: Path) -> None:
    """Attacks: "vacuum beside a run stays correct", with `vacuum --force --retention-hours 0` while a run holds
    its lease: it would delete the files the run staged and has not committed."""
    uri = appended(tmp_path, commits=3)
    write_deltalake(uri, pa.table({"id": [-1], "value": ["new"]}), mode="overwrite")
    with lease_held_elsewhere(tmp_path, "shop", "run-1"):
        result = CliRunner().invoke(main, ["--root", str(tmp_path), "maintain", "vacuum", "bronze.events",
                                           "--retention-hours", "0", "--force"])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "while pipeline `shop` is running" in result.output and "run-1" in result.output
        assert all((Path(uri) / path).exists() for version in range(3) for path in files(uri, version))
    done = vacuum_table(Layout.at(str(tmp_path)), "bronze.events", settings=MaintenanceSettings(), hours=0,
                        force=True)
    assert done.files


def test_forced_vacuum_deletes_unreferenced_files_but_keeps_pinned_versions(tmp_path: Path) -> None:
    uri = appended(tmp_path, commits=5)
    layout = Layout.at(str(tmp_path))
    pinned = sorted_rows(uri, 2)
    made = pin(layout, "bronze.events", 2, who="model churn v1")
    pin(layout, "bronze.events", 3, who="lapsed", until=datetime.now(UTC) - timedelta(hours=1))
    write_deltalake(uri, pa.table({"id": [-1], "value": ["new"]}), mode="overwrite")
    unreferenced = set(files(uri, 4)) - set(files(uri, 2))
    result = CliRunner().invoke(main, ["--root", str(tmp_path), "maintain", "vacuum", "bronze.events",
                                       "--retention-hours", "0", "--force", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would delete 2 file(s)" in result.output and "kept pinned version(s) 2" in result.output
    done = vacuum_table(layout, "bronze.events", settings=MaintenanceSettings(), hours=0, force=True,
                        reason="free space")
    assert set(done.files) == unreferenced and done.kept_versions == [2]
    assert all(not (Path(uri) / path).exists() for path in unreferenced)
    assert sorted_rows(uri, 2) == pinned
    assert sorted_rows(uri) == [{"id": -1, "value": "new"}]
    with pytest.raises(OSError):
        DeltaTable(uri, version=4).to_pyarrow_table()
    assert DeltaTable(uri).history(1)[0]["medallion.operation"] == "vacuum"
    assert unpin(layout, made.id).version == 2 and [p.who for p in list_pins(layout)] == ["lapsed"]
    done = vacuum_table(layout, "bronze.events", settings=MaintenanceSettings(min_retention_hours=0), hours=0)
    assert len(done.files) == 3 and done.kept_versions == []


def test_due_maintenance_compacts_after_enough_commits_and_vacuums_when_due(tmp_path: Path) -> None:
    uri = appended(tmp_path, commits=4)
    settings = settings_at(tmp_path).model_copy(update={"maintenance": MaintenanceSettings(optimize_after_commits=5)})
    pipeline = Pipeline("events")
    assert optimize_due(uri, "bronze.events", settings, Maintenance()) is None
    assert optimize_due(uri, "bronze.events", settings, Maintenance(optimize_every=3)) is not None
    write_deltalake(uri, pa.table({"id": [1000], "value": ["x"]}), mode="append")
    done = run_due_maintenance(pipeline, settings, ["bronze.events"], now=datetime.now(UTC) + timedelta(days=40))
    assert [(d.operation, d.error) for d in done] == [("optimize", None), ("vacuum", None)]
    assert done[0].result is not None and done[0].result.files_after == 1
    assert "5 small files and 5 or more commits since the last optimize" == done[0].reason
    assert "h since the table was created" in done[1].reason
    assert run_due_maintenance(pipeline, settings, ["bronze.events"]) == []


def test_vacuum_is_due_from_the_newest_vacuum_and_never_before_the_retention_has_passed(tmp_path: Path) -> None:
    """Attacks: "maintenance after runs vacuums when due", with the last vacuum buried under more commits than
    the first page of newest commits holds, and a table vacuumed by hand while younger than its retention."""
    layout = Layout.at(str(tmp_path))
    uri = appended(tmp_path, commits=2)
    write_deltalake(uri, pa.table({"id": [0], "value": ["x"]}), mode="overwrite")  # files for a vacuum to delete
    assert vacuum_table(layout, "bronze.events", settings=MaintenanceSettings(min_retention_hours=0), hours=0).files
    for commit in range(FIRST_COMMITS_READ + 4):
        write_deltalake(uri, pa.table({"id": [commit], "value": ["x"]}), mode="append")
    never = appended(tmp_path, "silver.events", commits=FIRST_COMMITS_READ + 4)
    now = datetime.now(UTC)

    long_retention = MaintenanceSettings(retention_hours={"bronze": 48, "silver": 48}, vacuum_every_hours=1)
    assert vacuum_due(uri, "bronze.events", long_retention, now + timedelta(hours=2)) is None, \
        "a table younger than its retention has no expired file to vacuum"
    assert vacuum_due(uri, "bronze.events", long_retention, now + timedelta(hours=49)) == "49 h since the last vacuum"
    assert vacuum_due(never, "silver.events", long_retention, now + timedelta(hours=47)) is None
    assert vacuum_due(never, "silver.events", long_retention, now + timedelta(hours=49)) == \
        "49 h since the table was created"

    short_retention = MaintenanceSettings(retention_hours={"bronze": 1}, vacuum_every_hours=24)
    assert vacuum_due(uri, "bronze.events", short_retention, now + timedelta(hours=2)) is None
    assert vacuum_due(uri, "bronze.events", short_retention, now + timedelta(hours=25)) == "25 h since the last vacuum"


def test_maintenance_declared_on_a_table_is_validated() -> None:
    assert Maintenance(z_order="x").z_order == ("x",)
    with pytest.raises(Exception, match="optimize_every=0"):
        Maintenance(optimize_every=0)
    pipeline = Pipeline("p")

    @pipeline.table("gold.t", maintenance=Maintenance(z_order=("a",), optimize_every=5))
    def t(silver_s: object) -> object:
        return silver_s

    assert pipeline.tables["gold.t"].maintenance.optimize_every == 5
    assert issubclass(MaintenanceError, Exception) and not issubclass(MaintenanceError, TableFailed)


def test_maintain_commands(tmp_path: Path) -> None:
    uri = appended(tmp_path, commits=6)
    runner = CliRunner()
    root = ["--root", str(tmp_path)]
    result = runner.invoke(main, [*root, "maintain", "optimize", "bronze.events", "--z-order", "id",
                                  "--reason", "weekly"])
    assert result.exit_code == 0, result.output
    assert "bronze.events: 6 files -> 1, z-ordered by id (v6)" in result.output
    assert DeltaTable(uri).history(1)[0]["medallion.reason"] == "weekly"
    result = runner.invoke(main, [*root, "maintain", "pin", "bronze.events", "--as-of", "2", "--who", "feast"])
    assert result.exit_code == 0, result.output
    [made] = list_pins(Layout.at(str(tmp_path)))
    assert (made.table, made.version, made.who) == ("bronze.events", 2, "feast")
    assert made.id in runner.invoke(main, [*root, "maintain", "pins"]).output
    assert "unpinned bronze.events v2 (feast)" in runner.invoke(main, [*root, "maintain", "unpin", made.id]).output
    result = runner.invoke(main, [*root, "maintain", "unpin", made.id])
    assert result.exit_code == 1 and f"no pin `{made.id}`" in result.output


def test_medallion_run_compacts_when_due_and_the_results_stay_the_same(tmp_path: Path) -> None:
    maintained, plain = tmp_path / "maintained", tmp_path / "plain"
    environment = {"MEDALLION__MAINTENANCE__OPTIMIZE_AFTER_COMMITS": "2"}
    outputs = []
    for batch in (1, 2, 3):
        for root in (maintained, plain):
            write_batch(root / "landing", batch)
        result = CliRunner().invoke(main, ["--root", str(maintained), "run", PIPELINE], env=environment)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
        run_to_completion(plain)
    assert "maintenance: optimize of bronze.changes" not in outputs[0]
    assert "maintenance: optimize of bronze.changes (2 small files and 2 or more commits" in outputs[1]
    assert DeltaTable(str(maintained / "bronze" / "changes")).history(2)[1]["medallion.operation"] == "optimize"
    assert_same_tables(maintained, plain)
