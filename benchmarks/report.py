"""Measure everything `docs/performance.md` reports, then write it: one command.

Usage: python -m benchmarks.report [--sf 0.1,0.3,1] [--large-sf 3] [--runs 3] [--nodes-sf 1]
                                   [--shuffle-rows 6000000] [--merge-rows 10000000] [--large-merge-rows 50000000]
                                   [--feature-scale 1]
                                   [--encryption-rows 1000000]
                                   [--data bench-data] [--work bench-work]
       python -m benchmarks.report --steps merge,features   # re-measure these, keep the rest of the page
       python -m benchmarks.report --render-only           # rewrite the page from docs/performance.json

Measures, in this order: the TPC-H medallion workload at every scale factor with the engine and every peer
(`benchmarks/tpch/run.py`: alternating runs, every output checked against DuckDB's before any time counts),
and at a larger one with the engine and DuckDB;
the engine's fixed start-up cost (importing its CLI; a run with nothing new to ingest); the everyday commands
(`benchmarks/commands.py`: `--help`, `status`, `history`, `catalog`, `show` and a `run` with nothing new on the
demo); one small delivery through the retail pipeline, one-shot and as a warm micro-batch
(`benchmarks/delivery.py`); the engine on 1, 2 and 3 local Ray nodes; bronze ingestion throughput; the engine's shuffle against Ray Data's
(`benchmarks/shuffle.py`); the bucketed merge against deltalake's (`benchmarks/merge.py`),
and at 50M rows on three nodes;
Feast materialization throughput and online latency (`benchmarks/features.py`); column encryption per value
(`benchmarks/encryption.py`). Raw numbers go to
`docs/performance.json`, the time-against-scale plot to `docs/performance-scaling.png`, and the page to
`docs/performance.md`, whose analysis section is `benchmarks/analysis.md`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import commands, delivery, encryption, features, ingest, merge, shuffle
from benchmarks.tpch.run import (
    COMMANDS,
    Measurement,
    benchmark,
    engine_command,
    environment,
    link_landing,
    machine,
    measure,
)
from engine.layout import Layout
from engine.runlog import read_records

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGE, RAW, PLOT = DOCS / "performance.md", DOCS / "performance.json", DOCS / "performance-scaling.png"
ANALYSIS = Path(__file__).with_name("analysis.md")
NODE_CPUS = merge.NODE_CPUS
PRIVATE_STORE_SHARE = 0.3
"""Share of the available memory Ray gives a private instance's object store by default."""
MERGE_NODES = (1, 2)
"""Ray node counts the bucketed merge is measured on (`benchmarks/merge.py`: 2 CPUs on one node, or 1 per node)."""
LARGE_MERGE_NODES = (3,)
"""Ray node counts of the large merge (`--large-merge-rows`): three local nodes."""


def tpch(scale_factors: list[float], runs: int, data: Path, work: Path) -> dict[str, list[dict[str, Any]]]:
    """Every engine at every scale factor, as measurements by scale factor."""
    return {f"{sf:g}": [vars(m) for m in benchmark(sf, runs, data, work / f"sf{sf:g}")] for sf in scale_factors}


LARGE_ENGINES = ("engine", "duckdb")
"""Engines measured at the large scale factor: the memory target is against DuckDB's peak there too."""


def large(sf: float, runs: int, data: Path, work: Path) -> dict[str, Any]:
    """The engine and DuckDB at the large scale factor `sf`, alternating, every output checked."""
    return {"sf": sf, "measurements": [vars(m) for m in benchmark(sf, runs, data, work / f"sf{sf:g}",
                                                                   LARGE_ENGINES)]}


def startup(work: Path) -> dict[str, float]:
    """The engine's fixed cost: importing its CLI, and a whole run of a pipeline with nothing new to ingest
    (change detection on every table from its log; Ray is not started)."""
    env = environment()
    imported, _, _ = measure([sys.executable, "-c", "import engine.cli.main"], env)
    noop, _, _ = measure([str(Path(sys.executable).with_name("medallion")), "--root", str(work / "engine"),
                          "run", "tpch"], env)
    return {"import_s": round(imported, 2), "noop_run_s": round(noop, 2)}


