"""Run the TPC-H medallion workload on the engine and its peers, check every output, report wall time and memory.

Usage: python -m benchmarks.tpch.run [--sf 0.01] [--runs 3] [--data bench-data] [--work bench-work]
                                     [--engines engine,duckdb,polars,spark,daft,daft-ray] [--results results.json]

Prepares the data at `--sf` (cached under `--data`), then runs every engine of `--engines` once per round, N
rounds, the order rotated each round so that no engine always goes first:
  engine    `medallion --root WORK/engine run tpch` in its own process, with the raw files linked as the
            pipeline's landing folders; the previous tables are deleted inside the timed process;
  duckdb    `python -m benchmarks.tpch.peers.duckdb_run`; likewise `polars_run`, `spark_run` (PySpark local
            mode, Parquet output), `daft_run --runner native` (daft) and `daft_run --runner ray` (daft-ray);
            each peer deletes its output `WORK/<name>` itself.
Every output is checked (`check.py`; each against the DuckDB output of the same round, so `duckdb` must be one
of the engines) before any time is reported. Wall time is measured around the process; peak RSS and peak PSS are
the largest sums of the resident and of the proportional memory of the process and all its descendants (Ray's
workers included), sampled every 50 ms (PSS every second);
for the engine, the runner's own time (its CLI's "finished in", Ray start-up and shut-down excluded) is recorded
too. Prints a Markdown table (with each wall median's ratio to the engine's) and the machine, and writes the raw
numbers to `--results`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from benchmarks.tpch.check import Output, assert_correct
from benchmarks.tpch.prepare import TABLES, prepare
from engine.errors import EngineError

PEERS = Path(__file__).with_name("peers")
SAMPLE_SECONDS = 0.05
PSS_EVERY = 20
"""PSS is read every this many samples (once a second): reading it walks the page tables of every mapping,
the object store's included, and at every sample it took 8 s of a 2-core machine from a 40 s engine run."""
ENGINE_OUTPUTS = ("bronze", "silver", "gold", "quarantine", "_meta", "_staging", "_changes")
PIPELINE_TIME = re.compile(r"finished in ([0-9.]+)s")
"""The engine CLI's own report of the time its runner took, Ray start-up and shut-down excluded."""


class RunError(EngineError):
    """A benchmarked process failed."""


@dataclass(frozen=True)
class Measurement:
    """One timed run of one engine."""

    engine: str
    run: int
    wall_s: float
    peak_rss_mb: float
    pipeline_s: float | None = None
    peak_pss_mb: float | None = None


@dataclass(frozen=True)
class TreeMemory:
    """Memory of a process tree, in bytes: `rss` counts a page shared by n processes n times, `pss` (the
    proportional set size) counts 1/n of it in each, so its sum is the memory the tree really holds (Ray's
    object store is shared memory mapped by the raylet and every worker)."""

    rss: int = 0
    pss: int = 0


def tree_memory(process: psutil.Process, with_pss: bool = True) -> TreeMemory:
    """Summed RSS and (`with_pss`) PSS of `process` and every descendant still alive."""
    rss = pss = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            memory = member.memory_full_info() if with_pss else member.memory_info()
        except psutil.Error:
            continue
        rss, pss = rss + memory.rss, pss + getattr(memory, "pss", 0)
    return TreeMemory(rss, pss)


def measure(command: list[str], env: dict[str, str]) -> tuple[float, TreeMemory, str]:
    """Run `command`; return its wall time in seconds, the peak summed RSS and PSS of its process tree, its
    output."""
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        process = psutil.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak, samples = TreeMemory(), 0
        while process.poll() is None:
            try:
                now = tree_memory(process, with_pss=samples % PSS_EVERY == 0)
            except psutil.NoSuchProcess:
                break
            peak, samples = TreeMemory(max(peak.rss, now.rss), max(peak.pss, now.pss)), samples + 1
            time.sleep(SAMPLE_SECONDS)
        wall = time.perf_counter() - started
        log.seek(0)
        output = log.read().decode(errors="replace")
    if process.returncode != 0:
        raise RunError(f"`{shlex.join(command)}` exited with {process.returncode}:\n{output[-4000:]}")
    return wall, peak, output


def engine_command(root: Path) -> list[str]:
    """Delete the engine's previous tables, then run the pipeline: one shell process, timed as a whole."""
    medallion = Path(sys.executable).with_name("medallion")
    outputs = " ".join(shlex.quote(str(root / name)) for name in ENGINE_OUTPUTS)
    return ["sh", "-c", f"rm -rf {outputs} && exec {shlex.quote(str(medallion))} "
                        f"--root {shlex.quote(str(root))} run tpch"]


def peer_command(module: str, *options: str, python: Callable[[], str] = lambda: sys.executable
                 ) -> Callable[[Path, Path], list[str]]:
    """Command builder of the peer `benchmarks/tpch/peers/<module>.py`, run by `python()`: on `data`, writing
    `out`."""
    def command(data: Path, out: Path) -> list[str]:
        return [python(), str(PEERS / f"{module}.py"), "--data", str(data), "--out", str(out), *options]
    return command


