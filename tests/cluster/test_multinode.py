"""A three-node `ray.cluster_utils.Cluster`: declared table resources honoured, and the retail pipeline through
the loss of a worker in the middle of a run. The cluster lives in a driver process of its own
(tests/cluster/multinode_driver.py); this process only reads the tables it left."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from deltalake import DeltaTable

from engine.kinds import Merge
from engine.layout import Layout
from engine.runlog import read_records
from pipelines.retail.generate import generate
from pipelines.retail.pipeline import retail
from tests.cluster.helpers import (
    GOLD_TABLES,
    assert_same_tables,
    canonical,
    ray_environment,
    read_table,
    stop_process_group,
)
from tests.conftest import RETAIL_AS_OF, RETAIL_TEST_SCALE, RetailBuild

pytestmark = pytest.mark.cluster
DRIVER = Path(__file__).with_name("multinode_driver.py")


@pytest.fixture(scope="module")
def multinode(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Run the driver once; its report and the storage root it wrote."""
    root = tmp_path_factory.mktemp("multinode")
    generate(root / "retail" / "landing", scale=RETAIL_TEST_SCALE, as_of=RETAIL_AS_OF)
    temp_dir = tempfile.mkdtemp(prefix="mdl-", dir="/tmp")
    output, log = root / "report.json", root / "driver.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, str(DRIVER), str(root), temp_dir, str(output)],
                                   env=ray_environment(), stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        process.wait(timeout=900)
    finally:
        stop_process_group(process)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert process.returncode == 0, log.read_text()[-5000:]
    return root, json.loads(output.read_text())


def test_three_nodes_run_a_tables_tasks_where_its_declared_resources_are(
    multinode: tuple[Path, dict[str, Any]],
) -> None:
    root, report = multinode
    assert report["nodes"] == 3
    resources = report["resources"]
    assert resources["succeeded"]
    carrying = resources["carrying"]
    assert all(t["node_id"] == resources["highmem_node"] for t in carrying), carrying
    ingest = [t for t in carrying if "_ingest_file" in t["name"]]
    assert len(ingest) == 2, "one ingestion task per landing file of `bronze.orders`, carrying its ray_options"
    assert all(t["resources"] == {"CPU": 0.5, "highmem": 1.0} for t in ingest), ingest
    silver = [t for t in carrying if t not in ingest]
    names = [t["name"] for t in silver]
    assert any("Write" in n for n in names) and any("read" in n.lower() for n in names), names
    assert all("Write" in n or "read" in n.lower() for n in names), names
    assert all(t["resources"] == {"CPU": 1.0, "memory": float(64 * 2**20), "highmem": 1.0} for t in silver)
    assert read_table(root / "shop", "bronze.orders").height == read_table(root / "shop", "silver.orders").height == 40


def test_a_worker_killed_mid_run_leaves_complete_tables_and_no_duplicate(
    multinode: tuple[Path, dict[str, Any]], retail_build: RetailBuild
) -> None:
    root, report = multinode
    failure = report["failure"]
    tables = retail.select()
    print(f"\nkilled a worker while it ran `{failure['kill']['task']}` after {failure['kill']['tables_done']} of "
          f"{len(tables)} tables; runs: {[(r['run_id'], r['succeeded']) for r in failure['runs']]}")
    assert 0 < failure["kill"]["tables_done"] < len(tables), "the worker died in the middle of the run"
    assert failure["alive_nodes"] == 2
    assert failure["runs"][-1]["succeeded"], failure["runs"]
    if not failure["runs"][0]["succeeded"]:
        failed = [t for t, (status, _) in failure["runs"][0]["records"].items() if status == "failed"]
        assert failed and all(failure["runs"][0]["records"][t][1] for t in failed), "failures name their cause"

    retail_root = root / "retail"
    silver = [t for t in tables if t.startswith("silver.")]
    assert_same_tables(retail_root, retail_build.root, [*silver, *GOLD_TABLES])
    for table in [t for t in tables if t.startswith("bronze.")]:
        assert read_table(retail_root, table).height == read_table(retail_build.root, table).height, table
    for name, definition in retail.resolve().items():
        if isinstance(definition.kind, Merge):
            keys = list(definition.kind.keys)
            frame = read_table(retail_root, name)
            assert frame.select(keys).is_duplicated().sum() == 0, f"{name}: a key appears twice"
    for table in silver:
        quarantine = Path(Layout.at(str(retail_root)).quarantine(table))
        if quarantine.exists():
            got = canonical(pl.from_arrow(DeltaTable(str(quarantine)).to_pyarrow_table()))
            expected = canonical(pl.from_arrow(DeltaTable(Layout.at(str(retail_build.root)).quarantine(table))
                                               .to_pyarrow_table()))
            assert got.height == expected.height, f"{table}: rows quarantined twice or lost"

    records = read_records(Layout.at(str(retail_root)).runs())
    run_ids = {r["run_id"] for r in failure["runs"]}
    for table in tables:
        uri = Layout.at(str(retail_root)).table(table)
        latest = DeltaTable(uri).version()
        committed = records.filter((pl.col("table") == table) & (pl.col("status") == "succeeded"))
        assert committed["output_version"].max() == latest, f"{table}: the latest commit has no run record"
        for commit in DeltaTable(uri).history():
            assert commit.get("medallion.run_id") in run_ids, f"{table} v{commit['version']}: foreign commit"
    assert not list((retail_root / "_staging").rglob("*.parquet")), "staged files left behind"