@contextmanager
def local_cluster(nodes: int, scratch: Path) -> Iterator[str]:
    """A `ray.cluster_utils.Cluster` of `nodes` nodes on this machine; yields its address. The nodes share the
    object store a private instance would have (Ray's default: 30% of the available memory): `Cluster` alone
    gives each node 150 MiB, which makes a scale-factor-1 run spill to disk."""
    import psutil
    from ray.cluster_utils import Cluster

    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(scratch)
    (scratch / "ray").mkdir(parents=True, exist_ok=True)
    ports = iter(merge.free_ports(5 * len(NODE_CPUS[nodes])))
    cluster = Cluster()
    store = int(PRIVATE_STORE_SHARE * psutil.virtual_memory().available) // len(NODE_CPUS[nodes])
    for cpus in NODE_CPUS[nodes]:
        cluster.add_node(num_cpus=cpus, include_dashboard=False, temp_dir=str(scratch), object_store_memory=store,
                         dashboard_agent_listen_port=next(ports), metrics_export_port=next(ports),
                         runtime_env_agent_port=next(ports),
                         **({"gcs_server_port": next(ports), "ray_client_server_port": next(ports)}
                            if cluster.head_node is None else {}))
    cluster.wait_for_nodes()
    try:
        yield cluster.address
    finally:
        cluster.shutdown()
        if previous is None:
            del os.environ["RAY_TMPDIR"]
        else:
            os.environ["RAY_TMPDIR"] = previous


def on_nodes(sf: float, runs: int, data: Path, work: Path) -> list[dict[str, Any]]:
    """The engine on 1, 2 and 3 local nodes sharing the machine's CPUs, each joined with `--address`, so Ray's
    start-up is outside the time of all three. Each run is checked against DuckDB's output of the `tpch` step,
    made here (untimed) when that step did not run at `sf`."""
    from benchmarks.tpch.check import Output, assert_correct
    from benchmarks.tpch.prepare import prepare

    prepared = prepare(sf, data)
    root = work / f"sf{sf:g}" / "engine"
    link_landing(prepared, root)
    reference = work / f"sf{sf:g}" / "duckdb"
    if not (reference / "gold").is_dir():
        measure(COMMANDS["duckdb"](prepared, reference), environment())
    results = []
    for nodes in NODE_CPUS:
        with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as scratch, \
                local_cluster(nodes, Path(scratch)) as address:
            for run in range(1, runs + 1):
                command = engine_command(root)
                command[-1] = command[-1].replace(" run tpch", f" --address {address} run tpch")
                wall, _, _ = measure(command, environment())
                assert_correct(prepared, Output(root, "engine"), Output(reference))
                results.append({"nodes": nodes, "cpus": NODE_CPUS[nodes], "run": run, "wall_s": round(wall, 2)})
    return results


def ingestion(sf: float, work: Path) -> list[dict[str, Any]]:
    """Bronze throughput of the engine's last run at `sf`."""
    layout = Layout.at(str(work / f"sf{sf:g}" / "engine"))
    return ingest.select_run(ingest.ingest_throughput(read_records(layout.runs()), layout), None)


STEPS = ("tpch", "large", "startup", "commands", "delivery", "ingest", "nodes", "shuffle", "merge", "large_merge",
         "features", "encryption")


