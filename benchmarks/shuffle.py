"""The engine's hash shuffle against Ray Data's shuffle strategies, on a deduplication by key.

Usage: python -m benchmarks.shuffle [--rows 6000000] [--runs 3] [--work bench-work/shuffle]

Writes `rows` lineitem-like rows (about 1 % of keys twice) as 8 Parquet files, then, each run in a fresh process
with a private Ray of 2 CPUs and in rotating order, deduplicates them on `(orderkey, linenumber)`:
`engine` is `engine.map_partitions`; `ray:<strategy>` is `Dataset.repartition(keys=...)` under Ray Data's shuffle
strategy, then the same function on each block. The time is from the read to the materialized result; every
result is checked to hold each key once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

KEYS = ["orderkey", "linenumber"]
FILES = 8
VARIANTS = ("engine", "ray:hash_shuffle", "ray:shuffle_v2")


def write_input(folder: Path, rows: int) -> int:
    """`rows` rows in `FILES` Parquet files under `folder`; returns how many distinct keys they hold."""
    folder.mkdir(parents=True, exist_ok=True)
    draw = np.random.default_rng(42)
    unique = int(rows / 1.01)
    order = np.concatenate([np.arange(unique), draw.integers(0, unique, rows - unique)])
    draw.shuffle(order)
    for part, chunk in enumerate(np.array_split(order, FILES)):
        pq.write_table(pa.table({
            "orderkey": chunk // 4, "linenumber": chunk % 4, "quantity": draw.integers(1, 50, len(chunk)) * 1.0,
            "price": draw.random(len(chunk)) * 1e5, "discount": draw.random(len(chunk)) / 10,
            "shipdate": pa.array(draw.integers(8000, 10500, len(chunk)).astype("int32"), pa.date32()),
            "comment": pa.array(np.char.add("line ", chunk.astype(str)))}), folder / f"part-{part}.parquet")
    return unique


def deduplicated(batch: pa.Table) -> pa.Table:
    """One row per key of `batch`."""
    return batch.group_by(KEYS, use_threads=False).aggregate([(c, "first") for c in batch.column_names
                                                               if c not in KEYS]).rename_columns(
        KEYS + [c for c in batch.column_names if c not in KEYS])


def run_variant(variant: str, folder: Path) -> dict[str, float]:
    """In this process: start a private Ray, deduplicate, and return the seconds and the rows and keys out."""
    import ray
    import ray.data

    from engine.partitioning import map_partitions

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        started = time.perf_counter()
        dataset = ray.data.read_parquet(str(folder))
        if variant == "engine":
            result = map_partitions(dataset, KEYS, deduplicated)
        else:
            ray.data.DataContext.get_current().shuffle_strategy = variant.removeprefix("ray:")
            result = dataset.repartition(8, keys=KEYS).map_batches(deduplicated, batch_format="pyarrow",
                                                                   batch_size=None)
        blocks = ray.get(result.materialize().to_arrow_refs())
        seconds = time.perf_counter() - started
        keys = pa.concat_tables([b.select(KEYS) for b in blocks])
        distinct = pc.count_distinct(pc.binary_join_element_wise(
            keys["orderkey"].cast(pa.string()), keys["linenumber"].cast(pa.string()), "-")).as_py()
        return {"seconds": seconds, "rows": keys.num_rows, "keys": distinct}
    finally:
        ray.shutdown()


def measure(rows: int, runs: int, work: Path) -> dict[str, object]:
    """Every variant `runs` times in rotating order, each in its own process."""
    folder = work / "input"
    unique = write_input(folder, rows)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    checked: dict[str, bool] = {v: True for v in VARIANTS}
    for run in range(runs):
        for variant in VARIANTS[run % len(VARIANTS):] + VARIANTS[:run % len(VARIANTS)]:
            output = subprocess.run([sys.executable, "-m", "benchmarks.shuffle", "--variant", variant,
                                     "--work", str(work)], check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            times[variant].append(result["seconds"])
            checked[variant] &= result["rows"] == result["keys"] == unique
    return {"rows": rows, "unique": unique, "variants": {
        v: {"median": statistics.median(times[v]), "best": min(times[v]), "runs": runs, "one_row_per_key": checked[v]}
        for v in VARIANTS}}


def markdown(results: dict[str, object]) -> list[str]:
    """The measurement as a table."""
    variants = results["variants"]
    assert isinstance(variants, dict)
    lines = [f"{results['rows']:,} rows, {results['unique']:,} keys; seconds from the read to the materialized result.",
             "", "| shuffle | runs | median (s) | best (s) | one row per key |", "|---|---:|---:|---:|---|"]
    lines += [f"| {name} | {v['runs']} | {v['median']:.2f} | {v['best']:.2f} | {'yes' if v['one_row_per_key'] else 'NO'} |"
              for name, v in variants.items()]
    return lines


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=6_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("bench-work/shuffle"))
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.work / "input")))
        return
    print("\n".join(markdown(measure(args.rows, args.runs, args.work))))


if __name__ == "__main__":
    main()
