"""A run with nothing to do is answered from the tables' logs without starting Ray, and hides no work: new landing
files, a table that failed, a landing file changed after ingestion, a table that reads no table, and an actor who
may not run the pipeline all still go through a real run (or its refusal).

The commands run in their own process, which logs when it starts Ray."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import ray.data
from click.testing import CliRunner

from engine import FileSource, Overwrite, Pipeline, Runner, load_settings
from engine.changes.plan import plan
from engine.cli.main import main
from engine.errors import AccessDenied
from engine.governance.actor import ACTOR_ENV
from tests.conftest import settings_at

pytestmark = pytest.mark.usefixtures("ray_local")

MEDALLION = str(Path(sys.executable).with_name("medallion"))
REPOSITORY = str(Path(__file__).resolve().parents[3])
FAIL_ENV = "MEDALLION_TEST_FAIL_GOLD"

shop = Pipeline("idle_shop")
shop.ingest("bronze.orders", FileSource("orders", "jsonl", on_change="fail"))


@shop.table("silver.orders", kind=Overwrite())
def silver_orders(bronze_orders: ray.data.Dataset) -> ray.data.Dataset:
    return bronze_orders.select_columns(["id"])


@shop.table("gold.orders", kind=Overwrite())
def gold_orders(silver_orders: ray.data.Dataset) -> ray.data.Dataset:
    if os.environ.get(FAIL_ENV):
        raise ValueError("gold is broken today")
    return silver_orders


def land(root: Path, name: str, ids: list[int]) -> Path:
    folder = root / "landing" / "orders"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps({"id": i}) + "\n" for i in ids))
    return folder / name


def run_command(root: Path) -> subprocess.CompletedProcess[str]:
    """`medallion run` of the shop pipeline in a process of its own, logging at INFO."""
    environment = {**os.environ, "PYTHONPATH": REPOSITORY, "RAY_AUTH_MODE": "disabled",
                   "MEDALLION__RAY__NUM_CPUS": "1"}
    environment.pop(FAIL_ENV, None)
    return subprocess.run([MEDALLION, "--root", str(root), "--log-level", "INFO", "run", f"{__name__}:shop"],
                          capture_output=True, text=True, env=environment, timeout=300)


def answered_idle(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0 and "nothing new: no table committed" in result.stdout \
        and "Ray was not started" in result.stdout and "starting a private Ray instance" not in result.stderr


def test_a_run_with_nothing_to_do_answers_from_the_logs_and_new_files_still_run(tmp_path: Path) -> None:
    land(tmp_path, "1.jsonl", [1, 2])
    assert Runner(shop, settings_at(tmp_path)).run().succeeded
    idle = run_command(tmp_path)
    assert answered_idle(idle), idle.stdout + idle.stderr
    assert re.findall(r"^\[\s*\d+/3\] unchanged\s+(\S+)", idle.stdout, re.MULTILINE) == shop.select(None)
    land(tmp_path, "2.jsonl", [3])
    assert Runner(shop, settings_at(tmp_path)).idle_plan() is None
    busy = CliRunner().invoke(main, ["--root", str(tmp_path), "run", f"{__name__}:shop"])
    assert busy.exit_code == 0 and "3 table(s) committed" in busy.output, busy.output


def test_a_failed_table_and_a_changed_landing_file_are_not_answered_idle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = land(tmp_path, "1.jsonl", [1, 2])
    monkeypatch.setenv(FAIL_ENV, "1")
    failed = Runner(shop, settings_at(tmp_path)).run()
    assert [r.status for r in failed.records] == ["succeeded", "succeeded", "failed"]
    assert Runner(shop, settings_at(tmp_path)).idle_plan() is None  # gold is still to build
    monkeypatch.delenv(FAIL_ENV)
    rebuilt = CliRunner().invoke(main, ["--root", str(tmp_path), "run", f"{__name__}:shop"])
    assert rebuilt.exit_code == 0 and "1 table(s) committed" in rebuilt.output, rebuilt.output
    assert Runner(shop, settings_at(tmp_path)).idle_plan() is not None

    file.write_text(file.read_text() + json.dumps({"id": 9}) + "\n")  # the source refuses changed files
    assert Runner(shop, settings_at(tmp_path)).idle_plan() is None
    refused = CliRunner().invoke(main, ["--root", str(tmp_path), "run", f"{__name__}:shop"])
    assert refused.exit_code == 1 and "changed after they were ingested" in refused.output, refused.output


def test_a_table_that_reads_no_table_is_built_by_every_run(tmp_path: Path) -> None:
    calendar = Pipeline("calendar")

    @calendar.table("gold.days", kind=Overwrite())
    def days() -> ray.data.Dataset:
        return ray.data.from_arrow(pa.table({"day": [1, 2, 3]}))

    assert Runner(calendar, settings_at(tmp_path)).run().succeeded
    [planned] = plan(calendar, settings_at(tmp_path))
    assert planned.action == "build" and "reads no table" in planned.reasons[-1]
    assert Runner(calendar, settings_at(tmp_path)).idle_plan() is None


def test_an_actor_who_may_not_run_the_pipeline_is_refused_even_with_nothing_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    land(tmp_path, "1.jsonl", [1])
    assert Runner(shop, settings_at(tmp_path)).run().succeeded
    guarded = load_settings(overrides={"storage": {"root": str(tmp_path)}, "access": {
        "enforce": True, "roles": {"analyst": {"read": ["gold.*"]}}, "members": {"ann": ["analyst"]}}})
    monkeypatch.setenv(ACTOR_ENV, "ann")
    with pytest.raises(AccessDenied, match="`ann`.*may not write"):
        Runner(shop, guarded).idle_plan()
