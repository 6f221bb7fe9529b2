"""What the quality gate costs: the retail silver step with and without its checks, same data, same process.

Usage: python benchmarks/quality_cost.py [--scale S] [--repeat N]
Prints, per silver table and in total, the median time with checks, without, and the checks' share.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402

from benchmarks.ingest import RETAIL_AS_OF  # noqa: E402
from engine import Pipeline, Runner, load_settings  # noqa: E402
from engine.runtime import start_private_ray  # noqa: E402
from pipelines.retail.generate import generate  # noqa: E402
from pipelines.retail.pipeline import retail  # noqa: E402

SILVER = "+silver.*"


def without_checks(pipeline: Pipeline) -> Pipeline:
    """The same tables with no quality declarations."""
    bare = Pipeline(pipeline.name)
    for definition in pipeline.tables.values():
        if definition.source is not None:
            bare.ingest(definition.name, definition.source)
        elif definition.function is not None:
            bare.table(definition.name, kind=definition.kind, ray_options=definition.ray_options,
                       on_demand=definition.on_demand)(definition.function)
    return bare


def silver_seconds(pipeline: Pipeline, landing: Path, workdir: Path) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(dir=workdir))
    (root / "landing").symlink_to(landing)
    result = Runner(pipeline, load_settings(overrides={"storage": {"root": str(root)}})).run(SILVER)
    assert result.succeeded, [r.error for r in result.records if r.error]
    return {r.table: r.duration_s for r in result.records if r.table.startswith("silver.")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    start_private_ray(num_cpus=2, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        generate(workdir / "landing", scale=args.scale, as_of=RETAIL_AS_OF)
        bare = without_checks(retail)
        silver_seconds(retail, workdir / "landing", workdir)
        runs: dict[str, list[dict[str, float]]] = {"checked": [], "bare": []}
        for _ in range(args.repeat):
            runs["checked"].append(silver_seconds(retail, workdir / "landing", workdir))
            runs["bare"].append(silver_seconds(bare, workdir / "landing", workdir))
    print(f"retail silver step at scale {args.scale}, median of {args.repeat} alternating runs (2 CPUs)")
    print(f"{'table':<22}{'with checks':>13}{'without':>10}{'checks share':>14}")
    totals = {"checked": 0.0, "bare": 0.0}
    for table in runs["checked"][0]:
        checked = statistics.median(r[table] for r in runs["checked"])
        bare_s = statistics.median(r[table] for r in runs["bare"])
        totals["checked"] += checked
        totals["bare"] += bare_s
        print(f"{table:<22}{checked:>12.2f}s{bare_s:>9.2f}s{(checked - bare_s) / checked:>13.0%}")
    share = (totals["checked"] - totals["bare"]) / totals["checked"]
    print(f"{'silver total':<22}{totals['checked']:>12.2f}s{totals['bare']:>9.2f}s{share:>13.0%}")
    ray.shutdown()


if __name__ == "__main__":
    main()