def spark_python() -> str:
    """The Python of PySpark's own environment, `benchmarks/spark-env` (set up by `scripts/dev sync`): pandera
    imports `pyspark.pandas` whenever PySpark is importable, which would slow every engine process.

    Raises:
        RunError: the environment is not set up.
    """
    python = PEERS.parents[1] / "spark-env" / ".venv" / "bin" / "python"
    if not python.exists():
        raise RunError(f"no PySpark environment at `{python.parents[2]}`; run `scripts/dev sync`")
    return str(python)


COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "engine": lambda data, root: engine_command(root),
    "duckdb": peer_command("duckdb_run"),
    "polars": peer_command("polars_run"),
    "spark": peer_command("spark_run", python=spark_python),
    "daft": peer_command("daft_run", "--runner", "native"),
    "daft-ray": peer_command("daft_run", "--runner", "ray"),
}
"""Command of every benchmarked engine: (prepared data folder, output folder) -> argv."""


def link_landing(data: Path, root: Path) -> None:
    """Make the raw files of `data` the landing folders of the pipeline under `root`."""
    landing = root / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        link = landing / table
        if not link.is_symlink():
            link.symlink_to((data / "raw" / table).resolve(), target_is_directory=True)


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "system": platform.platform(), "load_1m": os.getloadavg()[0]}


def environment() -> dict[str, str]:
    """This process's environment for a benchmarked process: no Ray address to attach to, no Ray auth token."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}


def output(engine: str, folder: Path) -> Output:
    """Where `engine` wrote its tables, `folder` being its output folder."""
    return Output(folder, "engine" if engine == "engine" else "workload")


def benchmark(sf: float, runs: int, data_root: Path, work: Path,
              engines: tuple[str, ...] = tuple(COMMANDS)) -> list[Measurement]:
    """Run every one of `engines` `runs` times at scale `sf`, in a rotating order, checking every output."""
    if "duckdb" not in engines:
        raise RunError("the DuckDB peer is the reference of every check: include `duckdb` in the engines")
    data = prepare(sf, data_root)
    if "engine" in engines:
        link_landing(data, work / "engine")
    env = environment()
    measurements = []
    for run in range(1, runs + 1):
        shift = (run - 1) % len(engines)
        for engine in engines[shift:] + engines[:shift]:
            wall, peak, log = measure(COMMANDS[engine](data, work / engine), env)
            reported = PIPELINE_TIME.search(log) if engine == "engine" else None
            measurements.append(Measurement(engine, run, round(wall, 2), round(peak.rss / 2**20, 1),
                                            float(reported.group(1)) if reported else None,
                                            round(peak.pss / 2**20, 1)))
        reference = Output(work / "duckdb")
        for engine in engines:
            assert_correct(data, output(engine, work / engine), reference)
    return measurements


def table(sf: float, measurements: list[Measurement]) -> str:
    """Markdown summary: median and best wall time, ratio to the engine, largest peak RSS and PSS per engine."""
    lines = ["| SF | engine | runs | wall median (s) | wall best (s) | ratio to engine | peak RSS max (MB) | "
             "peak PSS max (MB) | runner median (s) |", "|---|---|---|---|---|---|---|---|---|"]
    medians = {engine: statistics.median(m.wall_s for m in measurements if m.engine == engine)
               for engine in dict.fromkeys(m.engine for m in measurements)}
    for engine, median in medians.items():
        mine = [m for m in measurements if m.engine == engine]
        inner = [m.pipeline_s for m in mine if m.pipeline_s is not None]
        runner = f"{statistics.median(inner):.1f}" if inner else "-"
        ratio = f"{median / medians['engine']:.2f}" if "engine" in medians else "-"
        lines.append(f"| {sf:g} | {engine} | {len(mine)} | {median:.2f} | {min(m.wall_s for m in mine):.2f} | "
                     f"{ratio} | {max(m.peak_rss_mb for m in mine):.0f} | "
                     f"{max(m.peak_pss_mb or 0 for m in mine):.0f} | {runner} |")
    return "\n".join(lines)


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sf", type=float, default=0.01)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("bench-data"), help="cache of prepared data")
    parser.add_argument("--work", type=Path, default=Path("bench-work"), help="scratch folder for the outputs")
    parser.add_argument("--engines", type=lambda text: tuple(text.split(",")), default=tuple(COMMANDS),
                        help=f"comma-separated, among {','.join(COMMANDS)} (default: all); must include duckdb")
    parser.add_argument("--results", type=Path, help="write the raw measurements here (JSON)")
    args = parser.parse_args()
    unknown = set(args.engines) - set(COMMANDS)
    if unknown:
        parser.error(f"--engines: unknown {sorted(unknown)}")
    before = machine()
    measurements = benchmark(args.sf, args.runs, args.data, args.work, args.engines)
    after = machine()
    print(table(args.sf, measurements))
    print(json.dumps({"machine_before": before, "load_1m_after": after["load_1m"]}, indent=2))
    if args.results:
        args.results.write_text(json.dumps({"sf": args.sf, "machine": before, "load_1m_after": after["load_1m"],
                                            "measurements": [asdict(m) for m in measurements]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
