"""The backlog a run sees (landing bytes not ingested, input versions not read) and the capacity it asks for."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable

from engine import Runner
from engine.capacity import measure_backlog, plan, task_shape
from engine.cli.main import main
from engine.layout import Layout
from pipelines.retail.generate import generate
from pipelines.retail.pipeline import retail
from tests.conftest import RETAIL_AS_OF, RETAIL_TEST_SCALE, settings_at

pytestmark = pytest.mark.slow
SOURCES = ("customers", "products", "orders", "order_items", "events")


def file_sizes(uri: str, version: int | None = None) -> dict[str, int]:
    """Data files of a Delta table at a version, with their sizes, straight from its log."""
    table = DeltaTable(uri, version=version)
    actions = pa.table(table.get_add_actions(flatten=True)).to_pydict()
    return dict(zip(actions["path"], actions["size_bytes"]))


def bytes_to_read(uri: str, incremental: bool) -> int:
    """What a table reads from an input that gained one commit: the files it added, or everything."""
    now = file_sizes(uri)
    if not incremental:
        return sum(now.values())
    before = file_sizes(uri, DeltaTable(uri).version() - 1)
    return sum(size for path, size in now.items() if path not in before)


def test_the_backlog_follows_deliveries_and_runs(ray_local: None, tmp_path: Path) -> None:
    layout = Layout.at(str(tmp_path))
    first = generate(tmp_path / "landing", scale=RETAIL_TEST_SCALE, as_of=RETAIL_AS_OF, batch=1)

    backlog = measure_backlog(retail, layout)
    ingest = {s.table: s for s in backlog.steps if s.ingest}
    assert {t: (s.bytes, s.files) for t, s in ingest.items()} == {
        f"bronze.{name}": (first[name].bytes, len(first[name].files)) for name in SOURCES if first[name].files}
    assert backlog.landing_bytes == sum(g.bytes for g in first.values())
    assert all(s.bytes == 0 and s.versions_behind == 0 for s in backlog.steps if not s.ingest)
    assert backlog.largest == max(ingest.values(), key=lambda s: s.bytes)

    assert Runner(retail, settings_at(tmp_path)).run().succeeded
    assert measure_backlog(retail, layout).steps == ()
    assert plan(measure_backlog(retail, layout), bytes_per_task=4096) is None

    second = generate(tmp_path / "landing", scale=RETAIL_TEST_SCALE, as_of=RETAIL_AS_OF, batch=2)
    delivered = {f"bronze.{name}": g.bytes for name, g in second.items() if g.files}
    assert {s.table: s.bytes for s in measure_backlog(retail, layout).steps if s.ingest} == delivered

    assert Runner(retail, settings_at(tmp_path)).run("bronze.*").succeeded
    behind = measure_backlog(retail, layout)
    assert not any(s.ingest for s in behind.steps)
    readers = {name: d for name, d in retail.resolve().items()
               if not d.source and any(t in delivered for t in d.dependencies)}
    expected = {name: sum(bytes_to_read(layout.table(t), d.incremental) for t in d.inputs)
                for name, d in readers.items()}
    assert {s.table: s.bytes for s in behind.steps} == expected
    assert all(s.versions_behind == 1 for s in behind.steps)
    silver = [s for s in behind.steps if s.table.startswith("silver.")]
    assert len(silver) == len(delivered) and all(0 < s.bytes < sum(file_sizes(layout.table(
        s.table.replace("silver.", "bronze."))).values()) for s in silver), "silver reads only what bronze gained"

    reservation = plan(behind, bytes_per_task=4096)
    assert reservation is not None and reservation.step == behind.largest
    assert len(reservation.bundles) == math.ceil(behind.largest.bytes / 4096)
    assert set(map(tuple, (b.items() for b in reservation.bundles))) == {(("CPU", 1.0),)}

    shown = CliRunner().invoke(main, ["--root", str(tmp_path), "cluster", "backlog", "retail",
                                      "--bytes-per-task", "4096"])
    assert shown.exit_code == 0, shown.output
    assert all(table in shown.output for table in expected)
    assert f"a run asks the autoscaler for {len(reservation.bundles)} task(s)" in shown.output


def test_a_tables_declared_resources_are_the_shape_of_its_tasks() -> None:
    assert task_shape({}) == {"CPU": 1.0}
    assert task_shape({"num_cpus": 2, "num_gpus": 0, "memory": 2**30, "resources": {"highmem": 1}}) == {
        "CPU": 2.0, "memory": float(2**30), "highmem": 1.0}
    assert task_shape({"num_cpus": 0, "num_gpus": 1}) == {"GPU": 1.0}


def test_reserving_needs_a_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    result = CliRunner().invoke(main, ["--root", str(tmp_path), "cluster", "reserve", "retail"])
    assert result.exit_code == 1
    assert "`medallion cluster reserve` needs a cluster with an autoscaler" in result.output
