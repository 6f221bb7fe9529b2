"""A table that crashes, for whatever reason, fails alone: every table that does not depend on it still runs, and
the run ends with one line per failed table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray.data
from click.testing import CliRunner
from deltalake import DeltaTable

import engine.run.ingest as ingest_module
from engine import FileSource, Overwrite, Pipeline, Runner
from engine.cli.main import main
from tests.conftest import settings_at

pytestmark = [pytest.mark.adversarial, pytest.mark.usefixtures("ray_local")]

shop = Pipeline("two_branches")
shop.ingest("bronze.orders", FileSource("orders", "jsonl"))
shop.ingest("bronze.refunds", FileSource("refunds", "jsonl"))


@shop.table("silver.orders", kind=Overwrite())
def orders(bronze_orders: ray.data.Dataset) -> ray.data.Dataset:
    return bronze_orders


@shop.table("silver.refunds", kind=Overwrite())
def refunds(bronze_refunds: ray.data.Dataset) -> ray.data.Dataset:
    return bronze_refunds


def land(root: Path) -> None:
    for source in ("orders", "refunds"):
        folder = root / "landing" / source
        folder.mkdir(parents=True)
        (folder / "1.jsonl").write_text('{"id": 1}\n{"id": 2}\n')


def crash_ingesting(monkeypatch: pytest.MonkeyPatch, directory: str) -> None:
    """An unexpected internal error (not one of the engine's own) while listing one source's landing files."""
    original = ingest_module.discover

    def crashing(folder: str, source: FileSource) -> Any:
        if source.directory == directory:
            raise RuntimeError("Unable to merge: Field year has incompatible types\nsecond line of detail")
        return original(folder, source)

    monkeypatch.setattr(ingest_module, "discover", crashing)


def test_a_crashing_table_fails_alone_and_independent_tables_are_built(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Attacks: "independent tables still run when one fails", with an internal crash (not an engine error)
    in the ingestion of one of two independent sources."""
    land(tmp_path)
    crash_ingesting(monkeypatch, "orders")
    result = Runner(shop, settings_at(tmp_path)).run()
    status = {r.table: r.status for r in result.records}
    assert status == {"bronze.orders": "failed", "bronze.refunds": "succeeded", "silver.orders": "skipped",
                      "silver.refunds": "succeeded"}
    error = next(r.error for r in result.records if r.table == "bronze.orders")
    assert error == ("table `bronze.orders` failed: RuntimeError: Unable to merge: Field year has incompatible "
                     "types")
    assert DeltaTable(str(tmp_path / "silver" / "refunds")).to_pyarrow_table().num_rows == 2
    assert not (tmp_path / "silver" / "orders").exists()


def test_the_command_ends_with_one_line_per_failed_table_and_no_traceback(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Attacks: "every error a user can cause ends in one line and a non-zero exit", with two of four tables
    crashing in one run."""
    land(tmp_path)

    def crashing(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk on fire")

    monkeypatch.setattr(ingest_module, "discover", crashing)
    outcome = CliRunner().invoke(main, ["--root", str(tmp_path), "run", "tests.adversarial.test_partial_failure:shop"])
    assert outcome.exit_code == 1
    assert "Traceback" not in outcome.output
    failed = [line for line in outcome.output.splitlines() if line.startswith("failed:")]
    assert failed == [f"failed: table `{t}` failed: OSError: disk on fire"
                              for t in ("bronze.orders", "bronze.refunds")]
    last = outcome.output.strip().splitlines()[-1]
    assert last.startswith("error: run ") and "2 table(s) failed (bronze.orders, bronze.refunds)" in last
    assert "2 skipped" in last
