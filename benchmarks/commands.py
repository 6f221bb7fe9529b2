"""Start-up of the everyday commands: `medallion --help`, and `status`, `history`, `catalog`, `show` and a `run`
with nothing new on the demo's root, each run several times in its own process.

Usage: python -m benchmarks.commands [--work bench-work] [--repeats 7]

Reports the median wall time and the median CPU time (user + system) of each command. The CPU time is what a
quiet machine's wall time comes down to for these single-threaded commands, so it still says something when the
machine is busy; the targets hold for the wall time on a quiet machine.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.tpch.run import RunError, environment

MEDALLION = str(Path(sys.executable).with_name("medallion"))
DEMO_SCALE = 1.0
DEMO_AS_OF = "2026-05-30"
COMMANDS = {
    "--help": ["--help"],
    "status": ["status"],
    "history": ["history", "silver.orders"],
    "catalog": ["catalog"],
    "show": ["show", "silver.orders"],
    "run, nothing new": ["run", "retail"],
}
"""Measured command -> its arguments after `medallion --root ROOT`."""
TARGETS_S = {"--help": 0.5, "status": 1.0, "history": 1.0, "catalog": 1.0, "run, nothing new": 2.5}
"""Wall time each command should stay under on a quiet machine."""


def demo_root(work: Path) -> Path:
    """The root of a demo (`medallion demo` at `DEMO_SCALE`), built once under `work`."""
    root = work / "demo"
    if not (root / "_meta" / "runs").is_dir():
        done = subprocess.run([MEDALLION, "--root", str(root), "demo", "--scale", f"{DEMO_SCALE:g}", "--as-of",
                               DEMO_AS_OF], capture_output=True, text=True, env=environment())
        if done.returncode != 0:
            raise RunError(f"the demo failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return root


def timed(command: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of running `command` to its end."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, env=environment())
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RunError(f"`{' '.join(command)}` exited with {done.returncode}: {done.stderr.decode()[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure_commands(work: Path, repeats: int = 7) -> dict[str, dict[str, Any]]:
    """Median wall and CPU seconds of every command of `COMMANDS` on the demo's root, with its target."""
    root = demo_root(work)
    results = {}
    for name, arguments in COMMANDS.items():
        samples = [timed([MEDALLION, "--root", str(root), *arguments]) for _ in range(repeats)]
        results[name] = {"wall_s": round(statistics.median(s[0] for s in samples), 2),
                         "cpu_s": round(statistics.median(s[1] for s in samples), 2),
                         "target_s": TARGETS_S.get(name), "runs": repeats}
    return results


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    """The measurements as a Markdown table."""
    return ["| command | wall median (s) | CPU median (s) | target (s) |", "|---|---:|---:|---:|",
            *[f"| `medallion {' '.join(COMMANDS[name])}` | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
              f"{'' if r['target_s'] is None else format(r['target_s'], 'g')} |" for name, r in results.items()]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench-work"))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print("\n".join(table(measure_commands(args.work, args.repeats))))


if __name__ == "__main__":
    main()
