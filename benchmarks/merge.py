"""Merge cost: deltalake's single-process `merge` against the bucketed merge in Ray tasks, same data.

Usage: python benchmarks/merge.py [--rows N] [--changes M] [--nodes 1,2] [--buckets B] [--compression C]

Builds an N-row Delta table with `write_deltalake` and M changes (updates, inserts, deletes, duplicate
keys), staged as Parquet files of the target size as a run's write tasks stage them, then times, each in a
fresh process so the peak RSS is the merge's own:
  deltalake      `delta_merge.merge_changes` (deltalake's merge, the changes read into memory) on the table as
                 written, once;
  bucketing      the first `merge_distributed` of the staged changes on that table, which also buckets it (a full
                 rewrite, once);
  distributed    `merge_distributed` of the same staged changes on the bucketed table;
the last two on each Ray node count of `--nodes` (`NODE_CPUS`): 1 runs Ray as one local node with 2 CPUs, 2 and 3
as a `ray.cluster_utils.Cluster` of nodes with 1 CPU each (with 3, a head without CPUs, where the driver runs). Prints wall time, CPU time
of the driver and of the Ray processes it started, driver RSS before and at peak during the merge, the row
counts, the time spent in bucket tasks (summed over tasks), the machine's 1-minute load average after the
merge (other work on the machine skews wall times), and whether the merged table holds the same rows as
deltalake's merge made.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ["RAY_AUTH_MODE"] = "disabled"

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from engine.config import StorageSettings  # noqa: E402
from engine.errors import EngineError  # noqa: E402
from engine.kinds import Merge  # noqa: E402

NODE_CPUS = {1: [2], 2: [1, 1], 3: [0, 1, 1]}
"""CPUs of each node per node count: the machine's 2 cores, spread (a 3-node cluster has a head without CPUs)."""
KIND = Merge(keys=["id"], sequence_by="seq", delete_when="op = 'd'", except_columns=["op"])
STATUSES = pa.array(["new", "paid", "shipped", "returned", "cancelled"])
START = np.datetime64("2026-01-01T00:00:00", "us")
GENERATED_AT = 1_000


def rows_table(ids: np.ndarray, seq: int, rng: np.random.Generator) -> pa.Table:
    """Order-like rows for `ids`: amounts, a status, a customer name and a timestamp, built vectorised."""
    size = len(ids)
    customer = pc.binary_join_element_wise("customer-", pc.cast(pa.array(rng.integers(0, 2_000_000, size)),
                                                                  pa.string()), "")
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "seq": pa.array(np.full(size, seq, np.int64)),
        "amount": pa.array(rng.random(size) * 1000),
        "status": STATUSES.take(pa.array(rng.integers(0, len(STATUSES), size))),
        "customer": customer,
        "updated_at": pa.array(START + rng.integers(0, 10**12, size).astype("timedelta64[us]"),
                               pa.timestamp("us", tz="UTC")),
    })


def prepare(folder: Path, rows: int, changes: int) -> dict[str, Any]:
    """Write the base table with `write_deltalake`, and the changes as Parquet files under `staged/`."""
    from deltalake import write_deltalake

    from engine.arrow import to_storage
    from engine.tables.files import RollingParquetWriter

    rng = np.random.default_rng(42)
    started = time.perf_counter()
    base = rows_table(np.arange(rows), 1, rng).append_column("op", pa.array(np.full(rows, "c")))
    write_deltalake(str(folder / "plain"), base.drop_columns(["op"]), mode="error")
    del base
    updates, inserts = int(changes * 0.7), int(changes * 0.2)
    deletes = changes - updates - inserts
    ids = np.concatenate([rng.integers(0, rows, updates), np.arange(rows, rows + inserts),
                          rng.integers(0, rows, deletes)])
    ops = np.concatenate([np.full(updates, "u"), np.full(inserts, "c"), np.full(deletes, "d")])
    batch = rows_table(ids, 2, rng)
    batch = batch.set_column(1, "seq", pa.array(rng.integers(1, 4, changes), pa.int64()))
    order = rng.permutation(changes)
    writer = RollingParquetWriter(str(folder / "staged"), StorageSettings(), "stage")
    writer.write(to_storage(batch.append_column("op", pa.array(ops)).take(pa.array(order))))
    writer.close()
    return {"prepare_s": round(time.perf_counter() - started, 1)}


