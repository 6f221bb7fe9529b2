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
import pyarrow as pa
import ray
import ray.data
from ray.data.block import BlockAccessor

from engine.context import table_context
from engine.errors import PipelineDefinitionError
from engine.keyhash import bucket_of, check_comparable

SPLIT_TASK_BYTES = 256 * 2**20
"""Input bytes one split task hashes and splits."""
PARTITION_BYTES = 128 * 2**20
"""Input bytes one partition task gets at most, when the CPUs alone would make larger partitions."""
SMALL_SHUFFLE_BYTES = 16 * 2**20
"""At most this many bytes split make one partition: on so little data a task costs more than it saves."""
SHUFFLE_BUCKETS = 64
"""Hash buckets of a split when the engine picks the partition count: once every split has finished and the
bytes of every bucket are known, consecutive buckets are grouped into partitions of about equal size (as
Spark's adaptive execution coalesces shuffle partitions)."""


def default_partitions(input_bytes: int = 0) -> int:
    """Twice the CPUs of the cluster (enough parallelism without tiny partitions), or more when that would give
    a partition more than `PARTITION_BYTES` of `input_bytes`: a task's memory grows with its partition."""
    return max(2, 2 * int(ray.cluster_resources().get("CPU", 1)), math.ceil(input_bytes / PARTITION_BYTES))


def _partition_count(split_bytes: int) -> int:
    """Partitions of a shuffle of `split_bytes`: one for a small input, else `default_partitions`."""
    return 1 if split_bytes <= SMALL_SHUFFLE_BYTES else default_partitions(split_bytes)


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
    here, each block split as soon as it is read, and the split has finished when this returns; the calls run
    when the returned dataset is consumed, so a write of it runs in the same tasks. When no input has even a
    schema (each read a table without data files), `function` is not called. Without `num_partitions`, the
    count is `default_partitions` of the bytes split, or one partition when they are at most
    `SMALL_SHUFFLE_BYTES`: then the inputs are not split at all, and the one partition's task reads their blocks
    as they were produced.
    """
    buckets = num_partitions or max(SHUFFLE_BUCKETS, default_partitions())
    streams = {name: _split_stream(dataset, list(keys), buckets) for name, dataset in inputs.items()}
    empties = {name: stream.empty for name, stream in streams.items()}
    check_comparable({f"input `{name}`": empty.schema for name, empty in empties.items()}, keys, _shuffle_name())
    if num_partitions in (None, 1) and sum(stream.held_bytes for stream in streams.values()) <= SMALL_SHUFFLE_BYTES \
            and not any(stream.splits for stream in streams.values()):
        # One partition of a small input needs no split: its task reads the blocks as they were produced.
        work = _PartitionWork(function, dict(fn_kwargs or {}), empties,
                              [{name: stream.held for name, stream in streams.items()}])
    else:
        splits = {name: stream.split_rest(list(keys), buckets) for name, stream in streams.items()}
        sizes = _bucket_sizes(splits, buckets)
        groups = ([[bucket] for bucket in range(buckets)] if num_partitions
                  else coalesce(sizes, _partition_count(int(sizes.sum()))))
        work = _PartitionWork(function, dict(fn_kwargs or {}), empties, [
            {name: [(split.pieces[bucket], None) for split in splits[name] for bucket in group] for name in inputs}
            for group in groups])
    partitions = len(work.pieces)
    return ray.data.range(partitions, override_num_blocks=partitions).map_batches(
        _apply_partitions, fn_kwargs={"work": work}, batch_format="pyarrow", batch_size=None)


@dataclass(frozen=True)
class _Split:
    """One split task's outputs: a piece per bucket, and the bytes of every piece."""

    pieces: list[ray.ObjectRef]
    sizes: ray.ObjectRef


@dataclass
class _Stream:
    """An input's split tasks submitted while its blocks were produced, the blocks not split yet (each a ref and
    the rows to keep of it, `(start, end)` or None for all) and their bytes, and an empty table of its columns."""

    splits: list[_Split]
    held: list[tuple[ray.ObjectRef, tuple[int, int] | None]]
    held_bytes: int
    empty: pa.Table

    def split_rest(self, keys: list[str], buckets: int) -> list[_Split]:
        """Every split of the input, the held blocks split by one more task."""
        if self.held:
            refs, bounds = zip(*self.held, strict=True)
            outputs = _split_blocks.options(num_returns=buckets + 1).remote(keys, buckets, list(bounds), *refs)
            self.splits.append(_Split(list(outputs[:-1]), outputs[-1]))
            self.held, self.held_bytes = [], 0
        return self.splits


def _split_stream(dataset: ray.data.Dataset, keys: list[str], buckets: int) -> _Stream:
    """Split the blocks of `dataset` as they are produced, in groups of about `SPLIT_TASK_BYTES` (readers emit
    many small blocks, and a task per block would cost more than the split), so that a read block is released
    once split instead of the whole input being held beside its pieces. The last group is held back unsplit
    (`_Stream.split_rest` splits it): a small input may need no split at all."""
    stream = _Stream([], [], 0, pa.table({}))
    schema = None
    for bundle in dataset.iter_internal_ref_bundles():
        schema = schema if schema is not None else bundle.schema
        for entry, piece in zip(bundle.blocks, bundle.slices):
            stream.held.append((entry.ref, None if piece is None else (piece.start_offset, piece.end_offset)))
            stream.held_bytes += entry.metadata.size_bytes or 0
            if stream.held_bytes >= SPLIT_TASK_BYTES:
                stream.split_rest(keys, buckets)
    stream.empty = _empty_of(schema if schema is not None else dataset.schema())
    return stream


