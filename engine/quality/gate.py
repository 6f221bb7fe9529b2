"""The table-level side of quality: reference keys before a write, unique keys, row conservation and the
decision to abort a commit after it."""

from __future__ import annotations

import json
from collections.abc import Sequence

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import QualityFailed
from engine.layout import Layout
from engine.quality.checks import Quality
from engine.quality.results import CheckResult
from engine.storage import parquet_dataset
from engine.tables.files import DataFile
from engine.tables.formats import DeltaStore, TableFormats

CONSERVATION_CHECK = "rows_conserved"


def reference_keys(quality: Quality, layout: Layout, formats: TableFormats | None = None) -> dict[str, pa.Array]:
    """The distinct keys of every referenced table, at its latest version, by reference name; `formats` gives
    each table's store (Delta when None)."""
    keys = {}
    for reference in quality.references:
        key = reference.key or reference.column
        store = formats.for_table(reference.table) if formats is not None else DeltaStore()
        values = store.read_columns(layout.table(reference.table), reference.table, [key]).column(key)
        keys[reference.name] = pc.unique(values.combine_chunks())
    return keys


def unique_check(table: str, quality: Quality, folder: str, files: Sequence[DataFile]) -> list[CheckResult]:
    """Duplicated key combinations over every file staged for the table."""
    if not quality.unique:
        return []
    columns = list(quality.unique)
    if files:
        keys = parquet_dataset([f"{folder}/{f.path}" for f in files], format="parquet").to_table(columns=columns)
    else:
        keys = pa.table({c: [] for c in columns})
    frame = pl.from_arrow(keys)
    assert isinstance(frame, pl.DataFrame)
    duplicated = duplicated_rows(frame)
    example = json.dumps(duplicated.row(0, named=True), default=str) if duplicated.height else None
    return [CheckResult(table, f"unique({', '.join(columns)})", quality.unique_action, frame.height,
                        duplicated.height, None, example)]


def duplicated_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows of `frame` whose values occur more than once (nulls equal to nulls).

    Only rows whose hash repeats are compared in full, found by sorting the 8-byte hashes: a hash table over
    every whole row took 1.1 GB for 6M two-column keys, this takes 50 MB.
    """
    hashes = frame.select(pl.struct(frame.columns).hash(seed=0)).to_series()
    ordered = hashes.sort()
    repeated = ordered.filter(ordered == ordered.shift(1)).unique()
    candidates = frame.filter(hashes.is_in(repeated.implode()))
    return candidates.filter(candidates.is_duplicated())


def conservation_check(table: str, quality: Quality, rows_in: int, rows_out: int, rows_quarantined: int
                       ) -> list[CheckResult]:
    """rows in = rows written (duplicates included) + rows quarantined, for tables that declare it."""
    if not quality.conserves_rows:
        return []
    missing = rows_in - rows_out - rows_quarantined
    example = None if missing == 0 else json.dumps(
        {"rows_in": rows_in, "rows_written": rows_out, "rows_quarantined": rows_quarantined})
    return [CheckResult(table, CONSERVATION_CHECK, "fail", rows_in, abs(missing), None, example)]


def enforce(table: str, results: Sequence[CheckResult], version: int | None) -> None:
    """Raise `QualityFailed` when a `fail` check found rows, naming the check and an offending row.

    Raises:
        QualityFailed: the table must not be committed.
    """
    failed = [r for r in results if r.action == "fail" and r.rows_failed]
    if not failed:
        return
    first = failed[0]
    others = f" (and {len(failed) - 1} more failing checks)" if len(failed) > 1 else ""
    kept = "does not exist yet" if version is None else f"stays at version {version}"
    raise QualityFailed(
        f"table `{table}`: check `{first.check}` failed on {first.rows_failed:,} of {first.rows_checked:,} rows"
        f"{others}, e.g. {first.example}; the table {kept}; fix the data or the check, then run again",
        table=table,
    )