def start_ray(nodes: int, scratch: Path) -> Any:
    """A private Ray: one local node with 2 CPUs, or a `Cluster` of the nodes of `NODE_CPUS`."""
    import ray

    from engine.runtime import start_private_ray

    store = 1536 * 2**20
    if nodes == 1:
        start_private_ray(num_cpus=2, object_store_memory=store, logging_level="ERROR", _temp_dir=str(scratch))
        return None
    from ray.cluster_utils import Cluster

    head, *others = NODE_CPUS[nodes]
    ports = iter(free_ports(5 + 3 * len(others)))
    common = {"object_store_memory": store, "temp_dir": str(scratch), "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=common | {
        "num_cpus": head, "gcs_server_port": next(ports), "dashboard_agent_listen_port": next(ports),
        "metrics_export_port": next(ports), "runtime_env_agent_port": next(ports),
        "ray_client_server_port": next(ports)})
    for cpus in others:
        cluster.add_node(**common, num_cpus=cpus, metrics_export_port=next(ports), runtime_env_agent_port=next(ports),
                         dashboard_agent_listen_port=next(ports))
    ray.init(address=cluster.address, logging_level="ERROR")
    return cluster


def warm_up() -> None:
    """Start one worker per CPU, with the merge's modules imported, as a long-running engine has them."""
    import ray

    @ray.remote(scheduling_strategy="SPREAD")
    def load() -> str:
        import engine.tables.distributed_merge

        return engine.tables.distributed_merge.__name__

    ray.get([load.remote() for _ in range(int(ray.cluster_resources()["CPU"]))])


def staged_changes(folder: Path) -> Any:
    """The staged change files, as a run hands them to the merge: names, sizes and schemas, no row."""
    from engine.tables.files import ChangeFiles, DataFile

    files = []
    for path in sorted((folder / "staged").glob("*.parquet")):
        metadata = pq.read_metadata(path)
        files.append(DataFile(path.name, path.stat().st_size, metadata.num_rows, "", 0,
                              metadata.schema.to_arrow_schema()))
    return ChangeFiles(str(folder / "staged"), tuple(files))


