"""Shared fixtures: one private Ray instance per test session, and retail data built once."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MEDALLION_PII_KEY", "test-pii-key")
# The PostgreSQL source tests' connection string, set before Ray starts so that its workers have it too; its
# password (which the server's trust authentication ignores) is a canary no file or message may hold.
SOURCE_DSN_CANARY = "dsn-canary-7c1e5b"
os.environ.setdefault("MEDALLION_TEST_SOURCE_DSN", f"postgresql://root:{SOURCE_DSN_CANARY}@127.0.0.1:5432/test")

import ray  # noqa: E402

from engine import Runner, RunResult, load_settings  # noqa: E402
from engine.config import Settings  # noqa: E402
from engine.runtime import start_private_ray  # noqa: E402

RETAIL_TEST_SCALE = 0.05
RETAIL_AS_OF = date(2026, 5, 30)
"""The last day of the retail test data, which the tests' expected dates and counts assume."""

pytest_plugins = ["tests.receiver"]

HEAVIEST_FILES = (
    "storage/test_s3.py",
    "cluster/test_jobs.py",
    "adversarial/test_canary_secrets.py",
    "engine/test_exactly_once.py",
    "cluster/test_autoscaling.py",
    "adversarial/test_erasure.py",
    "engine/test_concurrent_tables.py",
    "engine/ingest/test_postgres_source.py",
    "benchmarks/test_peers.py",
    "storage/test_s3_iceberg.py",
    "cluster/test_multinode.py",
    "test_notebooks.py",
    "cluster/test_auth.py",
    "pipelines/test_retail_from_database.py",
    "storage/test_s3_objects.py",
    "pipelines/test_retail_pipeline.py",
    "engine/cli/test_init.py",
    "engine/cli/test_demo_cli.py",
    "training/test_services.py",
    "test_docs.py",
    "features/test_server.py",
    "benchmarks/test_merge_bench.py",
)
"""The test files that take longest (a minute or more each on two cores, or close to it), longest first, relative
to this folder: `pytest_collection_modifyitems` runs them first. Kept by hand from `--durations=0` of full runs."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the tests of `HEAVIEST_FILES` first, file by file in its order; the other files follow in the order
    they were collected in, and every file keeps its tests in their order.

    `scripts/dev test` runs the suite in two processes with `--dist loadfile`: each file goes whole to the next
    process that runs short of tests, in this order (pyproject.toml turns off xdist's reordering of files by their
    number of tests, which put these files, most of which hold few tests, last). Started first, the longest files
    spread over both processes and the short ones fill in after them, so that both finish at about the same time,
    instead of one process running a file of several minutes alone at the end. The order depends on the collected
    items only, so every process collects the same one, as xdist requires."""
    tests = Path(__file__).parent
    if gone := [name for name in HEAVIEST_FILES if not (tests / name).is_file()]:
        raise pytest.UsageError(f"tests/conftest.py HEAVIEST_FILES names files that do not exist: {', '.join(gone)}")
    rank = {name: place for place, name in enumerate(HEAVIEST_FILES)}

    def place(item: pytest.Item) -> int:
        relative = item.path.relative_to(tests).as_posix() if item.path.is_relative_to(tests) else ""
        return rank.get(relative, len(rank))

    items.sort(key=place)  # stable: the rest of the order stays as collected


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A private local Ray instance with a small fixed footprint, started as the CLI starts one (loopback only),
    shut down after the session."""
    start_private_ray(num_cpus=2, object_store_memory=512 * 2**20, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def _mlflow_location_restored() -> Iterator[None]:
    """MLflow exports the tracking and registry URIs a test sets to the environment, for subprocesses: put them
    back after each test, so that no later test (or Ray process it starts) tracks in another test's store."""
    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def settings_at(root: Path) -> Settings:
    """Default settings with the storage root at `root`."""
    return load_settings(overrides={"storage": {"root": str(root)}})


@dataclass(frozen=True)
class RetailBuild:
    """A storage root where the retail pipeline ran once on generated landing data."""

    root: Path
    settings: Settings
    result: RunResult


@pytest.fixture(scope="session")
def retail_build(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> RetailBuild:
    """The retail pipeline run end to end at test scale, shared by the tests that only read it."""
    from pipelines.retail.generate import generate
    from pipelines.retail.pipeline import retail

    root = tmp_path_factory.mktemp("retail")
    generate(root / "landing", scale=RETAIL_TEST_SCALE, as_of=RETAIL_AS_OF)
    settings = settings_at(root)
    result = Runner(retail, settings).run()
    assert result.succeeded, [r.error for r in result.records if r.error]
    return RetailBuild(root, settings, result)


@contextlib.contextmanager
def lease_held_elsewhere(root: Path, pipeline: str, run_id: str) -> Iterator[subprocess.Popen[str]]:
    """Another process, alive for the block, holding the run lease of `pipeline` on `root` as run `run_id`;
    the block may kill it."""
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
              "from engine.lease import RunLease; from engine.layout import Layout; "
              f"RunLease(Layout.at({str(root)!r}), {pipeline!r}).acquire({run_id!r}); "
              "print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def require_service(host: str, port: int, service: str) -> None:
    """Skip (or, with `CI` set, fail) when nothing listens on host:port."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        reason = f"{service} is not reachable on {host}:{port}; start it with scripts/services"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so service tests must run)")
        pytest.skip(reason)


@pytest.fixture
def redis_online() -> Iterator[dict[str, Any]]:
    """Feast overrides for a Redis online store under a project name of its own; its keys are removed after."""
    import redis

    host, port = os.environ.get("MEDALLION_TEST_REDIS", "127.0.0.1:6379").split(":")
    require_service(host, int(port), "Redis")
    project = f"t{uuid.uuid4().hex[:12]}"
    yield {"project": project, "online_store": {"type": "redis", "connection_string": f"{host}:{port}"}}
    client = redis.Redis(host=host, port=int(port))
    for key in client.scan_iter(match=b"*" + project.encode()):
        client.delete(key)
    client.close()


@pytest.fixture
def postgres_catalog() -> Iterator[str]:
    """The SQLAlchemy URI of a scratch PostgreSQL database, dropped after."""
    import psycopg

    server = os.environ.get("MEDALLION_TEST_POSTGRES", "root@127.0.0.1:5432")
    host, port = server.split("@")[-1].split(":")
    require_service(host, int(port), "PostgreSQL")
    database = f"iceberg_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"postgresql://{server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    yield f"postgresql+psycopg://{server}/{database}"
    with psycopg.connect(f"postgresql://{server}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
