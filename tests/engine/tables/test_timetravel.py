"""Time travel: reads and restores as of a version or a point in time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable, write_deltalake

from engine.cli.main import main
from engine.errors import EngineError, TableNotFound
from engine.tables.timetravel import parse_as_of, version_as_of

TABLE = "bronze.events"


def three_versions(root: Path) -> tuple[str, list[datetime]]:
    """`bronze.events` at v0 (ids 1, 2), v1 (overwritten: id 3), v2 (id 4 appended); the commit times."""
    uri = str(root / "bronze" / "events")
    write_deltalake(uri, pa.table({"id": [1, 2], "name": ["a", "b"]}))
    write_deltalake(uri, pa.table({"id": [3], "name": ["c"]}), mode="overwrite")
    write_deltalake(uri, pa.table({"id": [4], "name": ["d"]}), mode="append")
    commits = sorted(DeltaTable(uri).history(), key=lambda c: c["version"])
    return uri, [datetime.fromtimestamp(c["timestamp"] / 1000, UTC) for c in commits]


def ids(uri: str) -> list[int]:
    return sorted(DeltaTable(uri).to_pyarrow_table().column("id").to_pylist())


def test_as_of_resolves_versions_and_times(tmp_path: Path) -> None:
    uri, times = three_versions(tmp_path)
    assert version_as_of(uri, TABLE, None) == 2
    assert version_as_of(uri, TABLE, "1") == 1
    assert version_as_of(uri, TABLE, times[1].isoformat()) == 1
    assert version_as_of(uri, TABLE, times[1] - timedelta(milliseconds=1)) == 0
    assert version_as_of(uri, TABLE, times[2].replace(tzinfo=None).isoformat()) == 2
    assert parse_as_of("2026-11-26T10:00:00") == datetime(2026, 11, 26, 10, tzinfo=UTC)
    with pytest.raises(EngineError, match="table `bronze.events` did not exist yet at"):
        version_as_of(uri, TABLE, times[0] - timedelta(seconds=1))
    with pytest.raises(TableNotFound, match="has no version 7"):
        version_as_of(uri, TABLE, 7)
    with pytest.raises(EngineError, match="give a version number or an ISO-8601 time"):
        parse_as_of("yesterday")


def test_show_and_history_as_of(tmp_path: Path) -> None:
    _, times = three_versions(tmp_path)
    runner = CliRunner()
    old = runner.invoke(main, ["--root", str(tmp_path), "show", TABLE, "--as-of", "0"])
    assert old.exit_code == 0, old.output
    assert "bronze.events v0, first 2 rows" in old.output and "│ b " in old.output and "│ c " not in old.output
    by_time = runner.invoke(main, ["--root", str(tmp_path), "show", TABLE, "--as-of", times[1].isoformat()])
    assert "bronze.events v1, first 1 rows" in by_time.output and "│ c " in by_time.output
    latest = runner.invoke(main, ["--root", str(tmp_path), "show", TABLE, "--limit", "1"])
    assert "bronze.events v2, first 1 rows" in latest.output
    history = runner.invoke(main, ["--root", str(tmp_path), "history", TABLE, "--as-of", "1"])
    assert history.exit_code == 0, history.output
    assert "│       1 │" in history.output and "│       2 │" not in history.output
    missing = runner.invoke(main, ["--root", str(tmp_path), "show", TABLE, "--as-of", "9"])
    assert missing.exit_code == 1 and "has no version 9" in missing.output


def test_restore_to_a_point_in_time(tmp_path: Path) -> None:
    uri, times = three_versions(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["--root", str(tmp_path), "restore", TABLE, "--timestamp",
                                  (times[1] - timedelta(milliseconds=1)).isoformat(), "--reason", "bad overwrite"])
    assert result.exit_code == 0, result.output
    assert "bronze/events: back to version 0 (v3)" in result.output
    assert ids(uri) == [1, 2]
    assert DeltaTable(uri).history(1)[0]["medallion.reason"] == "bad overwrite"
    unchanged = runner.invoke(main, ["--root", str(tmp_path), "restore", TABLE, "--timestamp",
                                     datetime.now(UTC).isoformat()])
    assert unchanged.exit_code == 1 and "has not changed since" in unchanged.output
    number = runner.invoke(main, ["--root", str(tmp_path), "restore", TABLE, "--timestamp", "2"])
    assert number.exit_code == 1 and "--timestamp takes an ISO-8601 time" in number.output
    both = runner.invoke(main, ["--root", str(tmp_path), "restore", TABLE, "--version", "1", "--timestamp", "x"])
    assert both.exit_code == 1 and "TABLE --timestamp ISO-TIME" in both.output


def test_status_as_of_a_time(tmp_path: Path) -> None:
    _, times = three_versions(tmp_path)
    write_deltalake(str(tmp_path / "gold" / "later"), pa.table({"x": [1]}))
    runner = CliRunner()
    result = runner.invoke(main, ["--root", str(tmp_path), "status", "--as-of", times[0].isoformat()])
    assert result.exit_code == 0, result.output
    assert "bronze.events" in result.output and "gold.later" not in result.output
    assert "│       0 │    2 │" in result.output
    now = runner.invoke(main, ["--root", str(tmp_path), "status"])
    assert "gold.later" in now.output and "│       2 │    2 │" in now.output
    number = runner.invoke(main, ["--root", str(tmp_path), "status", "--as-of", "3"])
    assert number.exit_code == 1 and "takes an ISO-8601 time" in number.output
