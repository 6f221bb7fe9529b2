"""Runs at the same time as other runs and as maintenance, the way operators start them: every table must end as
one uninterrupted run leaves it, with no landing file ingested twice and no rejected row quarantined twice."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import ray
from deltalake import DeltaTable

import engine.run.build as build_module
import engine.run.ingest as ingest_module
from engine import Runner
from engine.config import Settings
from engine.layout import Layout
from engine.maintenance.optimize import optimize_table
from engine.maintenance.vacuum import vacuum_table
from engine.runlog import read_records
from tests.conftest import settings_at
from tests.engine.cdc_pipeline import PIPELINE, REPO, assert_same_tables, pipeline, run_to_completion, write_batch

pytestmark = [pytest.mark.adversarial, pytest.mark.usefixtures("ray_local")]


def landed_lines(root: Path) -> int:
    return sum(len(path.read_text().splitlines()) for path in (root / "landing").rglob("*.jsonl"))


def rows(root: Path, folder: str) -> int:
    return DeltaTable(str(root / folder)).to_pyarrow_table().num_rows


def assert_conserved(root: Path) -> None:
    """Conservation, run by run: every silver record's rows in are rows written, quarantined or dropped as
    duplicates; and over every run, the incremental silver table read each bronze row exactly once."""
    records = read_records(str(root / "_meta" / "runs")).filter(pl.col("status") == "succeeded")
    silver = records.filter(pl.col("table") == "silver.accounts")
    unbalanced = silver.filter(pl.col("rows_in") != pl.col("rows_written") + pl.col("rows_quarantined")
                               + pl.col("rows_duplicate"))
    assert unbalanced.is_empty(), unbalanced
    assert silver["rows_in"].sum() == rows(root, "bronze/changes")


@pytest.fixture(scope="module")
def reference_root(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Callable[[tuple[int, ...]], Path]:
    """A root where the given batches were run once, uninterrupted: built once per batches for the module's
    tests, which only read it (or copy it)."""
    built: dict[tuple[int, ...], Path] = {}

    def reference(batches: tuple[int, ...]) -> Path:
        if batches not in built:
            root = tmp_path_factory.mktemp("reference") / "root"
            for batch in batches:
                write_batch(root / "landing", batch)
            run_to_completion(root)
            built[batches] = root
        return built[batches]

    return reference


def medallion(root: Path, *args: str) -> subprocess.Popen[str]:
    """`medallion run` of the CDC pipeline in its own process, attached to this session's Ray."""
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    command = [str(Path(sys.executable).parent / "medallion"), "--root", str(root),
               "--address", ray.get_runtime_context().gcs_address, "run", PIPELINE, *args]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_run_processes_started_together_ingest_every_file_once(
        tmp_path: Path, reference_root: Callable[[tuple[int, ...]], Path]) -> None:
    """Attacks: "each landing file is ingested once" and "exactly-once commits", with two `medallion run`
    processes started at the same moment on one root. One holds the run lease; the other refuses at once in one
    line naming the holder; the tables equal one uninterrupted run's."""
    root = tmp_path / "root"
    for batch in (1, 2):
        write_batch(root / "landing", batch)
    reference = reference_root((1, 2))
    processes = [medallion(root), medallion(root)]
    outcomes = [(process.wait(timeout=600), process.communicate()[0]) for process in processes]
    for code, output in outcomes:
        assert "Traceback" not in output, output
        if code != 0:
            refusal = [line for line in output.splitlines() if line.startswith("error:")]
            assert len(refusal) == 1 and "is being run by run" in refusal[0] and "--take-over" in refusal[0], output
    assert 0 in [code for code, _ in outcomes]
    assert rows(root, "bronze/changes") == landed_lines(root)
    run_to_completion(root)
    assert_same_tables(root, reference)
    assert_conserved(root)


def race_once(monkeypatch: pytest.MonkeyPatch, target: str, before: Callable[..., Any], *,
              table: str | None = None) -> None:
    """Make the runner's `target` (a name in `engine.run.ingest`, or in `engine.run.build` with `table`) run
    `before` right after its first call for `table` returned: another writer acting between staging and commit."""
    owner: Any = build_module if table else ingest_module
    original = getattr(owner, target)

    def racing(*args: Any, **kwargs: Any) -> Any:
        if table is not None and args[1].name != table:
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, target, original)
        staged = original(*args, **kwargs)
        before()
        return staged

    monkeypatch.setattr(owner, target, racing)


def another_writer(outer: Runner, settings: Settings) -> Callable[[], None]:
    """A whole run of the same pipeline that holds no lease of its own (it shares `outer`'s): a writer that
    bypasses the lease."""
    def run() -> None:
        inner = Runner(pipeline, settings)
        inner._lease = outer._lease
        result = inner.run()
        assert result.succeeded, [r.error for r in result.records if r.error]
    return run


def test_a_writer_bypassing_the_lease_cannot_ingest_a_file_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference_root: Callable[[tuple[int, ...]], Path]) -> None:
    """Attacks: "each landing file is ingested once", with a second writer that skips the lease and commits the
    same landing files while the first is between staging and its commit. The first one's commit is refused
    because the table moved since its checkpoint was read."""
    root = tmp_path / "root"
    write_batch(root / "landing", 1)
    reference = reference_root((1,))
    settings = settings_at(root)
    outer = Runner(pipeline, settings)
    race_once(monkeypatch, "ingest_new_files", another_writer(outer, settings))
    result = outer.run()
    bronze = next(r for r in result.records if r.table == "bronze.changes")
    assert bronze.status == "failed" and "already committed" in (bronze.error or "")
    assert rows(root, "bronze/changes") == landed_lines(root)
    assert_same_tables(root, reference)
    assert_conserved(root)
    staged = {p.name for p in (root / "bronze" / "changes").glob("*.parquet")}
    live = {Path(uri).name for uri in DeltaTable(str(root / "bronze" / "changes")).file_uris()}
    assert staged == live, "the refused writer's staged files were left behind"


