"""Feature store: materialization throughput and online retrieval latency, SQLite and Redis online stores.

Usage: python -m benchmarks.features --scale S [--root R] [--lookups N] [--redis HOST:PORT] [--no-redis]
                                     [--results out.json]

Generates retail landing data at scale S under R (a temporary folder when R is not given; otherwise an
empty or new one), runs the retail pipeline (set `MEDALLION_PII_KEY`: it tokenizes personal data), applies
the feature repository `features/`, then for each online store:
  materialization  a full `materialize` of every online view as of the end of the generated period, run
                   twice: the first (`cold_s`, Ray workers loading Feast) is not the measure, the second
                   is; rows are the rows the engine's materialization reports written (and checked online);
  retrieval        N single-entity `get_online_features` calls of the `customer_training` service for
                   customer ids drawn from gold.dim_customer (fixed seed), after WARMUP calls not counted;
                   p50 / p95 / p99 / mean in ms.
SQLite is the repository's default store (under `<R>/_meta/features`). Redis (`--redis`, default
`$MEDALLION_REDIS` or 127.0.0.1:6379) runs under a project of its own, whose keys are removed afterwards; it
is skipped, with the reason printed, when nothing listens there. Prints a Markdown table and the machine
(other work on it skews the numbers), and writes everything to `--results`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from deltalake import DeltaTable
from feast import FeatureStore

from benchmarks.ingest import RETAIL_AS_OF, BenchmarkError, run_retail
from benchmarks.tpch.run import machine
from engine import load_settings
from engine.features.materialize import MaterializationReport, materialize
from engine.features.repo import apply_repo, load_definitions, open_store
from engine.layout import Layout
from engine.runtime import ray_session
from pipelines.retail.generate import Period

FEATURE_REPO = Path(__file__).resolve().parents[1] / "features"
SERVICE = "customer_training"
ENTITY_TABLE, ENTITY_KEY = "gold.dim_customer", "customer_id"
MATERIALIZE_END = dt.datetime.fromtimestamp(Period.through(RETAIL_AS_OF).end, dt.UTC)
"""The end of the generated period: every view has rows within its TTL then."""
WARMUP = 50
SEED = 7
DEFAULT_REDIS = os.environ.get("MEDALLION_REDIS", "127.0.0.1:6379")


def redis_unreachable(address: str) -> str | None:
    """Why Redis at `host:port` cannot be used, None when something listens there."""
    host, _, port = address.partition(":")
    try:
        socket.create_connection((host, int(port or 6379)), timeout=2).close()
    except OSError as err:
        return f"Redis is not reachable on {address} ({err}); start it with scripts/services or pass --redis"
    return None


@contextmanager
def redis_project(address: str) -> Iterator[dict[str, Any]]:
    """Feast overrides for a Redis online store under a new project; its keys are removed afterwards."""
    import redis

    project = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        yield {"project": project, "online_store": {"type": "redis", "connection_string": address}}
    finally:
        host, _, port = address.partition(":")
        client = redis.Redis(host=host, port=int(port or 6379))
        for key in client.scan_iter(match=b"*" + project.encode()):
            client.delete(key)
        client.close()


def rows_written(reports: list[MaterializationReport]) -> dict[str, int]:
    """Rows each view's full materialization wrote.

    Raises:
        BenchmarkError: a view's online rows differ from its written rows, or nothing was written.
    """
    short = [f"{r.view}: {r.written} written, {r.online_rows} online, {r.deleted} deleted" for r in reports
             if r.written != r.online_rows or r.deleted or r.incremental]
    if short or not sum(r.written for r in reports):
        raise BenchmarkError("the full materialization did not write every online row: "
                             + ("; ".join(short) or "no row written"))
    return {r.view: r.written for r in reports}


def time_materialization(store: FeatureStore) -> dict[str, Any]:
    """Two full materializations; the rows, time and rows/s of the second (the first warms Ray up)."""
    started = time.perf_counter()
    rows_written(materialize(store, end=MATERIALIZE_END))
    cold = time.perf_counter() - started
    started = time.perf_counter()
    views = rows_written(materialize(store, end=MATERIALIZE_END))
    seconds = time.perf_counter() - started
    rows = sum(views.values())
    return {"rows": rows, "views": views, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds, 1),
            "cold_s": round(cold, 3)}


def customer_ids(root: str | Path) -> np.ndarray:
    """The distinct customer ids of the entity table."""
    column = DeltaTable(Layout.at(str(root)).table(ENTITY_TABLE)).to_pyarrow_table(columns=[ENTITY_KEY])[0]
    return np.unique(column.drop_null().to_numpy())


def time_lookups(store: FeatureStore, ids: np.ndarray, lookups: int, warmup: int, seed: int) -> dict[str, Any]:
    """`warmup` then `lookups` timed single-entity lookups of the feature service; percentiles in ms.

    Raises:
        BenchmarkError: a looked-up customer has no online features.
    """
    service = store.get_feature_service(SERVICE)
    rng = np.random.default_rng(seed)
    drawn = rng.choice(ids, size=warmup + lookups)
    carts = rng.uniform(5, 500, size=warmup + lookups)
    times = []
    for i, (customer, cart) in enumerate(zip(drawn.tolist(), carts.tolist(), strict=True)):
        started = time.perf_counter_ns()
        values = store.get_online_features(features=service, entity_rows=[
            {ENTITY_KEY: customer, "cart_value": cart}]).to_dict()
        elapsed = time.perf_counter_ns() - started
        if values["segment"][0] is None:
            raise BenchmarkError(f"customer {customer} has no online profile: the lookups would time misses")
        if i >= warmup:
            times.append(elapsed / 1e6)
    latencies = np.array(times)
    return {"calls": lookups, "warmup": warmup, "p50": _ms(np.percentile(latencies, 50)),
            "p95": _ms(np.percentile(latencies, 95)), "p99": _ms(np.percentile(latencies, 99)),
            "mean": _ms(latencies.mean())}


def _ms(value: float) -> float:
    return round(float(value), 3)


def bench_store(root: str | Path, lookups: int, overrides: dict[str, Any] | None = None, *,
                warmup: int = WARMUP, seed: int = SEED) -> dict[str, Any]:
    """Apply the feature repository to the store of `overrides` over `root`, then time materialization and
    lookups there (in the Ray already running)."""
    store = open_store(str(root), FEATURE_REPO, overrides=overrides)
    apply_repo(store, load_definitions(FEATURE_REPO))
    return {"project": store.project, "materialize": time_materialization(store),
            "latency_ms": time_lookups(store, customer_ids(root), lookups, warmup, seed)}


def run(scale: float, root: str | Path, lookups: int, *, redis: str | None = DEFAULT_REDIS,
        warmup: int = WARMUP, seed: int = SEED) -> dict[str, Any]:
    """Build the retail tables at `scale` under `root` and benchmark SQLite and (unless `redis` is None)
    Redis at `redis`; a store that cannot be used has `skipped` with the reason instead of numbers."""
    before = machine()
    stores: dict[str, dict[str, Any]] = {}
    with ray_session(load_settings(overrides={"storage": {"root": str(root)}}).ray):
        started = time.perf_counter()
        run_retail(scale, root)
        pipeline_s = time.perf_counter() - started
        stores["sqlite"] = bench_store(root, lookups, warmup=warmup, seed=seed)
        reason = "not requested" if redis is None else redis_unreachable(redis)
        if redis is not None and reason is None:
            with redis_project(redis) as overrides:
                stores["redis"] = bench_store(root, lookups, overrides, warmup=warmup, seed=seed)
        else:
            stores["redis"] = {"skipped": reason}
    return {"scale": scale, "root": str(root), "lookups": lookups, "pipeline_s": round(pipeline_s, 2),
            "end": MATERIALIZE_END.isoformat(), "machine": before, "load_1m_after": os.getloadavg()[0],
            "stores": stores}


def markdown(results: dict[str, Any]) -> list[str]:
    """Materialization and latency per online store: the lines of a Markdown table."""
    lines = ["| store | rows | materialize (s) | rows/s | lookups | p50 (ms) | p95 (ms) | p99 (ms) | mean (ms) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, numbers in results["stores"].items():
        if "skipped" in numbers:
            lines.append(f"| {name} | skipped: {numbers['skipped']} ||||||||")
            continue
        done, latency = numbers["materialize"], numbers["latency_ms"]
        lines.append(f"| {name} | {done['rows']:,} | {done['seconds']:.2f} | {done['rows_per_s']:,.0f} | "
                     f"{latency['calls']:,} | {latency['p50']:.2f} | {latency['p95']:.2f} | {latency['p99']:.2f} | "
                     f"{latency['mean']:.2f} |")
    return lines


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--root", type=Path, help="storage root to build in (default: a temporary folder)")
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="host:port of the Redis online store")
    parser.add_argument("--no-redis", action="store_true", help="benchmark SQLite only")
    parser.add_argument("--results", type=Path, help="write the results here (JSON)")
    args = parser.parse_args()
    if args.lookups < 1:
        parser.error("--lookups must be at least 1")
    warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    with tempfile.TemporaryDirectory(prefix="features-bench-") as scratch:
        results = run(args.scale, args.root or scratch, args.lookups, redis=None if args.no_redis else args.redis)
    print(f"retail scale {args.scale:g}, pipeline {results['pipeline_s']:.1f}s, materialized as of {results['end']}")
    print("\n".join(markdown(results)))
    print(json.dumps({"machine": results["machine"], "load_1m_after": results["load_1m_after"]}, indent=2))
    if args.results:
        args.results.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