def free_ports(count: int) -> list[int]:
    """Ports free right now, outside Ray's worker port range."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return [p if not 10002 <= p <= 19999 else p + 10000 for p in ports]


def memory_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status: `VmRSS` now, or `VmHWM`, the peak since the
    last reset (writing 5 to /proc/self/clear_refs resets it, Linux only)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def cpu_seconds() -> float:
    """CPU time used so far by this process and every process it started (Ray's node and worker
    processes when Ray was started here)."""
    import psutil

    total = 0.0
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def work_folder(folder: Path, role: str, nodes: int) -> Path:
    """Where a merge of `role` on `nodes` Ray nodes writes its table (deltalake's merge runs without Ray)."""
    return folder / ("work-deltalake" if role == "deltalake" else f"work-{role}-{nodes}")


def same_rows(table: Path, reference: Path) -> bool:
    """Whether two Delta tables hold the same rows, in any order and column order."""
    from deltalake import DeltaTable

    expected = pl.from_arrow(DeltaTable(str(reference)).to_pyarrow_table())
    got = pl.from_arrow(DeltaTable(str(table)).to_pyarrow_table())
    assert isinstance(expected, pl.DataFrame) and isinstance(got, pl.DataFrame)
    if sorted(got.columns) != sorted(expected.columns):
        return False
    return got.select(expected.columns).sort("id").equals(expected.sort("id"))


def measure(role: str, folder: Path, nodes: int, buckets: int, storage: StorageSettings) -> dict[str, Any]:
    """One merge in this process: wall time, RSS before it and peak RSS during it."""
    from engine.tables import delta, delta_merge
    from engine.tables.distributed_merge import merge_distributed

    changes = staged_changes(folder)
    source = {"deltalake": "plain", "bucketing": "plain", "distributed": "bucketed"}[role]
    uri = str(work_folder(folder, role, nodes))
    shutil.copytree(folder / source, uri)
    cluster = None
    ray_dir = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))  # short: Ray's socket paths must stay under 108 bytes
    if role != "deltalake":
        cluster = start_ray(nodes, ray_dir)
        warm_up()
    rss_before = memory_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    if role == "deltalake":
        outcome = delta_merge.merge_changes(uri, changes.read(), KIND, metadata={})
    else:
        outcome = merge_distributed(uri, "bench.orders", changes, KIND, metadata={}, buckets=buckets,
                                    storage=storage)
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_before
    peak = memory_kib("VmHWM")
    if role == "bucketing" and not (folder / "bucketed").exists():
        shutil.copytree(folder / "plain", folder / "bucketed")
        merge_distributed(str(folder / "bucketed"), "bench.orders", changes.schema.empty_table(), KIND, metadata={},
                          buckets=buckets, storage=storage)
    if role != "deltalake":
        import ray

        ray.shutdown()
    if cluster is not None:
        cluster.shutdown()
    shutil.rmtree(ray_dir, ignore_errors=True)
    metrics = outcome.metrics
    return {
        "role": role,
        "nodes": None if role == "deltalake" else nodes,
        "load": round(os.getloadavg()[0], 1),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 1),
        "rss_before_mib": rss_before // 2**10,
        "peak_rss_mib": peak // 2**10,
        "rows_after": delta.row_count(uri, "bench.orders"),
        "inserted": metrics["num_target_rows_inserted"],
        "updated": metrics["num_target_rows_updated"],
        "deleted": metrics["num_target_rows_deleted"],
        "files_added": metrics.get("num_target_files_added"),
        "task_seconds": "-" if role == "deltalake" else round((metrics["scan_time_ms"] + metrics["rewrite_time_ms"])
                                                              / 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=lambda text: [int(n) for n in text.split(",")], default=[1],
                        help="Ray node counts to run the bucketed merge on, comma-separated: 1, 2, 3 or 1,2,3")
    parser.add_argument("--buckets", type=int, default=16)
    parser.add_argument("--compression", choices=["zstd", "snappy", "lz4", "none"], default="zstd",
                        help="of the files the bucketed merge writes (deltalake's merge writes snappy)")
    parser.add_argument("--role", choices=["deltalake", "bucketing", "distributed"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        storage = StorageSettings(compression=args.compression)
        print(json.dumps(measure(args.role, args.folder, args.nodes[0], args.buckets, storage)))
        return
    print(f"{args.rows:,} rows, {args.changes:,} changes, {args.buckets} buckets, {args.compression} files, "
          f"{os.cpu_count()} CPUs", flush=True)
    print(f"{'merge':<13}{'nodes':>6}{'wall s':>8}{'CPU s':>7}{'RSS before MiB':>16}{'peak RSS MiB':>14}"
          f"{'rows after':>12}{'inserted':>10}{'updated':>10}{'deleted':>9}{'files+':>8}{'task s':>8}{'load':>6}"
          f"{'same rows':>10}", flush=True)
    for result in compare(args.rows, args.changes, args.nodes, args.buckets, args.compression):
        print(f"{result['role']:<13}{result['nodes'] or '-':>6}{result['seconds']:>8.2f}{result['cpu_seconds']:>7.1f}"
              f"{result['rss_before_mib']:>16}{result['peak_rss_mib']:>14}{result['rows_after']:>12,}"
              f"{result['inserted']:>10,}{result['updated']:>10,}{result['deleted']:>9,}"
              f"{result['files_added'] or 0:>8}{result['task_seconds']:>8}{result['load']:>6}"
              f"{'yes' if result['same_rows'] else 'NO':>10}", flush=True)


def compare(rows: int, changes: int, nodes: Sequence[int] = (1,), buckets: int = 16, compression: str = "zstd",
            folder: Path | None = None) -> list[dict[str, Any]]:
    """deltalake's merge once, then the bucketing and the bucketed merge of the same changes on the same table
    on each node count of `nodes`, each measured in a fresh process; every result says whether its table
    holds the same rows as deltalake's merge made (`same_rows`). The tables are written under `folder`, kept
    there (`work_folder`), or under a temporary folder deleted after.

    Raises:
        EngineError: a merge process failed.
    """
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="merge-bench-") as scratch:
            return compare(rows, changes, nodes, buckets, compression, Path(scratch))
    prepare(folder, rows, changes)
    results = []
    for role, count in [("deltalake", nodes[0]), *((role, n) for n in nodes for role in ("bucketing", "distributed"))]:
        done = subprocess.run([sys.executable, __file__, "--role", role, "--folder", str(folder),
                               "--nodes", str(count), "--buckets", str(buckets), "--compression", compression],
                              capture_output=True, text=True)
        if done.returncode:
            raise EngineError(f"the {role} merge on {count} Ray node(s) failed:\n{done.stderr[-4000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        reference = work_folder(folder, "deltalake", count)
        results.append(result | {"same_rows": same_rows(work_folder(folder, role, count), reference)})
    return results


if __name__ == "__main__":
    main()
