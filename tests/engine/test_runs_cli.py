"""`medallion runs` lists recent runs with their status."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.runlog import RunRecord, append_records
from engine.tables.layout import Layout

MEDALLION = str(Path(sys.executable).with_name("medallion"))


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
