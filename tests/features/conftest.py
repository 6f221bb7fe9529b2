"""Fixtures of the feature-store tests: Delta tables under a temporary root, Feast stores over them, the
retail features over a copy of the retail gold tables, and the Redis / PostgreSQL services."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import uvicorn
from deltalake import DeltaTable, write_deltalake

from engine.layout import Layout
from tests.conftest import RetailBuild, require_service

REPO = Path(__file__).resolve().parents[2] / "features"
RETAIL_END = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
GOLD_TABLES = ("customer_features", "dim_customer", "dim_product")



def table_path(root: Path, table: str) -> str:
    """Where `table` lives under `root`."""
    return Layout.at(str(root)).table(table)


def write_table(root: Path, table: str, data: pa.Table, mode: str = "append") -> int:
    """Write `data` to the Delta table `table` under `root`; returns the new version."""
    write_deltalake(table_path(root, table), data, mode=mode)
    return DeltaTable(table_path(root, table)).version()


def store_over(root: Path, objects: Sequence[Any], **overrides: Any) -> Any:
    """A Feast store over `root` with `objects` applied (overrides as in `render_config`)."""
    from engine.features.repo import apply_repo, open_store

    store = open_store(str(root), overrides={"project": overrides.pop("project", "test"), **overrides})
    apply_repo(store, objects)
    return store


@dataclass(frozen=True)
class RetailFeatures:
    """A storage root holding copies of the retail gold tables the feature repository reads, with the
    repository applied and materialized as of `RETAIL_END` (read-only for the tests that share it)."""

    root: Path
    store: Any


def copy_gold(build: RetailBuild, destination: Path) -> Path:
    """Copy the gold tables the feature repository reads from the retail build to `destination`."""
    for name in GOLD_TABLES:
        shutil.copytree(build.root / "gold" / name, destination / "gold" / name)
    return destination


def materialized_features(build: RetailBuild, destination: Path) -> RetailFeatures:
    """The `features/` repository applied over the retail gold tables copied to `destination`, materialized."""
    from engine.features.materialize import materialize
    from engine.features.repo import apply_repo, load_definitions, open_store

    root = copy_gold(build, destination)
    store = open_store(str(root), REPO)
    apply_repo(store, load_definitions(REPO))
    materialize(store, end=RETAIL_END)
    return RetailFeatures(root, store)


@pytest.fixture(scope="session")
def retail_features(retail_build: RetailBuild, tmp_path_factory: pytest.TempPathFactory) -> RetailFeatures:
    """The `features/` repository applied over copied retail gold tables and materialized."""
    return materialized_features(retail_build, tmp_path_factory.mktemp("retail-features"))


@pytest.fixture
def postgres_registry() -> Iterator[dict[str, Any]]:
    """Feast overrides for a SQL registry in a PostgreSQL database of its own, dropped after."""
    import psycopg

    server = os.environ.get("MEDALLION_TEST_POSTGRES", "root@127.0.0.1:5432")
    host, port = server.split("@")[-1].split(":")
    require_service(host, int(port), "PostgreSQL")
    database = f"feast_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"postgresql://{server}/test", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    yield {"registry": {"registry_type": "sql", "path": f"postgresql+psycopg://{server}/{database}",
                        "cache_ttl_seconds": 60, "sqlalchemy_config_kwargs": {"pool_pre_ping": True}}}
    with psycopg.connect(f"postgresql://{server}/test", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def pytest_configure(config: pytest.Config) -> None:
    """Feast warns about on-demand views on every apply; the tests know."""
    config.addinivalue_line("filterwarnings", "ignore:On demand feature view is an experimental feature")


@contextmanager
def serving(app: Any) -> Iterator[int]:
    """`app` on a free local port, in a thread of the test process."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    instance = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not instance.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert instance.started, "the feature server did not start"
    try:
        yield listener.getsockname()[1]
    finally:
        instance.should_exit = True
        thread.join(timeout=30)
