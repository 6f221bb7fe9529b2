"""Bronze ingestion throughput (MB/s per ingested table) from the engine's run records.

Usage: python -m benchmarks.ingest --root R [--run RUN_ID | --all] [--results out.json]
       python -m benchmarks.ingest --scale S [--root R] [--results out.json]

With `--root` alone, reads the run records under R (`<R>/_meta/runs`) of any pipeline, e.g. the TPC-H one
under `bench-work/engine`, and reports the latest run that ingested files (`--run` another one, `--all`
every one). With `--scale`, first generates retail landing data at scale S under R (a temporary folder
when R is not given) and runs the retail pipeline there (set `MEDALLION_PII_KEY`: it tokenizes personal
data). Every ingestion that committed landing files counts: its seconds are the run record's duration, its
bytes the sizes of the files its Delta commit records as ingested (`medallion.files`). MB = 10^6 bytes.
Tables run one after another; the first one of a run also waits for Ray's workers to start.
Prints a Markdown table of table, files, MB, seconds, MB/s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from engine import Runner, RunResult, load_settings
from engine.errors import EngineError
from engine.layout import Layout
from engine.runlog import read_records
from engine.runtime import ray_session
from engine.tables import delta
from engine.tables.progress import FILES_KEY

RETAIL_AS_OF = dt.date(2026, 5, 30)
"""The last day of the retail data the benchmarks generate: fixed, so that runs on different days compare."""


class BenchmarkError(EngineError):
    """A benchmark could not measure what it should."""


def run_retail(scale: float, root: str | Path) -> RunResult:
    """Generate retail landing data at `scale` under `root` and run the retail pipeline on it.

    Raises:
        BenchmarkError: a table of the run failed.
    """
    from pipelines.retail.generate import generate
    from pipelines.retail.pipeline import retail

    settings = load_settings(overrides={"storage": {"root": str(root)}})
    generate(Layout.at(str(root)).landing(), scale=scale, as_of=RETAIL_AS_OF)
    with ray_session(settings.ray):
        result = Runner(retail, settings).run()
    if not result.succeeded:
        raise BenchmarkError("the retail pipeline failed: " + "; ".join(
            f"{r.table}: {r.error}" for r in result.records if r.error))
    return result


def ingest_throughput(records: pl.DataFrame, root: str | Path | Layout) -> list[dict[str, Any]]:
    """One row per ingestion in `records` (as `read_records` returns them, every run) that committed landing
    files: run id, table, files, bytes, MB, seconds and MB/s. The files are those the table's commit at the
    record's output version lists as ingested (name, size, modification time)."""
    layout = root if isinstance(root, Layout) else Layout.at(str(root))
    committed: dict[str, dict[int, list[list[Any]]]] = {}
    rows = []
    for record in records.filter(pl.col("status") == "succeeded").iter_rows(named=True):
        if not json.loads(record["details"] or "{}").get("files_new") or record["output_version"] is None:
            continue
        table = record["table"]
        if table not in committed:
            committed[table] = _ingested_by_version(layout.table(table), table)
        files = committed[table].get(record["output_version"], [])
        size = sum(int(fingerprint[1]) for fingerprint in files)
        seconds = record["duration_s"]
        rows.append({"run_id": record["run_id"], "table": table, "files": len(files), "bytes": size,
                     "mb": size / 1e6, "seconds": seconds,
                     "mb_per_s": size / 1e6 / seconds if seconds > 0 else None})
    return rows


def _ingested_by_version(uri: str, table: str) -> dict[int, list[list[Any]]]:
    """The landing file fingerprints each commit of a table records, by version."""
    if not delta.table_exists(uri):
        return {}
    return {commit["version"]: files for commit in delta.history(uri, table)
            if (files := delta.commit_info_value(commit, FILES_KEY))}


def select_run(rows: list[dict[str, Any]], run_id: str | None) -> list[dict[str, Any]]:
    """The rows of `run_id`, or of the latest run among `rows` when None."""
    wanted = run_id if run_id is not None else (rows[-1]["run_id"] if rows else None)
    return [row for row in rows if row["run_id"] == wanted]


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as the lines of a Markdown table."""
    lines = ["| run | table | files | MB | seconds | MB/s |", "|---|---|---|---|---|---|"]
    for row in rows:
        rate = f"{row['mb_per_s']:.2f}" if row["mb_per_s"] is not None else "-"
        lines.append(f"| {row['run_id']} | {row['table']} | {row['files']} | {row['mb']:.3f} | "
                     f"{row['seconds']:.2f} | {rate} |")
    return lines


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="storage root of the run(s) (required without --scale)")
    parser.add_argument("--scale", type=float, help="generate retail data at this scale and run the pipeline first")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run", help="run id to report (default: the latest run that ingested files)")
    which.add_argument("--all", action="store_true", help="report every run")
    parser.add_argument("--results", type=Path, help="write the rows here (JSON)")
    args = parser.parse_args()
    if args.root is None and args.scale is None:
        parser.error("give --root, --scale or both")
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as scratch:
        root = args.root or Path(scratch)
        if args.scale is not None:
            run_retail(args.scale, root)
        rows = ingest_throughput(read_records(Layout.at(str(root)).runs()), root)
    chosen = rows if args.all else select_run(rows, args.run)
    if not chosen:
        raise SystemExit(f"no ingestion of landing files recorded under {root}"
                         + (f" for run {args.run}" if args.run else ""))
    print("\n".join(markdown(chosen)))
    if args.results:
        args.results.write_text(json.dumps(chosen, indent=2) + "\n")


if __name__ == "__main__":
    main()
