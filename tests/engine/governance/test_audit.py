"""The audit trail: who, when, which table and version, and why, in commits, run records and `medallion audit`."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pyarrow as pa
import pytest
import ray.data
from click.testing import CliRunner
from deltalake import DeltaTable

from engine import FileSource, Merge, Pipeline, Runner
from engine.cli.main import main
from engine.governance.audit import audit_trail
from engine.governance.erase import erase_subject
from engine.layout import Layout
from engine.recovery import restore_table
from engine.runlog import read_records
from tests.conftest import settings_at

pytestmark = pytest.mark.usefixtures("ray_local")

SHOP = Pipeline("audited_shop")
SHOP.ingest("bronze.orders", FileSource("orders", "jsonl"), subject="customer_id")


def _typed(batch: pa.Table) -> pa.Table:
    return pa.table({"order_id": batch.column("order_id").cast(pa.int64()),
                     "customer_id": batch.column("customer_id").cast(pa.int64()),
                     "seq": batch.column("seq").cast(pa.int64())})


@SHOP.table("silver.orders", kind=Merge(keys=["order_id"], sequence_by="seq"), incremental=True,
            subject="customer_id")
def orders(bronze_orders: ray.data.Dataset) -> ray.data.Dataset:
    return bronze_orders.map_batches(_typed, batch_format="pyarrow")


def _land(root: Path, name: str, rows: list[dict[str, int]]) -> None:
    folder = root / "landing" / "orders"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_writes_restores_and_erasures_are_audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_at(tmp_path)
    layout = Layout.at(str(tmp_path))
    _land(tmp_path, "a.jsonl", [{"order_id": 1, "customer_id": 7, "seq": 1}, {"order_id": 2, "customer_id": 8, "seq": 1}])
    monkeypatch.setenv("MEDALLION_ACTOR", "alice")
    assert Runner(SHOP, settings, reason="initial load").run().succeeded
    commit = DeltaTable(layout.table("silver.orders")).history(1)[0]
    assert (commit["medallion.actor"], commit["medallion.reason"], commit["medallion.operation"]) == (
        "alice", "initial load", "run")

    monkeypatch.delenv("MEDALLION_ACTOR")
    _land(tmp_path, "b.jsonl", [{"order_id": 3, "customer_id": 7, "seq": 2}])
    assert Runner(SHOP, settings).run().succeeded
    restore_table(layout.table("silver.orders"), 0, reason="bad batch")
    monkeypatch.setenv("MEDALLION_ACTOR", "bob")
    erase_subject(settings, [SHOP], "7", reason="ticket 42")

    records = read_records(layout.runs())
    assert set(zip(records["actor"], records["reason"], records["operation"])) == {
        ("alice", "initial load", "run"), (getpass.getuser(), "pipeline run", "run"), ("bob", "ticket 42", "erase")}

    trail = audit_trail(str(tmp_path), "silver.orders")
    assert [(e.version, e.operation, e.actor, e.reason) for e in trail] == [
        (0, "run", "alice", "initial load"),
        (1, "run", getpass.getuser(), "pipeline run"),
        (2, "restore", getpass.getuser(), "bad batch"),
        (3, "erase", "bob", "ticket 42"),
    ]
    assert {e.table for e in audit_trail(str(tmp_path), "*.orders")} == {"bronze.orders", "silver.orders"}
    assert audit_trail(str(tmp_path), since=trail[-1].at) == [e for e in audit_trail(str(tmp_path))
                                                               if e.at >= trail[-1].at]

    shown = CliRunner().invoke(main, ["--root", str(tmp_path), "audit", "silver.orders"])
    assert shown.exit_code == 0, shown.output
    assert all(word in shown.output for word in ("alice", "initial load", "bob", "ticket 42", "erase", "restore"))
    later = CliRunner().invoke(main, ["--root", str(tmp_path), "audit", "--since", "2999-01-01"])
    assert later.exit_code == 0 and "no audited operations" in later.output
