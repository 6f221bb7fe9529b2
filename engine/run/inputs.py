"""What a derived table reads: its inputs at the versions of this run, all of them or only what changed."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from engine.kinds import RecomputeKeys
from engine.pipeline import TableDefinition
from engine.run.scope import RunScope


def read_input(scope: RunScope, definition: TableDefinition, table: str, version: int | None,
               built_from: int | None) -> tuple[ray.data.Dataset, int]:
    """An input at `version` and its row count: only the rows added since `built_from` when the table
    is incremental and the input only grew since, else all of it."""
    handle = scope.handle(table)
    if definition.incremental and built_from is not None and version is not None:
        added = handle.store.read_added_files(handle.uri, table, built_from, version, definition.ray_options)
        if added is not None:
            return added
    return (handle.store.read_dataset(handle.uri, table, version, definition.ray_options),
            handle.store.row_count(handle.uri, table, version))


def read_keys_only(scope: RunScope, definition: TableDefinition, table: str, version: int | None,
                   keys: pa.Table) -> tuple[ray.data.Dataset, int]:
    """The rows of an input at `version` whose key columns match a row of `keys`, materialized, and their count."""
    handle = scope.handle(table)
    dataset = handle.store.read_dataset(handle.uri, table, version, definition.ray_options)
    selected = dataset.map_batches(_semi_join, fn_kwargs={"keys": keys}, batch_format="pyarrow").materialize()
    return selected, selected.count()


def _semi_join(batch: pa.Table, keys: pa.Table) -> pa.Table:
    frame, wanted = pl.from_arrow(batch), pl.from_arrow(keys)
    assert isinstance(frame, pl.DataFrame) and isinstance(wanted, pl.DataFrame)
    wanted = wanted.cast(dict(frame.select(keys.column_names).schema))
    return frame.join(wanted, on=keys.column_names, how="semi", nulls_equal=True).to_arrow()


def unkeyed_inputs(scope: RunScope, definition: TableDefinition, kind: RecomputeKeys,
                   versions: dict[str, int | None]) -> dict[str, list[str]]:
    """The built inputs of a `RecomputeKeys` table that lack one of its keys (see `RecomputeKeys`), each with
    the columns its changes are found by."""
    schemas = {t: scope.handle(t).schema() for t in definition.inputs if versions[t] is not None}
    unkeyed = kind.unkeyed_inputs(definition.name, {t: schema.names for t, schema in schemas.items()})
    return {t: [f.name for f in schemas[t] if not pa.types.is_nested(f.type)] for t in unkeyed}


def affected_keys(scope: RunScope, definition: TableDefinition, kind: RecomputeKeys,
                  versions: dict[str, int | None], previous: dict[str, int] | None,
                  unkeyed: dict[str, list[str]]) -> pa.Table | None:
    """For a `RecomputeKeys` table already built, the keys whose input rows changed since; None when
    the whole table must be computed (first build, the rows of an `unkeyed` input changed, a table its checks
    reference changed, which may change which rows pass, or an input's changes can no longer be read)."""
    if not previous or not scope.handle(definition.name).exists():
        return None
    references = [t for t in definition.dependencies if t not in definition.inputs]
    if any(previous.get(t) != versions[t] for t in references):
        return None
    changed = []
    for table in definition.inputs:
        since, until = previous.get(table), versions[table]
        if until is None or since == until:
            continue
        if since is None or unkeyed.get(table) == []:
            return None
        handle = scope.handle(table)
        found = handle.store.changed_keys(handle.uri, table, since, until, unkeyed.get(table, kind.keys))
        if found is None or (table in unkeyed and found.num_rows):
            return None
        if table not in unkeyed:
            changed.append(found)
    if not changed:
        return pa.table({k: pa.array([], pa.int64()) for k in kind.keys})
    frame = pl.concat([pl.from_arrow(keys) for keys in changed], how="vertical_relaxed").unique()
    assert isinstance(frame, pl.DataFrame)
    return frame.to_arrow()


def within(dataset: ray.data.Dataset, column: str, start: dt.date, end: dt.date) -> ray.data.Dataset:
    """The rows of `dataset` whose `column` lies in [`start`, `end`]."""
    return dataset.map_batches(_in_range, fn_kwargs={"column": column, "start": start, "end": end},
                               batch_format="pyarrow")


def _in_range(batch: pa.Table, column: str, start: dt.date, end: dt.date) -> pa.Table:
    values = batch.column(column)
    if pa.types.is_timestamp(values.type):
        values = pc.cast(values, pa.date32())
    return batch.filter(pc.and_(pc.greater_equal(values, pa.scalar(start)), pc.less_equal(values, pa.scalar(end))))
