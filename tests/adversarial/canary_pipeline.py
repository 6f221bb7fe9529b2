"""A pipeline that encrypts and tokenizes personal data, then fails one table: what a canary scan runs beside the
retail demo. Importable as `tests.adversarial.canary_pipeline:pipeline` by a `medallion run` process."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import ray.data

from engine import FileSource, Merge, Overwrite, Pipeline

pipeline = Pipeline("canary")
pipeline.ingest("bronze.people", FileSource("people", "jsonl"))


def typed(batch: pa.Table) -> pa.Table:
    return pl.from_arrow(batch).select(pl.col("id").cast(pl.Int64), pl.col("email"), pl.col("phone")).to_arrow()


@pipeline.table("silver.people", kind=Merge(keys=["id"]), incremental=True,
                pii={"email": "tokenize", "phone": "encrypt"})
def people(bronze_people: ray.data.Dataset) -> ray.data.Dataset:
    return bronze_people.map_batches(typed, batch_format="pyarrow")


def refuse(batch: pa.Table) -> pa.Table:
    raise ValueError(f"gold.contacts cannot be built from {batch.num_rows} rows")


@pipeline.table("gold.contacts", kind=Overwrite())
def contacts(silver_people: ray.data.Dataset) -> ray.data.Dataset:
    return silver_people.map_batches(refuse, batch_format="pyarrow")


def land(landing: Path) -> None:
    """Three people under `<landing>/people`."""
    folder = landing / "people"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": i, "email": f"person{i}@example.com", "phone": f"+1555000{i:04d}"} for i in range(3)]
    (folder / "people-1.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
