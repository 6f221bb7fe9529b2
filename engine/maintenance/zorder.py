"""Z-order: rows ordered along a Z-order (Morton) curve over some columns, so that rows close in every column
end up in the same files and file statistics get tight.

Within one group of rows (a bucket of a bucketed table) the curve runs over the dense ranks of the values. Over a
whole plain table it runs in Ray tasks: tasks sample each column's values, this process turns the samples into
at most `BINS` quantile boundaries per column (metadata-sized), tasks give every row the code of its values' bins,
and Ray Data's distributed sort orders the rows by code into blocks that write tasks turn into files. No row
passes through this process.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray
import ray.data

from engine.storage import filesystem_of
from engine.tables.delta_files import DataFileEntry
from engine.tables.delta_read import read_files, task_groups

BINS = 4096
"""Quantile boundaries per column of a table-wide Z-order: finer than this, the curve's order within a file
does not change which files a filter skips."""
SAMPLE = 4096
"""Values each sampling task keeps per column."""
CODE = "__medallion_zorder_code"


def zorder_indices(rows: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """The row order of `rows` along a Z-order curve over the dense ranks of `columns` (nulls first), so rows
    close in every column end up close together."""
    ranks = []
    for name in columns:
        series = pl.Series(rows.column(name).combine_chunks())
        rank = series.rank("dense").fill_null(0).to_numpy().astype(np.float64)
        ranks.append(rank / max(rank.max(initial=0.0), 1.0))
    return np.argsort(morton_codes(ranks), kind="stable")


def morton_codes(positions: Sequence[np.ndarray]) -> np.ndarray:
    """The Z-order code of every row, from its position in each column scaled to [0, 1]: the bits of the
    positions interleaved, the first column's lowest."""
    bits = min(21, 63 // len(positions))
    code = np.zeros(len(positions[0]) if positions else 0, np.uint64)
    for place, position in enumerate(positions):
        scaled = np.floor(position * ((1 << bits) - 1)).astype(np.uint64)
        for bit in range(bits):
            code |= ((scaled >> np.uint64(bit)) & np.uint64(1)) << np.uint64(bit * len(positions) + place)
    return code


def zordered(files: Sequence[DataFileEntry], schema: pa.Schema, columns: Sequence[str]) -> ray.data.Dataset:
    """The rows of `files` (a plain table's, read with its `schema`) as a Ray Dataset ordered along a Z-order curve
    over `columns`, each block a contiguous stretch of the curve; computed by Ray tasks."""
    groups = task_groups(files)
    samples = ray.get([_samples.remote([entry.uri for entry in group], schema, list(columns)) for group in groups])
    boundaries = {name: _boundaries([sample[name] for sample in samples]) for name in columns}
    coded = read_files(files, schema).map_batches(_with_code, batch_format="pyarrow",
                                                  fn_kwargs={"boundaries": boundaries})
    return coded.sort(CODE).drop_columns([CODE])


@ray.remote
def _samples(paths: list[str], schema: pa.Schema, columns: list[str]) -> dict[str, pa.Array]:
    """Per column, up to `SAMPLE` evenly spaced values of the sorted non-null values of the files."""
    filesystem, _ = filesystem_of(paths[0])
    located = [filesystem_of(path)[1] for path in paths]
    rows = pads.dataset(located, schema=schema, format="parquet", filesystem=filesystem).to_table(columns=columns)
    return {name: _spaced(pc.drop_null(rows.column(name)).combine_chunks()) for name in columns}


def _spaced(values: pa.Array) -> pa.Array:
    """Up to `SAMPLE` evenly spaced values of `values`, sorted."""
    ordered = values.take(pc.sort_indices(values))
    if len(ordered) <= SAMPLE:
        return ordered
    return ordered.take(pa.array(np.linspace(0, len(ordered) - 1, SAMPLE).astype(np.int64)))


def _boundaries(samples: Sequence[pa.Array]) -> pa.Array:
    """At most `BINS` - 1 distinct quantile boundaries of the pooled samples, sorted."""
    present = [sample for sample in samples if len(sample)]
    if not present:
        return samples[0]
    pooled = pa.concat_arrays(present)
    ordered = pooled.take(pc.sort_indices(pooled))
    picks = np.unique(np.linspace(0, len(ordered) - 1, min(BINS - 1, len(ordered))).astype(np.int64))
    return pc.unique(ordered.take(pa.array(picks)))


def _with_code(rows: pa.Table, boundaries: dict[str, pa.Array]) -> pa.Table:
    """`rows` with the Z-order code of their values' bins among `boundaries` (nulls in the first bin)."""
    positions = []
    for name, edges in boundaries.items():
        if len(edges) == 0:
            positions.append(np.zeros(rows.num_rows))
            continue
        values = pl.Series(rows.column(name).combine_chunks())
        found = pl.Series(edges).search_sorted(values, side="left").to_numpy().astype(np.float64)
        positions.append(np.where(values.is_null().to_numpy(), 0.0, found) / len(edges))
    return rows.append_column(CODE, pa.array(morton_codes(positions), pa.uint64()))