def test_a_writer_bypassing_the_lease_cannot_quarantine_rows_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference_root: Callable[[tuple[int, ...]], Path]) -> None:
    """Attacks: "rejected rows go to quarantine" once, with a second writer that, while the first has staged
    the silver table of delivery 1, ingests delivery 2 and builds silver (quarantining the bad rows of both). The
    first one's quarantine commit is refused: the quarantine moved since the work began."""
    root = tmp_path / "root"
    write_batch(root / "landing", 1)
    reference = reference_root((1, 2))
    settings = settings_at(root)
    outer = Runner(pipeline, settings)
    inner = another_writer(outer, settings)

    def deliver_and_run() -> None:
        write_batch(root / "landing", 2)
        inner()

    race_once(monkeypatch, "stage_rows", deliver_and_run, table="silver.accounts")
    result = outer.run()
    silver = next(r for r in result.records if r.table == "silver.accounts")
    assert silver.status == "failed" and "already committed" in (silver.error or "")
    assert rows(root, "quarantine/silver/accounts") == rows(reference, "quarantine/silver/accounts") > 0
    run_to_completion(root)
    assert_same_tables(root, reference)
    assert_conserved(root)


def test_maintenance_between_staging_and_commit_loses_and_duplicates_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference_root: Callable[[tuple[int, ...]], Path]) -> None:
    """Attacks: "exactly-once commits" with `maintain optimize` and `vacuum` running on every table of the
    pipeline while a run has staged its next delivery and not yet committed it."""
    root = tmp_path / "root"
    shutil.copytree(reference_root((1,)), root)  # batch 1, run
    write_batch(root / "landing", 2)
    run_to_completion(root)
    write_batch(root / "landing", 3)
    reference = reference_root((1, 2, 3))
    settings = settings_at(root)
    layout = Layout.at(str(root))
    compacted: list[int | None] = []

    def maintain_everything() -> None:
        for table in pipeline.tables:
            compacted.append(optimize_table(layout.table(table), table, storage=settings.storage,
                                            reason="concurrent maintenance").version)
            vacuum_table(layout, table, settings=settings.maintenance)

    race_once(monkeypatch, "ingest_new_files", maintain_everything)
    run_to_completion(root)
    assert any(version is not None for version in compacted)
    assert rows(root, "bronze/changes") == landed_lines(root)
    assert_same_tables(root, reference)
    assert_conserved(root)


def test_a_delivery_whose_rows_are_all_rejected_is_quarantined_once(tmp_path: Path) -> None:
    """Attacks: a rejected row is recorded once, with a delivery every row of which the silver contract rejects,
    followed by deliveries that move the table's input; the quarantine must hold what one run over all of them
    quarantines."""
    root, reference = tmp_path / "root", tmp_path / "reference"
    for landing in (root, reference):
        folder = landing / "landing" / "changes"
        folder.mkdir(parents=True)
        (folder / "all-bad.jsonl").write_text("".join(
            f'{{"account_id": "x", "country": "US", "balance": 1, "seq": {i}, "op": "c"}}\n' for i in range(50)))
    write_batch(reference / "landing", 1)
    write_batch(reference / "landing", 2)
    run_to_completion(root)
    assert rows(root, "quarantine/silver/accounts") == 50
    for batch in (1, 2):
        write_batch(root / "landing", batch)
        run_to_completion(root)
    run_to_completion(reference)
    assert rows(root, "quarantine/silver/accounts") == rows(reference, "quarantine/silver/accounts") > 50
    assert_same_tables(root, reference)


def test_a_run_with_nothing_new_writes_nothing(tmp_path: Path,
                                               reference_root: Callable[[tuple[int, ...]], Path]) -> None:
    """Attacks: "a run with nothing to do writes nothing", with runs repeated on an unchanged root: no run
    record, no commit, no file of any table changes (the run lease, in `_meta/leases`, aside)."""
    root = tmp_path / "root"
    shutil.copytree(reference_root((1,)), root)  # batch 1, run

    def files() -> dict[str, tuple[int, int]]:
        return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
                if p.is_file() and "leases" not in p.parts}

    before = files()
    for _ in range(2):
        result = run_to_completion(root)
        assert {r.status for r in result.records} == {"unchanged"}
    assert files() == before


def test_an_idle_watch_writes_nothing_and_prints_nothing(
        tmp_path: Path, reference_root: Callable[[tuple[int, ...]], Path]) -> None:
    """Attacks: "`--watch` stays quiet when idle", with a watch over a root that has nothing new for many
    micro-batches: the run records and every table stay at their versions, and it prints nothing per batch."""
    root = tmp_path / "root"
    shutil.copytree(reference_root((1,)), root)  # batch 1, run
    records = DeltaTable(str(root / "_meta" / "runs")).version()
    metrics = tmp_path / "metrics.prom"
    watch = medallion(root, "--watch", "0.05", "--metrics-file", str(metrics))
    written: set[int] = set()
    try:
        while len(written) < 8 and watch.poll() is None:  # the file is rewritten after every micro-batch
            if metrics.exists():
                written.add(metrics.stat().st_mtime_ns)
            time.sleep(0.01)
        watch.send_signal(signal.SIGTERM)
        output = watch.communicate(timeout=120)[0]
    finally:
        watch.kill()
    assert watch.returncode == 0, output
    assert len(written) >= 8
    assert DeltaTable(str(root / "_meta" / "runs")).version() == records
    batch_lines = [line for line in output.splitlines() if line.startswith("run ") and "finished" in line]
    assert batch_lines == [], output
