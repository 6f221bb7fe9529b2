"""Key-partitioned work on Ray Datasets: one hash shuffle in plain Ray tasks, then whole keys per call.

Ray Data's own shuffle operators start aggregator actors and cost seconds even on small data; a shuffle
made of one split task per block and one task per partition costs milliseconds and scales the same way.
Several inputs hashed on the same key land in matching partitions, so joins and multi-table group-wise
work need no further shuffle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import ray
import ray.data


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
    `fn_kwargs`): the rows of every input whose keys hash to that partition. The inputs are executed here.
    When no input has even a schema (each read a table without data files), `function` is not called.
    """
    partitions = num_partitions or default_partitions()
    pieces: dict[str, list[list[ray.ObjectRef]]] = {}
    empties: dict[str, pa.Table] = {}
    for name, dataset in inputs.items():
        blocks = dataset.to_arrow_refs()
        empties[name] = _empty_like(dataset)
        pieces[name] = [_split_block.options(num_returns=partitions).remote(block, list(keys), partitions)
                        if partitions > 1 else [_split_block.remote(block, list(keys), 1)]
                        for block in blocks]
    counts = [(name, len(pieces[name])) for name in inputs]
    outputs = [
        _apply.remote(function, dict(fn_kwargs or {}), empties, counts,
                      *[split[p] for name in inputs for split in pieces[name]])
        for p in range(partitions)
    ]
    return ray.data.from_arrow_refs(outputs)


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


@ray.remote
def _split_block(block: pa.Table, keys: list[str], partitions: int) -> tuple[pa.Table, ...] | pa.Table:
    if partitions == 1:
        return block
    if block.num_rows == 0:
        return (block,) * partitions
    numbers = partition_of(block, keys, partitions)
    order = np.argsort(numbers, kind="stable")
    bounds = np.searchsorted(numbers[order], np.arange(partitions + 1))
    ordered = block.take(pa.array(order))
    return tuple(ordered.slice(bounds[p], bounds[p + 1] - bounds[p]) for p in range(partitions))


@ray.remote
def _apply(
    function: Callable[..., pa.Table],
    fn_kwargs: dict[str, Any],
    empties: dict[str, pa.Table],
    counts: list[tuple[str, int]],
    *pieces: pa.Table,
) -> pa.Table:
    tables, start = {}, 0
    for name, count in counts:
        parts = [part for part in pieces[start:start + count] if part.num_columns]
        start += count
        tables[name] = pa.concat_tables(parts, promote_options="permissive") if parts else empties[name]
    if not any(table.num_columns for table in tables.values()):
        return pa.table({})
    return function(**tables, **fn_kwargs)
