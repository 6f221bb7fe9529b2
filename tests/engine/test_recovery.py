"""Restoring tables: undoing a bad run on every table, then rebuilding from the restored state."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from deltalake import DeltaTable

from engine.cli.main import main
from engine.errors import EngineError
from engine.recovery import restore_table
from tests.engine.cdc_pipeline import assert_same_tables, run_to_completion, write_batch

pytestmark = pytest.mark.usefixtures("ray_local")


def test_a_bad_run_is_undone_on_every_table_and_a_corrected_delivery_is_ingested(tmp_path: Path) -> None:
    root, before, expected = tmp_path / "root", tmp_path / "before", tmp_path / "expected"
    write_batch(root / "landing", 1)
    run_to_completion(root)
    shutil.copytree(root, before)
    bad = root / "landing" / "changes" / "changes-002.jsonl"
    write_batch(root / "landing", 2)
    bad.write_text(bad.read_text().replace('"US"', '"XX"'))
    bad_run = run_to_completion(root).run_id
    result = CliRunner().invoke(main, ["--root", str(root), "restore", "--before-run", bad_run,
                                       "--reason", "bad delivery"])
    assert result.exit_code == 0, result.output
    assert "bronze/changes: back to version 0" in result.output
    assert_same_tables(root, before)
    assert DeltaTable(str(root / "bronze" / "changes")).history(1)[0]["medallion.reason"] == "bad delivery"
    write_batch(root / "landing", 2)
    run_to_completion(root)
    for batch in (1, 2):
        write_batch(expected / "landing", batch)
    run_to_completion(expected)
    assert_same_tables(root, expected)


def test_restore_refuses_unknown_versions_and_usage_errors(tmp_path: Path) -> None:
    write_batch(tmp_path / "landing", 1)
    run_to_completion(tmp_path)
    with pytest.raises(EngineError, match="restore to a version from -1 to -1"):
        restore_table(str(tmp_path / "bronze" / "changes"), 3, reason="x")
    result = CliRunner().invoke(main, ["--root", str(tmp_path), "restore", "bronze.changes"])
    assert result.exit_code == 1 and "give either TABLE --version N, or --before-run RUN_ID" in result.output
    result = CliRunner().invoke(main, ["--root", str(tmp_path), "restore", "--before-run", "nope"])
    assert result.exit_code == 1 and "no table under" in result.output
