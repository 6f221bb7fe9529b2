"""The retail pipeline fed from PostgreSQL (`pipelines/retail/database.py`) against the real local PostgreSQL: the
customers and orders feeds written into the database delivery by delivery, read by change data capture, give the
gold tables the landing files give."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import psycopg
import pytest
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

from engine.layout import Layout
from engine.runner import Runner
from pipelines.retail.database import KEYS, create_tables, retail_from, write_deliveries
from tests.conftest import RetailBuild, require_service, settings_at

pytestmark = [pytest.mark.services, pytest.mark.slow]

DSN_ENV = "MEDALLION_TEST_SOURCE_DSN"
GOLD = ("gold.dim_customer", "gold.fct_order_lines", "gold.customer_features", "gold.customer_daily")


def _gold(root: Path, table: str) -> pl.DataFrame:
    frame = pl.from_arrow(DeltaTable(Layout.at(str(root)).table(table)).to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    columns = [c for c in frame.columns if not c.startswith("_")]
    return frame.select(columns).sort(columns, nulls_last=True)


@pytest.fixture
def schema() -> Iterator[str]:
    require_service("127.0.0.1", 5432, "PostgreSQL")
    name = f"retail_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(os.environ[DSN_ENV], autocommit=True) as connection:
        for table in KEYS:
            slot = f"medallion_{name}_{table}"
            connection.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                               "WHERE slot_name = %s", (slot,))
            connection.execute(f"DROP PUBLICATION IF EXISTS {slot}")
        connection.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def test_the_retail_pipeline_from_the_database_builds_the_gold_of_the_files(
        retail_build: RetailBuild, schema: str, tmp_path: Path) -> None:
    landing = retail_build.root / "landing"
    root = tmp_path / "lakehouse"
    pipeline = retail_from(schema, DSN_ENV)
    create_tables(schema, DSN_ENV)
    runner = Runner(pipeline, settings_at(root))
    # Before the shop writes anything, the database's tables are taken in: an empty snapshot, and the slots that
    # keep every change from here on.
    first = runner.run(select="bronze.customers,bronze.orders")
    assert first.succeeded, [r.error for r in first.records if r.error]

    # The deliveries in two halves, each followed by a run: the k-th delivery of the customers and orders feeds is
    # written into the database, that of the other feeds lands as files.
    deliveries = max(len(list(folder.iterdir())) for folder in landing.iterdir())
    assert deliveries > 1
    for batches in (range(1, deliveries // 2 + 1), range(deliveries // 2 + 1, deliveries + 1)):
        for batch in batches:
            write_deliveries(landing, schema, DSN_ENV, batch=batch)
            for folder in landing.iterdir():
                files = sorted(folder.iterdir())
                if folder.name not in KEYS and batch <= len(files):
                    (root / "landing" / folder.name).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(files[batch - 1], root / "landing" / folder.name / files[batch - 1].name)
        last = runner.run()
        assert last.succeeded, [r.error for r in last.records if r.error]

    records = {r.table: r for r in last.records}
    assert records["bronze.customers"].rows_written > 0 and records["bronze.orders"].rows_written > 0
    for table in GOLD:
        assert_frame_equal(_gold(root, table), _gold(retail_build.root, table), check_exact=False, rel_tol=1e-9,
                           abs_tol=1e-9)
