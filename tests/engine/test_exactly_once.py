"""Exactly-once: tombstones against late changes, and run processes killed at random points then resumed
leave every table exactly as an uninterrupted run does."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from engine.layout import Layout
from engine.runlog import read_records
from tests.engine.cdc_pipeline import assert_same_tables, run_to_completion, start_run, write_batch

pytestmark = pytest.mark.usefixtures("ray_local")

PLACES = ("before", "during", "after")
AIMS = ("before", "during", "during", "after")
SCHEDULE = tuple((name, aim) for aim in AIMS for name in ("fresh", "incremental"))
"""Every start gets every aim (and two kills during its commits), alternating between the starts."""
KILLS = len(SCHEDULE)
MAX_ATTEMPTS = 2 * KILLS


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


def commit_files(root: Path) -> set[str]:
    """The commit files of every table, quarantine and change log under `root`, relative to it."""
    found = set()
    for folder, _, names in os.walk(root):  # tolerates folders the run process removes meanwhile
        relative = Path(folder).relative_to(root)
        if relative.name == "_delta_log" and "_meta" not in relative.parts:
            found |= {str(relative / name) for name in names if name.endswith(".json")}
    return found


def wait_for(process: subprocess.Popen[bytes], root: Path, known: set[str], commits: int | None = None,
             seconds: float = math.inf) -> float:
    """Poll the commit logs under `root` until the run process has written `commits` commit files besides the
    `known` ones, `seconds` have passed or it has ended; returns the seconds waited."""
    began = time.monotonic()
    while (process.poll() is None and time.monotonic() - began < seconds
           and (commits is None or len(commit_files(root) - known) < commits)):
        time.sleep(0.01)
    return time.monotonic() - began


@pytest.mark.slow
@pytest.mark.adversarial
@pytest.mark.timeout(2400)
def test_runs_killed_at_random_points_then_resumed_equal_an_uninterrupted_run(tmp_path: Path) -> None:
    """Attacks: "a run killed at any point and run again leaves every table as an uninterrupted run would".
    Half the runs start from nothing, half from a root where an earlier batch was processed. Each is killed
    before its first commit (after a random part of the time an uninterrupted run takes to get there), during
    its commits (once a random number of them is written) or after its last commit, then run again to
    completion; both starts are aimed at every place. Where each kill landed is read from the commit logs, and
    every place must be hit."""
    starts = {"fresh": tmp_path / "fresh", "incremental": tmp_path / "incremental"}
    for batch in (1, 2):
        write_batch(starts["fresh"] / "landing", batch)
    write_batch(starts["incremental"] / "landing", 1)
    run_to_completion(starts["incremental"])
    write_batch(starts["incremental"] / "landing", 2)
    expected, before, new, first_commit = {}, {}, {}, {}
    for name, start in starts.items():
        expected[name] = tmp_path / f"expected-{name}"
        shutil.copytree(start, expected[name])
        before[name] = commit_files(start)
        process = start_run(expected[name])
        first_commit[name] = wait_for(process, expected[name], before[name], commits=1)
        assert process.wait(timeout=300) == 0
        new[name] = commit_files(expected[name]) - before[name]
    summary = read_records(Layout.at(str(expected["incremental"])).runs()).filter(
        pl.col("table") == "gold.account_summary")
    assert json.loads(summary["details"][-1])["keys_recomputed"] > 0
    rng = random.Random(2026)
    landed = dict.fromkeys(PLACES, 0)
    for attempt in range(MAX_ATTEMPTS):
        if sum(landed.values()) >= KILLS and all(landed.values()):
            break
        name, aim = SCHEDULE[attempt % len(SCHEDULE)]
        root = tmp_path / f"attempt-{attempt}"
        shutil.copytree(starts[name], root)
        process = start_run(root)
        if aim == "before":
            wait_for(process, root, before[name], seconds=rng.uniform(0.2, 0.9) * first_commit[name])
        else:
            wait_for(process, root, before[name],
                     commits=rng.randrange(1, len(new[name])) if aim == "during" else len(new[name]))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            made = len(commit_files(root) - before[name])
            landed["before" if made == 0 else "after" if made == len(new[name]) else "during"] += 1
        run_to_completion(root)
        assert_same_tables(root, expected[name])
        shutil.rmtree(root)
    assert sum(landed.values()) >= KILLS and all(landed.values()), landed
