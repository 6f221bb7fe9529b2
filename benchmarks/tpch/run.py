"""Run the TPC-H medallion workload on the engine and its peers, check every output, report wall time and memory.

Usage: python -m benchmarks.tpch.run [--sf 0.01] [--runs 3] [--data bench-data] [--work bench-work]
                                     [--results results.json]

Prepares the data at `--sf` (cached under `--data`), then runs, alternating, N times each:
  engine   `medallion --root WORK/engine run tpch` in its own process, with the raw files linked as the
           pipeline's landing folders; the previous tables are deleted inside the timed process;
  duckdb   `python -m benchmarks.tpch.peers.duckdb_run` (deletes its output itself).
Every run's output is checked (`check.py`; the engine against the DuckDB run before it) before any time is
reported. Wall time is measured around the process; peak RSS is the largest sum of the resident memory of the
process and all its descendants (Ray's workers included), sampled every 50 ms; for the engine, the runner's
own time (its CLI's "finished in", Ray start-up and shut-down excluded) is recorded too. Prints a Markdown table
and the machine, and writes the raw numbers to `--results`.
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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from benchmarks.tpch.check import Output, assert_correct
from benchmarks.tpch.prepare import TABLES, prepare
from engine.errors import EngineError

SAMPLE_SECONDS = 0.05
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


def _tree_rss(process: psutil.Process) -> int:
    """Resident bytes of `process` and every descendant still alive."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def measure(command: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Run `command`; return its wall time in seconds, the peak RSS of its process tree in bytes, its output."""
    started = time.perf_counter()
    process = psutil.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, _tree_rss(process))
        except psutil.NoSuchProcess:
            break
        time.sleep(SAMPLE_SECONDS)
    wall = time.perf_counter() - started
    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
    if process.returncode != 0:
        raise RunError(f"`{shlex.join(command)}` exited with {process.returncode}:\n{output[-4000:]}")
    return wall, peak, output


def engine_command(root: Path) -> list[str]:
    """Delete the engine's previous tables, then run the pipeline: one shell process, timed as a whole."""
    medallion = Path(sys.executable).with_name("medallion")
    outputs = " ".join(shlex.quote(str(root / name)) for name in ENGINE_OUTPUTS)
    return ["sh", "-c", f"rm -rf {outputs} && exec {shlex.quote(str(medallion))} "
                        f"--root {shlex.quote(str(root))} run tpch"]


def duckdb_command(data: Path, out: Path) -> list[str]:
    """The DuckDB peer on `data`, writing `out`."""
    return [sys.executable, "-m", "benchmarks.tpch.peers.duckdb_run", "--data", str(data), "--out", str(out)]


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


def benchmark(sf: float, runs: int, data_root: Path, work: Path) -> list[Measurement]:
    """Alternate engine and DuckDB runs `runs` times at scale `sf`, checking every output."""
    data = prepare(sf, data_root)
    root, peer_out = work / "engine", work / "duckdb"
    link_landing(data, root)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}
    measurements = []
    for run in range(1, runs + 1):
        order = ["engine", "duckdb"] if run % 2 else ["duckdb", "engine"]
        for engine in order:
            command = engine_command(root) if engine == "engine" else duckdb_command(data, peer_out)
            wall, peak, output = measure(command, env)
            reported = PIPELINE_TIME.search(output)
            measurements.append(Measurement(engine, run, round(wall, 2), round(peak / 2**20, 1),
                                            float(reported.group(1)) if reported else None))
        assert_correct(data, Output(peer_out), Output(peer_out))
        assert_correct(data, Output(root, "engine"), Output(peer_out))
    return measurements


def table(sf: float, measurements: list[Measurement]) -> str:
    """Markdown summary: median and best wall time, largest peak RSS per engine."""
    lines = ["| SF | engine | runs | wall median (s) | wall best (s) | peak RSS max (MB) | runner median (s) |",
             "|---|---|---|---|---|---|---|"]
    for engine in dict.fromkeys(m.engine for m in measurements):
        mine = [m for m in measurements if m.engine == engine]
        walls = [m.wall_s for m in mine]
        inner = [m.pipeline_s for m in mine if m.pipeline_s is not None]
        runner = f"{statistics.median(inner):.1f}" if inner else "-"
        lines.append(f"| {sf:g} | {engine} | {len(mine)} | {statistics.median(walls):.2f} | {min(walls):.2f} | "
                     f"{max(m.peak_rss_mb for m in mine):.0f} | {runner} |")
    return "\n".join(lines)


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sf", type=float, default=0.01)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("bench-data"), help="cache of prepared data")
    parser.add_argument("--work", type=Path, default=Path("bench-work"), help="scratch folder for the outputs")
    parser.add_argument("--results", type=Path, help="write the raw measurements here (JSON)")
    args = parser.parse_args()
    before = machine()
    measurements = benchmark(args.sf, args.runs, args.data, args.work)
    after = machine()
    print(table(args.sf, measurements))
    print(json.dumps({"machine_before": before, "load_1m_after": after["load_1m"]}, indent=2))
    if args.results:
        args.results.write_text(json.dumps({"sf": args.sf, "machine": before, "load_1m_after": after["load_1m"],
                                            "measurements": [asdict(m) for m in measurements]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
