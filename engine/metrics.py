"""Prometheus metrics of the engine, fed from the run records the runner produces and from the Delta commits.

Everything is kept in `REGISTRY`, this process's engine metrics (the driver's: commits and run records are
made there). `medallion run --watch --metrics-port` serves it over HTTP, `medallion run --metrics-file` writes
it for node-exporter's textfile collector, and the feature server exposes its own request metrics.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    start_http_server,
    write_to_textfile,
)

disable_created_metrics()  # no `*_created` series next to every counter and histogram: half the exposition

REGISTRY = CollectorRegistry()
"""The engine's metrics in this process."""

SECONDS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
COMMIT_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
REQUEST_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
ROW_KINDS = ("in", "written", "quarantined", "duplicate")

rows_processed = Counter(
    "medallion_rows_processed", "Rows of a table's runs: read from its inputs (in), applied to it (written), sent "
    "to its quarantine (quarantined), dropped as older changes of a key in the same run (duplicate).",
    ["pipeline", "table", "kind"], registry=REGISTRY)
quality_failures = Counter(
    "medallion_quality_failures", "Rows that failed a quality check of a table.",
    ["pipeline", "table", "check"], registry=REGISTRY)
table_runs = Counter(
    "medallion_table_runs", "Table runs by outcome (succeeded, unchanged, failed, skipped).",
    ["pipeline", "table", "status"], registry=REGISTRY)
table_seconds = Histogram(
    "medallion_table_seconds", "Duration of a table's run.", ["pipeline", "table", "status"], buckets=SECONDS,
    registry=REGISTRY)
table_last_success = Gauge(
    "medallion_table_last_success_timestamp", "Unix time a run of the table last finished successfully "
    "(succeeded or unchanged: the table was up to date with its inputs).", ["pipeline", "table"],
    registry=REGISTRY)
run_seconds = Histogram(
    "medallion_run_seconds", "Duration of a run of a pipeline (status: succeeded, failed, stopped).",
    ["pipeline", "status"], buckets=SECONDS, registry=REGISTRY)
commit_seconds = Histogram(
    "medallion_commit_seconds", "Time a Delta commit took (operation: create, append, overwrite, merge, "
    "replace, bucket_merge, ...).", ["operation"], buckets=COMMIT_SECONDS, registry=REGISTRY)


@contextlib.contextmanager
def commit_timer(operation: str) -> Iterator[None]:
    """Time the Delta commit made in the block (also when it fails)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        commit_seconds.labels(operation).observe(time.perf_counter() - started)


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The metrics in Prometheus text format."""
    return generate_latest(registry)


def write_textfile(path: str) -> None:
    """Write the engine metrics to `path` for node-exporter's textfile collector (atomically: a temporary
    file renamed over `path`; name it `*.prom` in the collector's directory)."""
    write_to_textfile(path, REGISTRY)


def serving_registry() -> CollectorRegistry:
    """The engine metrics plus this process's CPU, memory and file descriptors, for an HTTP endpoint."""
    registry = CollectorRegistry()
    registry.register(REGISTRY)  # type: ignore[arg-type]
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def serve(port: int, host: str = "127.0.0.1") -> Any:
    """Serve `/metrics` on host:port from a daemon thread; returns the server (call `.shutdown()`)."""
    server, _thread = start_http_server(port, addr=host, registry=serving_registry())
    return server


class HttpMetrics:
    """Requests of an HTTP server (the feature server) by path and status, and their latency, in a registry of
    their own with the process's CPU, memory and file descriptors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("medallion_feature_server_requests", "HTTP requests answered, by path and status.",
                                ["path", "status"], registry=self.registry)
        self.seconds = Histogram("medallion_feature_server_request_seconds", "Time to answer an HTTP request.",
                                 ["path", "status"], buckets=REQUEST_SECONDS, registry=self.registry)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def observe(self, path: str, status: int, seconds: float) -> None:
        """Count one request to `path` answered with `status` after `seconds`."""
        self.requests.labels(path, str(status)).inc()
        self.seconds.labels(path, str(status)).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