def step_functions(args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    """Each step of the page by name, as a function of no arguments that measures it."""
    return {
        "tpch": lambda: tpch(args.sf, args.runs, args.data, args.work),
        "large": lambda: large(args.large_sf, args.runs, args.data, args.work),
        "startup": lambda: startup(args.work / f"sf{args.nodes_sf:g}"),
        "commands": lambda: commands.measure_commands(args.work),
        "delivery": lambda: delivery.measure(args.work),
        "ingest": lambda: ingestion(max(args.sf), args.work),
        "nodes": lambda: on_nodes(args.nodes_sf, args.runs, args.data, args.work),
        "shuffle": lambda: shuffle.measure(args.shuffle_rows, args.runs, args.work / "shuffle"),
        "merge": lambda: merge.compare(args.merge_rows, args.merge_rows // 10, nodes=MERGE_NODES),
        "large_merge": lambda: merge.compare(args.large_merge_rows, args.large_merge_rows // 10,
                                             nodes=LARGE_MERGE_NODES),
        "features": lambda: _features(args.feature_scale, args.lookups),
        "encryption": lambda: encryption.measure(args.encryption_rows),
    }


def measure_all(args: argparse.Namespace, raw: Path = RAW) -> dict[str, Any]:
    """The measurements of the page; what is measured so far is saved to `docs/performance.json` after each
    step (to `raw`). A step that fails is recorded under `failed` (with the last lines of its error) and the next steps
    still run, so one failure neither loses nor blocks the rest. With `args.steps`, only those steps run and
    the others keep their results from `docs/performance.json`; each re-measured step records its own date and
    load under `measured`."""
    chosen = args.steps or list(STEPS)
    today = datetime.now(UTC).date().isoformat()
    if args.steps:
        results: dict[str, Any] = json.loads(raw.read_text())
    else:
        results = {"date": today, "machine": machine()}
    steps = step_functions(args)
    for name in chosen:
        results.get("failed", {}).pop(name, None)
        load_before = os.getloadavg()[0]
        try:
            results[name] = steps[name]()
            if args.steps:
                results.setdefault("measured", {})[name] = {
                    "date": today, "load_1m_before": round(load_before, 1),
                    "load_1m_after": round(os.getloadavg()[0], 1)}
        except Exception as err:
            results.setdefault("failed", {})[name] = f"{type(err).__name__}: {err}"[-2000:]
            print(f"the `{name}` step failed: {results['failed'][name]}", file=sys.stderr, flush=True)
        if not args.steps:
            results["load_1m_after"] = os.getloadavg()[0]
        raw.write_text(json.dumps(results, indent=1) + "\n")
    return results


def _features(scale: float, lookups: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="features-bench-") as scratch:
        return features.run(scale, Path(scratch), lookups)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _walls(measurements: list[dict[str, Any]], engine: str) -> list[float]:
    return [m["wall_s"] for m in measurements if m["engine"] == engine]


def plot(results: dict[str, Any]) -> None:
    """Median wall time against scale factor, one line per engine, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    scales = sorted(results["tpch"], key=float)
    for engine in COMMANDS:
        points = [(float(sf), _median(_walls(results["tpch"][sf], engine))) for sf in scales
                  if _walls(results["tpch"][sf], engine)]
        if points:
            axes.plot(*zip(*points), marker="o", label=engine)
    axes.set(xscale="log", yscale="log", xlabel="TPC-H scale factor", ylabel="wall time, median (s)",
             title="TPC-H medallion workload, whole process, 2 cores")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(PLOT, dpi=110)


def _tpch_table(results: dict[str, Any]) -> list[str]:
    lines = ["| SF | engine | runs | wall median (s) | wall best (s) | peak PSS max (MiB) | peak RSS max (MiB) "
             "| ratio to engine | runner median (s) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for sf in sorted(results["tpch"], key=float):
        measurements = results["tpch"][sf]
        engine_median = _median(_walls(measurements, "engine"))
        for engine in COMMANDS:
            mine = [Measurement(**m) for m in measurements if m["engine"] == engine]
            if not mine:
                continue
            walls = [m.wall_s for m in mine]
            runner = [m.pipeline_s for m in mine if m.pipeline_s is not None]
            pss = [m.peak_pss_mb for m in mine if m.peak_pss_mb is not None]
            lines.append(f"| {sf} | {engine} | {len(mine)} | {_median(walls):.1f} | {min(walls):.1f} | "
                         f"{f'{max(pss):,.0f}' if pss else '–'} | {max(m.peak_rss_mb for m in mine):,.0f} | "
                         f"{_median(walls) / engine_median:.2f} | "
                         f"{f'{_median(runner):.1f}' if runner else '–'} |")
    return lines


def _large_table(result: dict[str, Any]) -> list[str]:
    measurements = [Measurement(**m) for m in result["measurements"]]
    lines = [f"Scale factor {result['sf']:g}, {len(measurements) // len(LARGE_ENGINES)} alternating runs each, "
             "every output checked against DuckDB's.", "",
             "| engine | wall median (s) | wall best (s) | peak PSS max (MiB) | peak RSS max (MiB) | ratio to engine |",
             "|---|---:|---:|---:|---:|---:|"]
    walls = {engine: [m.wall_s for m in measurements if m.engine == engine] for engine in LARGE_ENGINES}
    for engine in LARGE_ENGINES:
        mine = [m for m in measurements if m.engine == engine]
        lines.append(f"| {engine} | {_median(walls[engine]):.1f} | {min(walls[engine]):.1f} | "
                     f"{max(m.peak_pss_mb or 0 for m in mine):,.0f} | {max(m.peak_rss_mb for m in mine):,.0f} | "
                     f"{_median(walls[engine]) / _median(walls['engine']):.2f} |")
    return lines


def _growth_table(results: dict[str, Any]) -> list[str]:
    scales = sorted(results["tpch"], key=float)
    lines = ["| engine | " + " | ".join(f"SF {sf} (s)" for sf in scales) + " | growth per 10× data |",
             "|---|" + "---:|" * (len(scales) + 1)]
    for engine in COMMANDS:
        medians = [_median(_walls(results["tpch"][sf], engine)) for sf in scales]
        if all(m != m for m in medians):
            continue
        first, last = float(scales[0]), float(scales[-1])
        growth = (medians[-1] / medians[0]) ** (1 / math.log10(last / first)) if last > first else 1.0
        lines.append(f"| {engine} | " + " | ".join(f"{m:.1f}" for m in medians) + f" | {growth:.1f}× |")
    return lines


def _measured(results: dict[str, Any], step: str, table: Callable[[Any], list[str]]) -> list[str]:
    """The lines of a step's results, or a note that it failed in this run (with its error's last line) or
    that this run did not get to it."""
    if step in results.get("failed", {}):
        error = results["failed"][step].strip().splitlines()[-1]
        return [f"Not measured: the `{step}` step failed in this run (`{error}`); `python -m benchmarks.report` "
                "measures it."]
    if step not in results:
        return [f"Not measured in this run (the `{step}` step did not complete); `python -m benchmarks.report` "
                "measures it."]
    remeasured = results.get("measured", {}).get(step)
    if remeasured is None:
        return table(results[step])
    return [f"Measured on {remeasured['date']} (`--steps {step}`), 1-minute load {remeasured['load_1m_before']:.1f} "
            f"before and {remeasured['load_1m_after']:.1f} after.", "", *table(results[step])]


def _nodes_table(nodes: list[dict[str, Any]]) -> list[str]:
    return ["| nodes | CPUs per node | runs | wall median (s) |", "|---:|---|---:|---:|",
            *[f"| {n} | {NODE_CPUS[n]} | {len([r for r in nodes if r['nodes'] == n])} | "
              f"{_median([r['wall_s'] for r in nodes if r['nodes'] == n]):.1f} |" for n in NODE_CPUS]]


def _merge_table(merges: list[dict[str, Any]]) -> list[str]:
    return ["| merge | Ray nodes | wall (s) | CPU (s) | driver RSS before → peak (MiB) | rows after "
            "| same rows as deltalake's |", "|---|---:|---:|---:|---:|---:|---|",
            *[f"| {r['role']} | {r['nodes'] or '–'} | {r['seconds']:.2f} | {r['cpu_seconds']:.1f} | "
              f"{r['rss_before_mib']} → {r['peak_rss_mib']} | {r['rows_after']:,} | "
              f"{'yes' if r['same_rows'] else 'no'} |" for r in merges]]


def render(results: dict[str, Any]) -> str:
    """The page."""
    m = results["machine"]
    lines = [
        "# Performance",
        "",
        "Generated by `python -m benchmarks.report` (raw numbers in `docs/performance.json`); the analysis at the",
        "end is `benchmarks/analysis.md`. Measured on "
        f"{results['date']}: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GiB, Python {m['python']}, "
        f"{m['system']}; 1-minute load {m['load_1m']:.1f} before and {results['load_1m_after']:.1f} after.",
        "",
        "## TPC-H medallion workload",
        "",
        "The workload of `benchmarks/tpch/WORKLOAD.md`, one process per run, start-up and shut-down included. Runs",
        "alternate between engines in a rotating order. Every output passed the correctness check against DuckDB's",
        "before its time was kept. `peak PSS` sums the proportional memory of the process and all its descendants",
        "(for the engine: the CLI, Ray's GCS, raylet and workers): a page shared by n processes counts 1/n in each,",
        "so the sum is the memory the run holds. `peak RSS` sums their resident memory, counting shared pages (Ray's",
        "object store) once per process that maps them. `runner` is the engine's own pipeline time, without Ray",
        "start-up, imports and shut-down.",
        "",
        *_tpch_table(results),
        "",
        "![time against scale factor](performance-scaling.png)",
        "",
        "## How cost grows",
        "",
        *_growth_table(results),
        "",
        f"## The engine and DuckDB at scale factor {results.get('large', {}).get('sf', 3):g}",
        "",
        *_measured(results, "large", _large_table),
        "",
        "## Fixed start-up cost",
        "",
        f"- importing the engine's CLI: {results['startup']['import_s']:.1f} s",
        f"- a whole `medallion run tpch` with nothing new to ingest (change detection on every table from its log, "
        f"without starting Ray): {results['startup']['noop_run_s']:.1f} s",
        "",
        "## Everyday commands",
        "",
        "`medallion --help`, the reading commands and a `run` with nothing new on the demo's root "
        "(`python -m benchmarks.commands`), each in its own process; the median of several runs. None of them starts "
        "Ray: the reading commands read the declarations a run recorded instead of importing the pipeline's code, "
        "and a run with nothing new learns it from the tables' logs and the landing folders (`engine/run/idle.py`) "
        "before it would start Ray; the same run that starts Ray to find nothing took 7.1 s (`--metrics-file`, "
        "which always runs, three runs).",
        "",
        *_measured(results, "commands", commands.table),
        "",
        "## Small deliveries",
        "",
        "One retail delivery (about 5,900 records at scale 0.2) through the 15 tables of the retail pipeline, on a "
        "root that holds the earlier deliveries (`python -m benchmarks.delivery`; the median of three runs, each "
        "checked to have committed the delivery to gold). *One-shot* is `medallion run retail` in its own process, "
        "Ray's start and stop included; *watch* is a micro-batch of a long-lived driver, as `medallion run --watch` "
        "runs them, with Ray's workers warm from a first delivery. *Tables at once* is `run.concurrent_tables`; the "
        "longest chain is the sum of the durations of the slowest chain of dependent tables, which a run that builds "
        "independent tables together cannot go below.",
        "",
        *_measured(results, "delivery", delivery.table),
        "",
        "## The engine on 1, 2 and 3 local Ray nodes",
        "",
        "The machine's 2 CPUs spread over the nodes (3 nodes: a head without CPUs and two 1-CPU workers); the run",
        "joins the running cluster with `--address`, so Ray's start-up is not in these times.",
        "",
        *_measured(results, "nodes", _nodes_table),
        "",
        "## Bronze ingestion throughput",
        "",
        *_measured(results, "ingest", ingest.markdown),
        "",
        "## The engine's shuffle against Ray Data's",
        "",
        "A deduplication by key of lineitem-like rows (`benchmarks/shuffle.py`, `--shuffle-rows`): `engine.map_partitions`,",
        "then `Dataset.repartition(keys=...)` under Ray Data's `hash_shuffle` and `shuffle_v2` strategies followed by the",
        "same function per block; each run a fresh process with a private Ray of 2 CPUs, in rotating order, every result",
        "checked to hold each key once.",
        "",
        *_measured(results, "shuffle", shuffle.markdown),
        "",
        "## Distributed merge against deltalake's merge",
        "",
        "1M changes (70% updates, 20% inserts, 10% deletes, in random order) into 10M rows by default",
        "(`--merge-rows`): deltalake's single-process `merge`, then the bucketed merge in Ray tasks on one local node",
        "with 2 CPUs and on two nodes with 1 CPU each. Each merge runs in a fresh process; the last column checks",
        "its table against deltalake's. See `docs/merge.md` for how the bucketed merge works.",
        "",
        *_measured(results, "merge", _merge_table),
        "",
        "## A merge of 5M changes into 50M rows on three Ray nodes",
        "",
        "The same merges at 5x the size (`--large-merge-rows`), on three local Ray nodes (a head without CPUs,",
        "where the driver runs, and two nodes of 1 CPU). The bucketed merge's driver hands the staged change files",
        "to Ray tasks and holds no change; deltalake's merge holds the changes and the rows it rewrites in its one",
        "process.",
        "",
        *_measured(results, "large_merge", _merge_table),
        "",
        "## Feature store",
        "",
        *_measured(results, "features", features.markdown),
        "",
        "## Column encryption",
        "",
        "`benchmarks/encryption.py`: `encrypt` and `decrypt` of `pii=\"encrypt\"` columns (AES-256-GCM-SIV, one AEAD",
        "call per value, Arrow in and out), bound to row keys or not; below, the bare AEAD calls of the candidate",
        "ciphers on the same values. A run encrypts in its Ray tasks, so the cost divides by the cores writing.",
        "",
        *_measured(results, "encryption", encryption.markdown),
        "",
        ANALYSIS.read_text().strip(),
        "",
    ]
    return "\n".join(lines)


def _steps(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STEPS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown step(s) {', '.join(unknown) or '(none given)'}; "
                                         f"the steps are {', '.join(STEPS)}")
    return names


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sf", type=lambda text: [float(x) for x in text.split(",")], default=[0.1, 0.3, 1.0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--large-sf", type=float, default=3.0,
                        help="scale factor of the `large` step (the engine and DuckDB only)")
    parser.add_argument("--nodes-sf", type=float, default=1.0)
    parser.add_argument("--shuffle-rows", type=int, default=6_000_000)
    parser.add_argument("--merge-rows", type=int, default=10_000_000)
    parser.add_argument("--large-merge-rows", type=int, default=50_000_000)
    parser.add_argument("--feature-scale", type=float, default=1.0)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--encryption-rows", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=Path("bench-data"))
    parser.add_argument("--work", type=Path, default=Path("bench-work"))
    parser.add_argument("--steps", type=_steps, default=None,
                        help=f"comma-separated steps to re-measure, keeping the others (of {', '.join(STEPS)})")
    parser.add_argument("--render-only", action="store_true", help="rewrite the page from docs/performance.json")
    args = parser.parse_args()
    results = json.loads(RAW.read_text()) if args.render_only else measure_all(args)
    plot(results)
    PAGE.write_text(render(results))
    print(f"wrote {PAGE}, {PLOT} and {RAW}")


if __name__ == "__main__":
    main()
