"""Small deliveries: one retail delivery (the last batch of the feed at `--scale`, about 5,900 records at 0.2)
through the 15 tables of the retail pipeline, on a root that holds the earlier batches.

Usage: python -m benchmarks.delivery [--work bench-work] [--scale 0.2] [--repeats 3]

Measured two ways, each with the tables of a run built at once (`run.concurrent_tables`: its default, the
cluster's CPUs, and 4) and one at a time (1):
  one-shot  `medallion run retail` in its own process: imports, Ray's start and stop included;
  watch     a micro-batch of a long-lived driver, as `medallion run --watch` runs them: the run of the delivery
            after a first delivery has warmed Ray's workers, from the landed file to the committed gold tables.
Every measured run must commit the delivery to every gold table it reaches; the median of the repeats is kept,
with the runner's own time and its longest chain of tables (the critical path the concurrent run waits on).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.tpch.run import RunError, environment

MEDALLION = str(Path(sys.executable).with_name("medallion"))
AS_OF = "2026-05-30"
MODES: dict[str, int | None] = {"default": None, "four at once": 4, "one at a time": 1}
"""Measured settings of `run.concurrent_tables`, by name (None: the default, the cluster's CPUs)."""
TARGETS_S = {"one-shot": 4.0, "watch": 1.5}
"""Wall time a delivery should take, by way of running it."""


def _medallion(root: Path, *arguments: str, concurrent: int | None = None) -> subprocess.CompletedProcess[str]:
    env = environment() | ({"MEDALLION__RUN__CONCURRENT_TABLES": str(concurrent)} if concurrent else {})
    done = subprocess.run([MEDALLION, "--root", str(root), *arguments], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RunError(f"`medallion {' '.join(arguments)}` exited with {done.returncode}:\n"
                       f"{(done.stdout + done.stderr)[-3000:]}")
    return done


def batches(scale: float) -> int:
    """How many deliveries the retail feed has at `scale`: the files of its largest source."""
    import tempfile

    from pipelines.retail.generate import generate

    with tempfile.TemporaryDirectory(prefix="delivery-") as landing:
        written = generate(landing, scale=scale, as_of=_as_of())
    return max(len(source.files) for source in written.values())


def base_root(work: Path, scale: float) -> tuple[Path, int]:
    """A root holding every delivery but the last two, built once under `work`; the number of the last one."""
    last = batches(scale)
    root = work / f"delivery-{scale:g}" / "base"
    if not (root / "_meta" / "runs").is_dir():
        from pipelines.retail.generate import generate

        shutil.rmtree(root, ignore_errors=True)
        for batch in range(1, last - 1):
            generate(root / "landing", scale=scale, batch=batch, as_of=_as_of())
        _medallion(root, "run", "retail")
    return root, last


def fresh_copy(base: Path, to: Path) -> Path:
    """A copy of `base` at `to`, file times kept (a landing file whose time changed would count as altered)."""
    shutil.rmtree(to, ignore_errors=True)
    shutil.copytree(base, to, copy_function=shutil.copy2, symlinks=True)
    return to


def one_shot(base: Path, last: int, scale: float, concurrent: int | None) -> dict[str, Any]:
    """`medallion run retail` over the next-to-last delivery, in its own process."""
    from pipelines.retail.generate import generate

    root = fresh_copy(base, base.parent / "one-shot")
    generate(root / "landing", scale=scale, batch=last - 1, as_of=_as_of())
    started = time.perf_counter()
    done = _medallion(root, "run", "retail", concurrent=concurrent)
    wall = time.perf_counter() - started
    runner = float(done.stdout.rsplit(" finished in ", 1)[1].split("s;", 1)[0])
    _require_gold_committed(root)
    return {"wall_s": wall, "runner_s": runner}


def watch(base: Path, last: int, scale: float, concurrent: int | None) -> dict[str, Any]:
    """A warm micro-batch, measured in a process of its own (`--warm-child`)."""
    root = fresh_copy(base, base.parent / "watch")
    done = subprocess.run([sys.executable, "-m", "benchmarks.delivery", "--warm-child", str(root), "--scale",
                           f"{scale:g}", "--last", str(last), "--concurrent", str(concurrent or 0)],
                          capture_output=True, text=True, env=environment())
    if done.returncode != 0:
        raise RunError(f"the warm micro-batch failed:\n{(done.stdout + done.stderr)[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    _require_gold_committed(root)
    return result


def warm_child(root: Path, scale: float, last: int, concurrent: int | None) -> dict[str, Any]:
    """In this process: Ray started (or the one running used), the next-to-last delivery run (warming the
    workers), then the last one landed and run; its wall time, and its longest chain of tables."""
    from engine.config import load_settings
    from engine.runner import Runner
    from engine.runtime import ray_session
    from pipelines.retail.generate import generate
    from pipelines.retail.pipeline import retail

    settings = load_settings(overrides={"storage": {"root": str(root)},
                                        "run": {"concurrent_tables": concurrent or None}})
    with ray_session(settings.ray):
        runner = Runner(retail, settings)
        for batch in (last - 1, last):
            generate(root / "landing", scale=scale, batch=batch, as_of=_as_of())
            started = time.perf_counter()
            result = runner.run()
            wall = time.perf_counter() - started
            if not result.succeeded:
                raise RunError(f"micro-batch {batch} failed: {[r.error for r in result.failures()]}")
    durations = {r.table: r.duration_s for r in result.records}
    return {"wall_s": wall, "runner_s": result.seconds, "critical_path_s": _critical_path(durations)}


def _as_of() -> Any:
    import datetime as dt

    return dt.date.fromisoformat(AS_OF)


def _critical_path(durations: dict[str, float]) -> float:
    """The longest chain of table durations through the retail pipeline's dependencies."""
    from pipelines.retail.pipeline import retail

    definitions = retail.resolve()
    longest: dict[str, float] = {}
    for name in retail.select():
        upstream = [longest[d] for d in definitions[name].dependencies if d in longest]
        longest[name] = durations.get(name, 0.0) + max(upstream, default=0.0)
    return max(longest.values(), default=0.0)


def _require_gold_committed(root: Path) -> None:
    """The measured delivery reached gold: the last run committed `gold.customer_features`."""
    from engine.layout import Layout
    from engine.runlog import read_records

    records = read_records(Layout.at(str(root)).runs())
    last_run = records.sort("started_at")["run_id"][-1]
    committed = records.filter((records["run_id"] == last_run) & (records["status"] == "succeeded"))["table"]
    if "gold.customer_features" not in committed.to_list():
        raise RunError(f"the delivery did not reach gold under {root}: committed {committed.to_list()}")


def measure(work: Path, scale: float = 0.2, repeats: int = 3, modes: dict[str, int | None] | None = None,
            ways: tuple[str, ...] = tuple(TARGETS_S)) -> dict[str, Any]:
    """Median wall and runner seconds of a delivery, each of `ways` (`one-shot`, `watch`) and in each mode of
    `modes` (`MODES`)."""
    base, last = base_root(work, scale)
    results: dict[str, Any] = {"scale": scale, "repeats": repeats, "ways": {}}
    for way, measure_once in (("one-shot", one_shot), ("watch", watch)):
        if way not in ways:
            continue
        for mode, concurrent in (modes or MODES).items():
            samples = [measure_once(base, last, scale, concurrent) for _ in range(repeats)]
            results["ways"][f"{way}, {mode}"] = {
                "way": way, "concurrent_tables": concurrent, "target_s": TARGETS_S[way],
                **{key: round(statistics.median(s[key] for s in samples), 2) for key in samples[0]}}
    return results


def table(results: dict[str, Any]) -> list[str]:
    """The measurements as a Markdown table."""
    lines = ["| way | tables at once | wall median (s) | runner median (s) | longest chain of tables (s) | target (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results["ways"].values():
        chain = "" if r.get("critical_path_s") is None else f"{r['critical_path_s']:.2f}"
        lines.append(f"| {r['way']} | {r['concurrent_tables'] or 'the CPUs (default)'} | {r['wall_s']:.2f} | "
                     f"{r['runner_s']:.2f} | "
                     f"{chain} | {r['target_s']:g} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("bench-work"))
    parser.add_argument("--scale", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warm-child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--last", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--concurrent", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warm_child is not None:
        print(json.dumps(warm_child(args.warm_child, args.scale, args.last, args.concurrent)))
        return
    print("\n".join(table(measure(args.work, args.scale, args.repeats))))


if __name__ == "__main__":
    main()
