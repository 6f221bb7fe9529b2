"""Continuous mode (`run --watch`) with a clean stop on SIGTERM, and full refreshes."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from engine.layout import Layout
from engine.tables import delta
from engine.tables.progress import INPUTS_KEY
from tests.engine.cdc_pipeline import assert_same_tables, build, pipeline, run_to_completion, start_run, write_batch

pytestmark = pytest.mark.usefixtures("ray_local")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def caught_up(root: Path, landed_files: int) -> bool:
    """Every landing file is ingested and every derived table was built from its inputs' latest versions."""
    layout = Layout.at(str(root))
    bronze = layout.table("bronze.changes")
    if not delta.table_exists(bronze):
        return False
    ingested = sum(len(delta.commit_info_value(c, "files") or []) for c in delta.history(bronze, "bronze.changes"))
    if ingested < landed_files:
        return False
    for table, inputs in pipeline.resolve().items():
        if table.startswith("bronze."):
            continue
        wanted = {t: delta.latest_version(layout.table(t)) for t in inputs.dependencies}
        if delta.last_commit_value(layout.table(table), table, INPUTS_KEY) != wanted:
            return False
    return True


def test_watch_processes_each_landing_batch_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    watched, expected = tmp_path / "watched", tmp_path / "expected"
    write_batch(watched / "landing", 1)
    process = start_run(watched, "--watch", "0.2")
    try:
        wait_for(lambda: caught_up(watched, 1), "the first batch")
        write_batch(watched / "landing", 2)
        wait_for(lambda: caught_up(watched, 2), "the second batch")
        write_batch(watched / "landing", 3)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
    finally:
        process.kill()
    run_to_completion(watched)
    for batch in (1, 2, 3):
        write_batch(expected / "landing", batch)
    run_to_completion(expected)
    assert_same_tables(watched, expected)
    commits = DeltaTable(str(watched / "bronze" / "changes")).history()
    assert all(c.get("medallion.run_id") for c in commits)


def test_changed_logic_rebuilds_the_derived_tables_it_reaches_as_full_refresh_does(tmp_path: Path) -> None:
    incremental, fresh = tmp_path / "incremental", tmp_path / "fresh"
    for batch in (1, 2):
        write_batch(incremental / "landing", batch)
        run_to_completion(incremental)
        write_batch(fresh / "landing", batch)
    changed = build(country_case="lower")
    plain = run_to_completion(incremental, changed)
    assert {r.table: (r.status, r.details.get("rebuilt", {}).get("change")) for r in plain.records} == {
        "bronze.changes": ("unchanged", None), "silver.accounts": ("succeeded", "breaking"),
        "gold.account_history": ("succeeded", "breaking"), "gold.balance_by_country": ("succeeded", "breaking"),
        "gold.account_summary": ("succeeded", "breaking")}
    run_to_completion(fresh, changed)
    assert_same_tables(incremental, fresh)
    refreshed = run_to_completion(incremental, changed, full_refresh=True)
    assert {r.table: r.status for r in refreshed.records}["bronze.changes"] == "unchanged"
    countries = pl.from_arrow(DeltaTable(str(incremental / "gold" / "account_history")).to_pyarrow_table())
    assert set(countries["country"].drop_nulls()) == {"us", "fr", "de"}
    assert DeltaTable(str(incremental / "bronze" / "changes")).version() == 1
