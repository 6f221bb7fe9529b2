"""The table-level side of quality: reference keys before a write, unique keys, row conservation and the
decision to abort a commit after it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import ray

from engine.arrow import unify
from engine.errors import QualityFailed
from engine.layout import Layout
from engine.partitioning import map_partitions
from engine.quality.checks import Quality
from engine.quality.results import CheckResult
from engine.storage import parquet_dataset
from engine.tables.delta_files import DataFileEntry
from engine.tables.delta_read import read_files
from engine.tables.files import DataFile
from engine.tables.formats import DeltaStore, TableFormats

CONSERVATION_CHECK = "rows_conserved"
LOCAL_CHECK_BYTES = 32 * 2**20
"""Staged bytes up to which the unique check reads the key columns in this process; above, it runs in Ray tasks."""


def reference_keys(quality: Quality, layout: Layout, formats: TableFormats | None = None) -> dict[str, ray.ObjectRef]:
    """The distinct keys of every referenced table, at its latest version, by reference name: each computed by Ray
    tasks into the object store, where the write tasks that check references fetch it; the driver holds only the
    reference. `formats` gives each table's store (Delta when None)."""
    keys = {}
    for reference in quality.references:
        key = reference.key or reference.column
        store = formats.for_table(reference.table) if formats is not None else DeltaStore()
        values = store.read_dataset(layout.table(reference.table), reference.table).select_columns([key])
        distinct = [_distinct.remote(block, key) for block in values.to_arrow_refs()]
        keys[reference.name] = _union.remote(*distinct)
    return keys


@ray.remote(num_cpus=0.25)
def _distinct(block: pa.Table, column: str) -> pa.Array:
    return pc.unique(block.column(column).combine_chunks())


@ray.remote(num_cpus=0.25)
def _union(*arrays: pa.Array) -> pa.Array:
    """The distinct values of `arrays` (of one type), as one array."""
    if not arrays:
        return pa.array([], pa.null())
    return pc.unique(pa.chunked_array(arrays).combine_chunks())


def unique_check(table: str, quality: Quality, folder: str, files: Sequence[DataFile],
                 ray_options: Mapping[str, Any] | None = None) -> list[CheckResult]:
    """Duplicated key combinations over every file staged for the table. Up to `LOCAL_CHECK_BYTES` of staged files
    the key columns are read here; above, in Ray tasks: read by whole-file tasks and hash-partitioned on the keys,
    so every copy of a key meets the others in one partition, and only a count and an example per partition come
    back, never the keys."""
    if not quality.unique:
        return []
    columns = list(quality.unique)
    if sum(f.size for f in files) <= LOCAL_CHECK_BYTES:
        found = _duplicates_in_partition(_read_keys(folder, files, columns))
    else:
        schema = unify([f.schema for f in files])
        keys = read_files([DataFileEntry(f"{folder}/{f.path}", f.size, f.num_rows) for f in files],
                          pa.schema([schema.field(c) for c in columns]), ray_options)
        parts = ray.get(map_partitions(keys, columns, _duplicates_in_partition).to_arrow_refs())
        found = pa.concat_tables(parts) if parts else _counts(0, 0, None, None)
    examples = sorted((h, e) for h, e in zip(found.column("example_hash").to_pylist(),
                                             found.column("example").to_pylist(), strict=True) if e is not None)
    return [CheckResult(table, f"unique({', '.join(columns)})", quality.unique_action,
                        pc.sum(found.column("rows")).as_py() or 0, pc.sum(found.column("duplicated")).as_py() or 0,
                        None, examples[0][1] if examples else None)]


def _read_keys(folder: str, files: Sequence[DataFile], columns: list[str]) -> pa.Table:
    if not files:
        return pa.table({c: pa.array([], pa.null()) for c in columns})
    return parquet_dataset([f"{folder}/{f.path}" for f in files], format="parquet").to_table(columns=columns)


def _duplicates_in_partition(keys: pa.Table) -> pa.Table:
    """How many rows of (one hash partition of) the keys there are, how many of them repeat a key, and, as JSON,
    the repeated row whose hash is the smallest, with that hash: the same example wherever the rows were split."""
    frame = pl.from_arrow(keys)
    assert isinstance(frame, pl.DataFrame)
    duplicated = duplicated_rows(frame)
    if not duplicated.height:
        return _counts(frame.height, 0, None, None)
    hashes = duplicated.select(pl.struct(duplicated.columns).hash(seed=0)).to_series()
    first = int(hashes.arg_min() or 0)
    return _counts(frame.height, duplicated.height, json.dumps(duplicated.row(first, named=True), default=str),
                   hashes[first])


def _counts(rows: int, duplicated: int, example: str | None, example_hash: int | None) -> pa.Table:
    return pa.table({"rows": pa.array([rows], pa.int64()), "duplicated": pa.array([duplicated], pa.int64()),
                     "example": pa.array([example], pa.string()),
                     "example_hash": pa.array([example_hash], pa.uint64())})


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
