"""Key-partitioned work on Ray Datasets: one hash shuffle in plain Ray tasks, then whole keys per call.

Ray Data's own shuffle operators start aggregator actors and cost seconds even on small data; a shuffle
made of one split task per block and one task per partition costs milliseconds and scales the same way.
Several inputs hashed on the same key land in matching partitions, so joins and multi-table group-wise
work need no further shuffle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import ray
import ray.data

SPLIT_TASK_BYTES = 256 * 2**20
"""Input bytes one split task hashes and splits."""


def default_partitions() -> int:
    """Twice the CPUs of the cluster: enough parallelism without tiny partitions."""
    return max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))


def map_partitions(
    dataset: ray.data.Dataset,
    keys: Sequence[str],
    function: Callable[..., pa.Table],
    *,
    num_partitions: int | None = None,
    fn_kwargs: Mapping[str, Any] | None = None,
) -> ray.data.Dataset:
    """Apply `function` to hash partitions of `dataset`: all rows sharing key values reach the same call.

    `function` takes an Arrow table (plus `fn_kwargs`) and returns one. It runs once per partition, so it
    should be vectorised over the many keys a partition holds.
    """
    return co_partition({"table": dataset}, keys, _first_input(function),
                        num_partitions=num_partitions, fn_kwargs=fn_kwargs)


def co_partition(
    inputs: Mapping[str, ray.data.Dataset],
    keys: Sequence[str],
    function: Callable[..., pa.Table],
    *,
    num_partitions: int | None = None,
    fn_kwargs: Mapping[str, Any] | None = None,
) -> ray.data.Dataset:
    """Hash every input on `keys` into the same partitions and call `function` once per partition.

    `function` receives one Arrow table per input, as keyword arguments named like `inputs` (plus
    `fn_kwargs`): the rows of every input whose keys hash to that partition. The inputs are executed and split
    here, and the split has finished when this returns; the calls run when the returned dataset is consumed,
    so a write of it runs in the same tasks. When no input has even a schema (each read a table without data files), `function` is not called.
    """
    partitions = num_partitions or default_partitions()
    pieces: dict[str, list[list[ray.ObjectRef]]] = {}
    empties: dict[str, pa.Table] = {}
    for name, dataset in inputs.items():
        materialized = dataset.materialize()
        empties[name] = _empty_like(materialized)
        pieces[name] = [_split_blocks.options(num_returns=partitions).remote(list(keys), partitions, *group)
                        if partitions > 1 else [_split_blocks.remote(list(keys), 1, *group)]
                        for group in _groups(materialized)]
    _wait_for_splits(pieces)
    counts = [(name, len(pieces[name])) for name in inputs]
    work = _PartitionWork(function, dict(fn_kwargs or {}), empties, counts,
                          [[split[p] for name in inputs for split in pieces[name]] for p in range(partitions)])
    return ray.data.range(partitions, override_num_blocks=partitions).map_batches(
        _apply_partitions, fn_kwargs={"work": work}, batch_format="pyarrow", batch_size=None)


def _wait_for_splits(pieces: Mapping[str, list[list[ray.ObjectRef]]]) -> None:
    """Block until every split task has finished: a partition needs a piece of every split, and a partition task
    started earlier would wait inside `ray.get`, where Ray hands its CPU to yet another new worker process."""
    firsts = [split[0] for splits in pieces.values() for split in splits]
    ray.wait(firsts, num_returns=len(firsts), fetch_local=False)


def _first_input(function: Callable[..., pa.Table]) -> Callable[..., pa.Table]:
    def call(table: pa.Table, **kwargs: Any) -> pa.Table:
        return function(table, **kwargs)

    return call


def _empty_like(dataset: ray.data.Dataset) -> pa.Table:
    schema = dataset.schema()
    base = getattr(schema, "base_schema", None)
    return base.empty_table() if isinstance(base, pa.Schema) else pa.table({})


def partition_of(table: pa.Table, keys: Sequence[str], partitions: int) -> np.ndarray:
    """The partition number of every row of `table`, from a hash of its key columns."""
    frame = pl.from_arrow(table.select(list(keys)))
    assert isinstance(frame, pl.DataFrame)
    return frame.select(pl.struct(list(keys)).hash(seed=0) % partitions).to_series().to_numpy()


def _groups(dataset: ray.data.MaterializedDataset) -> list[list[ray.ObjectRef]]:
    """The blocks of `dataset` in consecutive groups of about `SPLIT_TASK_BYTES`, one split task each: readers
    emit many small blocks, and a task per block would cost more than the split itself."""
    blocks = dataset.to_arrow_refs()
    count = min(len(blocks), max(1, math.ceil(dataset.size_bytes() / SPLIT_TASK_BYTES)))
    return [list(group) for group in np.array_split(np.array(blocks, dtype=object), count)] if blocks else []


@ray.remote
def _split_blocks(keys: list[str], partitions: int, *blocks: pa.Table) -> tuple[pa.Table, ...] | pa.Table:
    with_columns = [block for block in blocks if block.num_columns]
    block = pa.concat_tables(with_columns, promote_options="permissive") if with_columns else blocks[0]
    if partitions == 1:
        return block
    if block.num_rows == 0:
        return (block,) * partitions
    numbers = partition_of(block, keys, partitions)
    order = np.argsort(numbers, kind="stable")
    bounds = np.searchsorted(numbers[order], np.arange(partitions + 1))
    ordered = block.take(pa.array(order))
    return tuple(ordered.slice(bounds[p], bounds[p + 1] - bounds[p]) for p in range(partitions))


@dataclass(frozen=True)
class _PartitionWork:
    """What the task of a partition needs: the function, and the pieces of every input per partition."""

    function: Callable[..., pa.Table]
    fn_kwargs: dict[str, Any]
    empties: dict[str, pa.Table]
    counts: list[tuple[str, int]]
    pieces: list[list[ray.ObjectRef]]


def _apply_partitions(batch: pa.Table, work: _PartitionWork) -> pa.Table:
    """The function's output for the partitions numbered in `batch` (one, unless Ray merged blocks)."""
    outputs = [_apply(work, ray.get(work.pieces[p])) for p in batch.column("id").to_pylist()]
    outputs = [table for table in outputs if table.num_columns]
    return pa.concat_tables(outputs, promote_options="permissive") if outputs else pa.table({})


def _apply(work: _PartitionWork, pieces: list[pa.Table]) -> pa.Table:
    tables, start = {}, 0
    for name, count in work.counts:
        parts = [part for part in pieces[start:start + count] if part.num_columns]
        start += count
        tables[name] = pa.concat_tables(parts, promote_options="permissive") if parts else work.empties[name]
    if not any(table.num_columns for table in tables.values()):
        return pa.table({})
    return work.function(**tables, **work.fn_kwargs)
