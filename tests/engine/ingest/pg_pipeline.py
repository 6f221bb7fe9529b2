"""The pipeline of the PostgreSQL source tests: a scratch schema's `customers` table into bronze, merged by key
into silver. Importable by Ray workers and by `medallion run tests.engine.ingest.pg_pipeline:pipeline`, which
builds it for the schema and slot in MEDALLION_TEST_SOURCE_SCHEMA and MEDALLION_TEST_SOURCE_SLOT."""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from ray.data import Dataset

from engine import Merge, Pipeline, PostgresSource

DSN_ENV = "MEDALLION_TEST_SOURCE_DSN"


def silver_rows(batch: pa.Table) -> pa.Table:
    """Typed customers with the columns steering the merge; a truncate's own marker row is left out (the `d` rows
    that follow it delete what the table held)."""
    batch = batch.filter(pc.field("_op") != "t")
    return pa.table({"id": pc.cast(batch["id"], pa.int64()), "name": batch["name"], "amount": batch["amount"],
                     "_op": batch["_op"], "_position": batch["_position"]})


def build(schema: str, slot: str, **source: Any) -> Pipeline:
    """The pipeline reading `<schema>.customers` through replication slot `slot`."""
    pipeline = Pipeline(f"pg_{schema}")
    pipeline.ingest("bronze.customers", PostgresSource(f"{schema}.customers", dsn_env=DSN_ENV, slot=slot, **source))

    @pipeline.table("silver.customers", kind=Merge(keys=["id"], sequence_by="_position", delete_when="_op = 'd'",
                                                   except_columns=["_op"]), incremental=True)
    def customers(bronze_customers: Dataset) -> Dataset:
        return bronze_customers.map_batches(silver_rows, batch_format="pyarrow")

    return pipeline


def __getattr__(name: str) -> Pipeline:
    if name != "pipeline":
        raise AttributeError(name)
    return build(os.environ["MEDALLION_TEST_SOURCE_SCHEMA"], os.environ["MEDALLION_TEST_SOURCE_SLOT"],
                 snapshot_rows_per_task=300, batch_changes=2_000)
