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
