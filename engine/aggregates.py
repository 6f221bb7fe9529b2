"""Grouped aggregates in two phases: partial aggregates in the tasks that produce the rows, then a hash shuffle
of the partials only, which each partition combines.

A group-by over millions of rows with few groups moves a few rows per block instead of every row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from engine.errors import PipelineDefinitionError
from engine.partitioning import map_partitions

Aggregation = Literal["sum", "count", "count_all", "min", "max", "mean"]
"""`sum`, `min`, `max` and `mean` of a column's non-null values (null when a group has none), `count` of its
non-null values, `count_all` of the group's rows (its column is ignored)."""

_PARTS: dict[str, tuple[str, ...]] = {"sum": ("sum",), "count": ("count",), "count_all": ("count_all",),
                                      "min": ("min",), "max": ("max",), "mean": ("sum", "count")}
"""The partial aggregates each aggregation is combined from."""
_COMBINE = {"sum": "sum", "count": "sum", "count_all": "sum", "min": "min", "max": "max"}
"""How partials of each kind combine."""
_REQUEST = "__aggregate_"
"""Prefix of the columns a group-by aggregates, one per request, apart from the group columns."""


def aggregate(dataset: ray.data.Dataset, by: Sequence[str], aggregations: Mapping[str, tuple[str, Aggregation]],
              *, num_partitions: int | None = None) -> ray.data.Dataset:
    """One row per group of `by` with an output column per entry of `aggregations`, `{"output": (column,
    aggregation)}`, after the `by` columns in `aggregations`' order.

    Each block of `dataset` is aggregated where it is produced (fused with the read or the map before this
    call); the partials are hash-partitioned on `by` and combined. A float sum or mean depends on how the rows
    fell into blocks in its last bits.

    Raises:
        PipelineDefinitionError: no group column, an aggregation that is not one of `Aggregation`, or an output
            named like a group column.
    """
    _check(list(by), aggregations)
    spec = {name: (column, kind) for name, (column, kind) in aggregations.items()}
    partials = dataset.map_batches(_partial, fn_kwargs={"by": list(by), "spec": spec}, batch_format="pyarrow",
                                   batch_size=None)
    return map_partitions(partials, list(by), _combined, num_partitions=num_partitions,
                          fn_kwargs={"by": list(by), "spec": spec})


def _check(by: list[str], aggregations: Mapping[str, tuple[str, str]]) -> None:
    problems = [] if by else ["no group column"]
    problems += [f"`{name}`: unknown aggregation `{kind}` (one of {', '.join(get_args(Aggregation))})"
                 for name, (_, kind) in aggregations.items() if kind not in _PARTS]
    problems += [f"output `{name}` is also a group column" for name in aggregations if name in by]
    if problems:
        raise PipelineDefinitionError(f"aggregate by {', '.join(by) or '()'}: {'; '.join(problems)}")


def _part_name(output: str, part: str) -> str:
    return f"{output}.{part}"


def _grouped(table: pa.Table, by: list[str], requests: list[tuple[str, str, pc.FunctionOptions | None]]
             ) -> pa.Table:
    """`table` grouped by `by`, with a column per request `(column, hash function, options)`, named by the
    request's position: Arrow names its outputs `<column>_<function>`, which two requests may share."""
    names = [f"{_REQUEST}{i}" for i in range(len(requests))]
    inputs = pa.table({**{name: table.column(name) for name in by},
                       **{name: table.column(column) for name, (column, _, _) in zip(names, requests, strict=True)}})
    grouped = inputs.group_by(by, use_threads=False).aggregate(
        [(name, function, options) for name, (_, function, options) in zip(names, requests, strict=True)])
    return grouped.select([*by, *(f"{name}_{function}" for name, (_, function, _) in zip(names, requests,
                                                                                         strict=True))])


def _partial(batch: pa.Table, by: list[str], spec: dict[str, tuple[str, str]]) -> pa.Table:
    """The partial aggregates of one block, a row per group it holds: `<output>.<part>` columns."""
    requests = [(by[0], "count", pc.CountOptions("all")) if part == "count_all" else (column, part, None)
                for column, kind in spec.values() for part in _PARTS[kind]]
    names = [_part_name(output, part) for output, (_, kind) in spec.items() for part in _PARTS[kind]]
    return _grouped(batch, by, requests).rename_columns(by + names)


def _combined(partials: pa.Table, by: list[str], spec: dict[str, tuple[str, str]]) -> pa.Table:
    """The partials of whole groups combined into the final values."""
    parts = [_part_name(output, part) for output, (_, kind) in spec.items() for part in _PARTS[kind]]
    grouped = _grouped(partials, by, [(name, _COMBINE[name.rsplit(".", 1)[1]], None) for name in parts])
    values = dict(zip(parts, grouped.columns[len(by):], strict=True))
    columns = {name: grouped.column(name) for name in by}
    for output, (_, kind) in spec.items():
        if kind == "mean":
            total, count = values[_part_name(output, "sum")], values[_part_name(output, "count")]
            columns[output] = pc.if_else(pc.equal(count, 0), pa.scalar(None, pa.float64()),
                                         pc.divide(pc.cast(total, pa.float64()), pc.cast(count, pa.float64())))
        else:
            columns[output] = values[_part_name(output, kind)]
    return pa.table(columns)
