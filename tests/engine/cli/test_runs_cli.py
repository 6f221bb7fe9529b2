"""`medallion runs` lists recent runs with their status, and a `medallion run` stopped by a signal stops after
the running table, is recorded as interrupted, exits as shells expect, and a later run builds the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import ray.data
from click.testing import CliRunner
from deltalake import DeltaTable

from engine import FileSource, Overwrite, Pipeline
from engine.cli.main import main
from engine.layout import Layout
from engine.runlog import RunRecord, append_records

MEDALLION = str(Path(sys.executable).with_name("medallion"))
REPOSITORY = str(Path(__file__).resolve().parents[3])
RELEASE_ENV = "MEDALLION_TEST_RELEASE"
SIGNAL_ENV = "MEDALLION_TEST_SIGNAL"

paused = Pipeline("paused")
paused.ingest("bronze.orders", FileSource("orders", "jsonl"))


@paused.table("silver.orders", kind=Overwrite())
def silver_orders(bronze_orders: ray.data.Dataset) -> ray.data.Dataset:
    """Waits, when `$MEDALLION_TEST_RELEASE` names a file, until that file exists; sends its own process the
    signal `$MEDALLION_TEST_SIGNAL` when set."""
    if os.environ.get(SIGNAL_ENV):
        os.kill(os.getpid(), int(os.environ[SIGNAL_ENV]))
    release = os.environ.get(RELEASE_ENV)
    if release:
        print("silver.orders waiting", flush=True)
        while not Path(release).exists():
            time.sleep(0.05)
    return bronze_orders


@paused.table("gold.orders", kind=Overwrite())
def gold_orders(silver_orders: ray.data.Dataset) -> ray.data.Dataset:
    return silver_orders


def medallion(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MEDALLION, "--root", str(root), *args], capture_output=True, text=True, timeout=120)


def record(run_id: str, table: str, status: str, at: datetime, **values: object) -> RunRecord:
    values = {"pipeline": "shop", "actor": "ann"} | values
    return RunRecord(run_id=run_id, table=table, status=status, started_at=at, finished_at=at + timedelta(seconds=2),
                     **values)  # type: ignore[arg-type]


def test_runs_lists_each_run_newest_first_with_its_status_and_counts(tmp_path: Path) -> None:
    start = datetime(2026, 5, 1, 8, tzinfo=UTC)
    hour = timedelta(hours=1)
    append_records(Layout.at(str(tmp_path)).runs(), [
        record("r1-succeeded", "bronze.a", "succeeded", start, output_version=0, rows_written=5),
        record("r1-succeeded", "silver.a", "succeeded", start, output_version=0, rows_written=4),
        record("r2-failed", "bronze.a", "failed", start + hour, error="boom"),
        record("r2-failed", "silver.a", "skipped", start + hour),
        record("r3-interrupted", "bronze.a", "succeeded", start + 2 * hour, output_version=1, rows_written=3),
        record("r3-interrupted", "silver.a", "interrupted", start + 2 * hour),
        record("r4-unchanged", "bronze.a", "unchanged", start + 3 * hour),
        record("r5-other", "x.[bold]y[/bold]", "succeeded", start + 4 * hour, output_version=0,
               pipeline="[red]other[/red]", operation="erase", actor="[i]ann[/i]"),
    ])
    shown = medallion(tmp_path, "runs", "--pipeline", "shop")
    assert shown.returncode == 0, shown.stderr
    rows = [line.split("│")[1:-1] for line in shown.stdout.splitlines() if line.startswith("│ r")]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["r4-unchanged", "shop", "2026-05-01 11:00:00", "2.0s", "unchanged", "0", "0", "0", "0", "run", "ann"],
        ["r3-interrupted", "shop", "2026-05-01 10:00:00", "2.0s", "interrupted", "1", "0", "1", "3", "run", "ann"],
        ["r2-failed", "shop", "2026-05-01 09:00:00", "2.0s", "failed", "0", "1", "1", "0", "run", "ann"],
        ["r1-succeeded", "shop", "2026-05-01 08:00:00", "2.0s", "succeeded", "2", "0", "0", "9", "run", "ann"],
    ]
    newest = medallion(tmp_path, "runs", "--limit", "1")
    assert newest.returncode == 0, newest.stderr
    assert "[red]other[/red]" in newest.stdout and "[i]ann[/i]" in newest.stdout and "erase" in newest.stdout
    assert "r4-unchanged" not in newest.stdout
    assert medallion(tmp_path, "runs", "--pipeline", "none").stdout.startswith("no runs of pipeline `none`")
    wrong = medallion(tmp_path, "runs", "--limit", "0")
    assert wrong.returncode == 2 and "--limit" in wrong.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_run_stopped_by_sigint_commits_the_running_table_is_recorded_interrupted_and_resumes(
        tmp_path: Path) -> None:
    landing = tmp_path / "landing" / "orders"
    landing.mkdir(parents=True)
    (landing / "1.jsonl").write_text('{"id": 1}\n{"id": 2}\n')
    release = tmp_path / "release"
    environment = {**os.environ, "RAY_AUTH_MODE": "disabled", "MEDALLION__RAY__NUM_CPUS": "1",
                   "PYTHONPATH": REPOSITORY, RELEASE_ENV: str(release)}
    process = subprocess.Popen([MEDALLION, "--root", str(tmp_path), "run", f"{__name__}:paused"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("silver.orders waiting"):  # bronze.orders has committed: silver.orders reads it
                break
        process.send_signal(signal.SIGINT)
        release.touch()
        # Read on through the same buffered stream: `communicate` reads the pipes' descriptors, and would miss what
        # the loop above read ahead of its last line.
        rest = process.stdout.read()
        assert process.stderr is not None
        stderr = process.stderr.read()
        process.wait(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    printed = [*lines, *rest.splitlines()]
    assert any("bronze.orders" in line and "succeeded" in line for line in printed), printed
    interrupted = [line for line in stderr.splitlines() if " interrupted after " in line]
    assert len(interrupted) == 1 and interrupted[0].endswith("interrupted after 2 of 3 tables; run again to continue")
    run_id = interrupted[0].split()[1]
    assert DeltaTable(str(tmp_path / "silver" / "orders")).version() == 0
    assert not (tmp_path / "gold" / "orders").exists()
    shown = medallion(tmp_path, "runs")
    row = next(line for line in shown.stdout.splitlines() if run_id in line)
    assert "interrupted" in row

    again = CliRunner().invoke(main, ["--root", str(tmp_path), "run", f"{__name__}:paused"])
    assert again.exit_code == 0, again.output
    assert DeltaTable(str(tmp_path / "gold" / "orders")).to_pyarrow_table().num_rows == 2
    assert DeltaTable(str(tmp_path / "silver" / "orders")).version() == 0
    assert "1 table(s) committed" in again.output


@pytest.mark.usefixtures("ray_local")
def test_sigterm_during_a_table_lets_it_commit_then_exits_143(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    landing = tmp_path / "landing" / "orders"
    landing.mkdir(parents=True)
    (landing / "1.jsonl").write_text('{"id": 1}\n')
    monkeypatch.setenv(SIGNAL_ENV, str(int(signal.SIGTERM)))
    previous = signal.getsignal(signal.SIGTERM)
    outcome = CliRunner().invoke(main, ["--root", str(tmp_path), "run", f"{__name__}:paused"])
    assert outcome.exit_code == 143, outcome.output
    assert outcome.output.strip().splitlines()[-1].endswith("interrupted after 2 of 3 tables; run again to continue")
    assert signal.getsignal(signal.SIGTERM) == previous
    assert DeltaTable(str(tmp_path / "silver" / "orders")).to_pyarrow_table().num_rows == 1
    assert not (tmp_path / "gold" / "orders").exists()
