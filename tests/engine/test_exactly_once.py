"""Exactly-once: tombstones against late changes, and run processes killed at random points then resumed
leave every table exactly as an uninterrupted run does."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from tests.engine.cdc_pipeline import assert_same_tables, run_to_completion, start_run, write_batch

pytestmark = pytest.mark.usefixtures("ray_local")

KILLS = 20


def test_a_late_change_never_brings_a_deleted_key_back(tmp_path: Path) -> None:
    folder = tmp_path / "landing" / "changes"
    folder.mkdir(parents=True)
    (folder / "a.jsonl").write_text('{"account_id": 1, "country": "US", "balance": 5, "seq": 1, "op": "c"}\n'
                                    '{"account_id": 1, "seq": 5, "op": "d"}\n')
    run_to_completion(tmp_path)
    (folder / "b.jsonl").write_text('{"account_id": 1, "country": "FR", "balance": 7, "seq": 3, "op": "u"}\n')
    run_to_completion(tmp_path)
    accounts = DeltaTable(str(tmp_path / "silver" / "accounts")).to_pyarrow_table()
    assert accounts.num_rows == 0
    history = pl.from_arrow(DeltaTable(str(tmp_path / "gold" / "account_history")).to_pyarrow_table())
    assert history.sort("valid_from").select("country", "valid_from", "valid_to").rows() == [("US", 1, 3),
                                                                                          ("FR", 3, 5)]
    (folder / "c.jsonl").write_text('{"account_id": 1, "country": "DE", "balance": 9, "seq": 6, "op": "c"}\n')
    run_to_completion(tmp_path)
    assert DeltaTable(str(tmp_path / "silver" / "accounts")).to_pyarrow_table().column("country").to_pylist() == ["DE"]


@pytest.mark.slow
def test_runs_killed_at_random_points_then_resumed_equal_an_uninterrupted_run(tmp_path: Path) -> None:
    """Half the runs start from nothing, half from a root where an earlier batch was processed; each is
    killed after a random delay within an uninterrupted run's duration, then run again to completion."""
    starts = {"fresh": tmp_path / "fresh", "incremental": tmp_path / "incremental"}
    for batch in (1, 2):
        write_batch(starts["fresh"] / "landing", batch)
    write_batch(starts["incremental"] / "landing", 1)
    run_to_completion(starts["incremental"])
    write_batch(starts["incremental"] / "landing", 2)
    expected, duration = {}, {}
    for name, start in starts.items():
        expected[name] = tmp_path / f"expected-{name}"
        shutil.copytree(start, expected[name])
        began = time.monotonic()
        assert start_run(expected[name]).wait(timeout=300) == 0
        duration[name] = time.monotonic() - began
    rng = random.Random(2026)
    killed_mid_run = 0
    for attempt in range(KILLS):
        name = ("fresh", "incremental")[attempt % 2]
        root = tmp_path / f"attempt-{attempt}"
        shutil.copytree(starts[name], root)
        process = start_run(root)
        try:
            process.wait(timeout=rng.uniform(0.3, 1.0) * duration[name])
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed_mid_run += 1
        run_to_completion(root)
        assert_same_tables(root, expected[name])
        shutil.rmtree(root)
    assert killed_mid_run >= KILLS // 2