def _bucket_sizes(splits: Mapping[str, list[_Split]], buckets: int) -> np.ndarray:
    """Bytes of every bucket over all splits of all inputs, once every split task has finished. Waiting for
    all of them before any partition task starts matters: a partition needs a piece of every split, and a
    partition task started earlier would wait inside `ray.get`, where Ray hands its CPU to yet another new
    worker process."""
    refs = [split.sizes for inputs in splits.values() for split in inputs]
    return np.sum(ray.get(refs), axis=0) if refs else np.zeros(buckets, dtype=np.int64)


def coalesce(sizes: np.ndarray, partitions: int) -> list[list[int]]:
    """Consecutive bucket numbers grouped into at most `partitions` groups of about equal total size."""
    cumulative = np.cumsum(sizes)
    total = int(cumulative[-1]) if len(sizes) else 0
    if partitions >= len(sizes) or total == 0:
        return [list(group) for group in np.array_split(np.arange(len(sizes)), min(partitions, len(sizes)))]
    cuts = np.searchsorted(cumulative, total * np.arange(1, partitions) / partitions, side="left") + 1
    bounds = np.unique(np.concatenate([[0], cuts, [len(sizes)]]))
    return [list(range(bounds[i], bounds[i + 1])) for i in range(len(bounds) - 1)]


def _shuffle_name() -> str:
    """How a key error names the shuffle: with the table whose function runs it, when a run calls one."""
    try:
        return f"co_partition in table `{table_context().table}`"
    except PipelineDefinitionError:
        return "co_partition"


def _first_input(function: Callable[..., pa.Table]) -> Callable[..., pa.Table]:
    def call(table: pa.Table, **kwargs: Any) -> pa.Table:
        return function(table, **kwargs)

    return call


def _empty_of(schema: Any) -> pa.Table:
    """An empty table of a Ray Data schema (or of a plain Arrow schema); no columns when it is not Arrow."""
    base = schema if isinstance(schema, pa.Schema) else getattr(schema, "base_schema", None)
    return base.empty_table() if isinstance(base, pa.Schema) else pa.table({})


@ray.remote
def _split_blocks(keys: list[str], buckets: int, bounds: list[tuple[int, int] | None], *blocks: Any
                  ) -> tuple[Any, ...]:
    """The rows of `blocks` (each cut to its `bounds`, when given) by hash bucket of `keys`, then the bytes of
    every bucket's piece."""
    tables = [_arrow_block(block, cut) for block, cut in zip(blocks, bounds)]
    with_columns = [table for table in tables if table.num_columns]
    block = pa.concat_tables(with_columns, promote_options="permissive") if with_columns else tables[0]
    if buckets == 1 or block.num_rows == 0:
        pieces: tuple[pa.Table, ...] = (block,) + (block.slice(0, 0),) * (buckets - 1)
    else:
        numbers = bucket_of(block, keys, buckets)
        order = np.argsort(numbers, kind="stable")
        starts = np.searchsorted(numbers[order], np.arange(buckets + 1))
        ordered = block.take(pa.array(order))
        pieces = tuple(ordered.slice(starts[b], starts[b + 1] - starts[b]) for b in range(buckets))
    return (*pieces, np.array([piece.nbytes for piece in pieces], dtype=np.int64))


def _arrow_block(block: Any, cut: tuple[int, int] | None) -> pa.Table:
    """A Ray Data block as an Arrow table (pandas blocks are converted), cut to rows [start, end)."""
    table = block if isinstance(block, pa.Table) else BlockAccessor.for_block(block).to_arrow()
    return table if cut is None else table.slice(cut[0], cut[1] - cut[0])


@dataclass(frozen=True)
class _PartitionWork:
    """What the task of a partition needs: the function, and per partition the pieces of every input."""

    function: Callable[..., pa.Table]
    fn_kwargs: dict[str, Any]
    empties: dict[str, pa.Table]
    pieces: list[dict[str, list[tuple[ray.ObjectRef, tuple[int, int] | None]]]]


def _apply_partitions(batch: pa.Table, work: _PartitionWork) -> pa.Table:
    """The function's output for the partitions numbered in `batch` (one, unless Ray merged blocks)."""
    outputs = [_apply(work, work.pieces[p]) for p in batch.column("id").to_pylist()]
    outputs = [table for table in outputs if table.num_columns]
    return pa.concat_tables(outputs, promote_options="permissive") if outputs else pa.table({})


def _apply(work: _PartitionWork, pieces: Mapping[str, list[tuple[ray.ObjectRef, tuple[int, int] | None]]]
           ) -> pa.Table:
    tables = {}
    for name, held in pieces.items():
        blocks = ray.get([ref for ref, _ in held])
        parts = [part for part in (_arrow_block(block, cut) for block, (_, cut) in zip(blocks, held, strict=True))
                 if part.num_columns]
        tables[name] = pa.concat_tables(parts, promote_options="permissive") if parts else work.empties[name]
    if not any(table.num_columns for table in tables.values()):
        return pa.table({})
    return work.function(**tables, **work.fn_kwargs)
