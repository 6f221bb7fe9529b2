"""A small CDC pipeline for exactly-once tests: ingest, SCD1 merge with deletes and quarantine, SCD2
history, an overwritten aggregate and a per-key aggregate recomputed for the keys that changed; and helpers
to run it in another process and compare roots.
Importable as `tests.engine.cdc_pipeline:pipeline` by a run process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pandera.polars as pa_polars
import polars as pl
import pyarrow as pa
import ray
import ray.data
from deltalake import DeltaTable

from engine import (
    SCD2,
    FileSource,
    Merge,
    Overwrite,
    Pipeline,
    RecomputeKeys,
    Runner,
    RunResult,
    load_settings,
    map_partitions,
)
from engine.columns import INGESTED_AT, REJECTED_REASON, RUN_ID
from engine.quality.checks import Quality

CDC = {"delete_when": "op = 'd'", "except_columns": ["op"]}
REPO = Path(__file__).resolve().parents[2]
PIPELINE = "tests.engine.cdc_pipeline:pipeline"


class AccountContract(pa_polars.DataFrameModel):
    """A balance is never negative."""

    balance: float = pa_polars.Field(ge=0, nullable=True)


def parse_changes(batch: pa.Table, country_case: str = "as_is") -> pa.Table:
    """Typed account changes; a change without an integer id is rejected."""
    account = pl.col("account_id").cast(pl.Int64, strict=False)
    country = pl.col("country").str.to_lowercase() if country_case == "lower" else pl.col("country")
    return pl.from_arrow(batch).select(
        account.alias("account_id"),
        country.alias("country"),
        pl.col("balance").cast(pl.Float64, strict=False),
        pl.col("seq").cast(pl.Int64, strict=False),
        pl.col("op"),
        pl.when(account.is_null()).then(pl.lit("account_id: not an integer")).otherwise(None).alias(REJECTED_REASON),
    ).to_arrow()


def summarize_history(history: pa.Table) -> pa.Table:
    """Per account: how many versions its history has, since when it is known, and whether one is open."""
    return pl.from_arrow(history).group_by("account_id").agg(
        pl.len().cast(pl.Int64).alias("versions"), pl.col("valid_from").min().alias("first_seen"),
        pl.col("is_current").any().alias("open")).to_arrow()


def build(country_case: str = "as_is") -> Pipeline:
    """The pipeline; `country_case="lower"` stands for a changed cleaning rule."""
    built = Pipeline("accounts")
    built.ingest("bronze.changes", FileSource("changes", "jsonl"))
    parse = {"fn_kwargs": {"country_case": country_case}, "batch_format": "pyarrow"}

    @built.table("silver.accounts", kind=Merge(keys=["account_id"], sequence_by="seq", **CDC),
                 quality=Quality(contract=AccountContract), incremental=True)
    def accounts(bronze_changes: ray.data.Dataset) -> ray.data.Dataset:
        return bronze_changes.map_batches(parse_changes, **parse)

    @built.table("gold.account_history", kind=SCD2(keys=["account_id"], sequence_by="seq",
                                                     tracked_columns=["country"], **CDC), incremental=True)
    def account_history(bronze_changes: ray.data.Dataset) -> ray.data.Dataset:
        return bronze_changes.map_batches(parse_changes, **parse)

    @built.table("gold.balance_by_country", kind=Overwrite())
    def balance_by_country(silver_accounts: ray.data.Dataset) -> ray.data.Dataset:
        return map_partitions(silver_accounts, ["country"], lambda t: pl.from_arrow(t).group_by("country").agg(
            pl.col("balance").sum(), pl.len().alias("accounts")).to_arrow())

    @built.table("gold.account_summary", kind=RecomputeKeys(keys=["account_id"]))
    def account_summary(gold_account_history: ray.data.Dataset) -> ray.data.Dataset:
        return map_partitions(gold_account_history, ["account_id"], summarize_history)

    return built


pipeline = build()


def write_batch(landing: Path, batch: int, accounts: int = 40, changes: int = 300) -> None:
    """The `batch`-th file of the change feed: creates, updates (some late), deletes and bad rows."""
    rng = random.Random(batch)
    folder = landing / "changes"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(changes):
        seq = batch * 1000 + i - rng.choice([0, 0, 0, 1500])
        row = {"account_id": rng.randrange(accounts), "country": rng.choice(["US", "FR", "DE"]),
               "balance": round(rng.uniform(-5, 100), 2), "seq": seq, "op": rng.choice("cuuud")}
        if rng.random() < 0.02:
            row["account_id"] = "x"
        lines.append(json.dumps(row))
    (folder / f"changes-{batch:03d}.jsonl").write_text("\n".join(lines) + "\n")


def start_run(root: Path, *options: str) -> subprocess.Popen[bytes]:
    """`medallion run` of this pipeline in its own process, attached to the calling process's Ray; its
    output goes to `<root>.log` beside the root."""
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    command = [str(Path(sys.executable).parent / "medallion"), "--root", str(root),
               "--address", ray.get_runtime_context().gcs_address, "run", PIPELINE, *options]
    with open(root.parent / f"{root.name}.log", "ab") as log:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def run_to_completion(root: Path, built: Pipeline = pipeline, **options: bool) -> RunResult:
    """Run the pipeline in this process and check that it succeeded."""
    result = Runner(built, load_settings(overrides={"storage": {"root": str(root)}})).run(**options)
    assert result.succeeded, [r.error for r in result.records if r.error]
    return result


def contents(root: Path) -> dict[str, pl.DataFrame]:
    """Every Delta table under `root` but the run log, without run-dependent columns, sorted; floats are
    rounded, since a sum's last bits depend on the order rows are added in."""
    tables = {}
    for log in sorted(root.rglob("_delta_log")):
        folder = log.parent.relative_to(root)
        if "_meta" in folder.parts:
            continue
        frame = pl.from_arrow(DeltaTable(str(root / folder)).to_pyarrow_table())
        frame = frame.drop([c for c in (RUN_ID, INGESTED_AT) if c in frame.columns]).with_columns(
            pl.col(pl.Float64).round(6))
        tables[str(folder)] = frame.sort(frame.columns, nulls_last=True)
    return tables


def assert_same_tables(actual: Path, expected: Path) -> None:
    """Both roots hold the same tables with the same rows (run ids and ingestion times aside)."""
    got, want = contents(actual), contents(expected)
    assert sorted(got) == sorted(want)
    for name, frame in want.items():
        assert got[name].equals(frame), name
