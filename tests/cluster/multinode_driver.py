"""Driver of tests/cluster/test_multinode.py, run in its own process (a process holds one Ray connection).

Starts a three-node `ray.cluster_utils.Cluster` on private ports (a head without CPU, where this driver runs,
and two 1-CPU workers, one of which also offers the custom resource `highmem`), then:

1. runs a two-table pipeline whose bronze and silver tables declare `ray_options` (both asking for `highmem`)
   and records where Ray ran the tasks that carried them;
2. runs the retail pipeline on ROOT and kills a worker (`remove_node(allow_graceful=False)`) while it runs a
   task, once the bronze tables are done; re-runs once if the first run did not succeed.

Usage: python tests/cluster/multinode_driver.py ROOT TEMP_DIR OUTPUT_JSON
Writes what happened as JSON; the test process checks the tables.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ["RAY_AUTH_MODE"] = "disabled"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.state import list_tasks  # noqa: E402

from engine import FileSource, Pipeline, Runner, load_settings  # noqa: E402
from engine.runlog import RunRecord  # noqa: E402
from pipelines.retail.pipeline import retail  # noqa: E402
from tests.cluster.helpers import free_ports, wait_for  # noqa: E402

HIGHMEM_OPTIONS = {"num_cpus": 1, "memory": 64 * 2**20, "resources": {"highmem": 1}}
INGEST_OPTIONS = {"num_cpus": 0.5, "resources": {"highmem": 1}}
LANDING_FILES = 2
BRONZE_TABLES = 5

shop = Pipeline("shop")
shop.ingest("bronze.orders", FileSource("orders", "jsonl", pattern="*.jsonl"), ray_options=INGEST_OPTIONS)


@shop.table("silver.orders", ray_options=HIGHMEM_OPTIONS)
def orders(bronze_orders: ray.data.Dataset) -> ray.data.Dataset:
    """The orders, as landed."""
    return bronze_orders


def start_cluster(temp_dir: str) -> tuple[Cluster, str, dict[str, str]]:
    os.environ["RAY_TMPDIR"] = temp_dir  # `Cluster` records the head's address under it, not under `temp_dir`
    Path(temp_dir, "ray").mkdir(exist_ok=True)
    port, dashboard, agent, runtime_env, metrics, client = free_ports(6)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "gcs_server_port": port, "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": dashboard, "dashboard_agent_listen_port": agent,
        "runtime_env_agent_port": runtime_env, "metrics_export_port": metrics, "ray_client_server_port": client,
        "temp_dir": temp_dir, "object_store_memory": 150 * 2**20})
    plain = cluster.add_node(num_cpus=1, object_store_memory=150 * 2**20)
    highmem = cluster.add_node(num_cpus=1, object_store_memory=150 * 2**20,
                               resources={"highmem": 1})
    cluster.wait_for_nodes()
    cluster.connect()
    ray.data.DataContext.get_current().enable_progress_bars = False
    return cluster, f"http://127.0.0.1:{dashboard}", {"plain": plain.node_id, "highmem": highmem.node_id}


def job_tasks(dashboard: str) -> list[Any]:
    job = ray.get_runtime_context().get_job_id()
    return list_tasks(address=dashboard, filters=[("job_id", "=", job)], detail=True, limit=10000,
                      raise_on_missing_output=False)


def resources_scenario(root: Path, dashboard: str, nodes: dict[str, str]) -> dict[str, Any]:
    (root / "landing" / "orders").mkdir(parents=True)
    for file in range(LANDING_FILES):
        lines = [json.dumps({"order_id": str(i), "amount": str(i * 10)}) for i in range(file * 20, file * 20 + 20)]
        (root / "landing" / "orders" / f"orders-{file + 1:04d}.jsonl").write_text("\n".join(lines) + "\n")
    result = Runner(shop, load_settings(overrides={"storage": {"root": str(root)}})).run()

    def carrying_ingest_read_and_write() -> list[Any]:
        """The tasks that asked for `highmem`, once the ingestion of every landing file, the read and the write
        have all reported as finished (task events reach the state API a little after the tasks end)."""
        tasks = [t for t in job_tasks(dashboard) if (t.required_resources or {}).get("highmem")]
        names = [t.name for t in tasks]
        seen = (any("Write" in n for n in names) and any("read" in n.lower() for n in names)
                and sum("_ingest_file" in n for n in names) == LANDING_FILES)
        return tasks if seen and all(t.state == "FINISHED" for t in tasks) else []

    carrying = wait_for(carrying_ingest_read_and_write, 60, "the tasks of `bronze.orders` and `silver.orders`")
    return {
        "succeeded": result.succeeded,
        "highmem_node": nodes["highmem"],
        "carrying": [{"name": t.name, "node_id": t.node_id, "resources": t.required_resources} for t in carrying],
    }


def failure_scenario(cluster: Cluster, root: Path, dashboard: str) -> dict[str, Any]:
    settings = load_settings(overrides={"storage": {"root": str(root)}})
    bronze_done, done = threading.Event(), []
    kill: dict[str, Any] = {}

    def progress(record: RunRecord) -> None:
        done.append(record.table)
        if len(done) == BRONZE_TABLES:
            kill["after_ms"] = time.time() * 1000
            bronze_done.set()

    def killer() -> None:
        bronze_done.wait()
        workers = {node.node_id: node for node in cluster.worker_nodes}

        def running() -> list[Any]:
            """Tasks running on a worker that started after bronze was done (task events arrive late)."""
            tasks = list_tasks(address=dashboard, filters=[("state", "=", "RUNNING")], detail=True, limit=1000,
                               raise_on_missing_output=False)
            return [t for t in tasks if t.node_id in workers and (t.start_time_ms or 0) >= kill["after_ms"]]

        busy = wait_for(running, 120, "a task running on a worker", interval=0.1)
        victim = busy[0]
        kill.update(node_id=victim.node_id, task=victim.name, tables_done=len(done))
        cluster.remove_node(workers[victim.node_id], allow_graceful=False)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    first = Runner(retail, settings, on_record=progress).run()
    thread.join(timeout=300)
    runs = [first]
    if not first.succeeded:
        runs.append(Runner(retail, settings).run())
    alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    return {
        "kill": kill,
        "alive_nodes": len(alive),
        "runs": [{"run_id": r.run_id, "succeeded": r.succeeded,
                  "records": {x.table: [x.status, x.error] for x in r.records}} for r in runs],
    }


def main(root: str, temp_dir: str, output: str) -> None:
    cluster, dashboard, nodes = start_cluster(temp_dir)
    try:
        report = {
            "nodes": len([n for n in ray.nodes() if n["Alive"]]),
            "resources": resources_scenario(Path(root) / "shop", dashboard, nodes),
            "failure": failure_scenario(cluster, Path(root) / "retail", dashboard),
        }
        Path(output).write_text(json.dumps(report, indent=2))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
