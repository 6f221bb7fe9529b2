"""The entity rows of a point-in-time retrieval, checked and prepared for the join: a row number that keeps
their order, the event time in UTC microseconds, and each join key in the type of its feature table's key.

Entity rows come as a pandas DataFrame (Feast's API), prepared in this process, or as a Ray Dataset,
prepared block by block in Ray tasks: then this process handles the schema, object refs and the time range,
never the rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from engine.errors import FeatureStoreError
from engine.features.pit import ENTITY_TS, ROW
from engine.runtime import task_result

EVENT_TIMESTAMP = "event_timestamp"
BLOCK_SHIFT = 40
"""Row numbers of a Dataset's entity rows: the block's index shifted left by this, plus the row's index in it
(blocks of up to 2**40 rows)."""


@dataclass(frozen=True)
class KeyTarget:
    """A join key and what its entity column must become: the feature table's key type."""

    key: str
    view: str
    table: str
    type: pa.DataType


@dataclass(frozen=True)
class EntityRows:
    """Prepared entity rows: held here (from a DataFrame) or as blocks in the cluster (from a Dataset).

    Attributes:
        columns: the entity columns, as given.
        time_column: the column holding each row's event time.
        first, last: the earliest and latest event time (None without rows).
    """

    columns: tuple[str, ...]
    time_column: str
    first: dt.datetime | None
    last: dt.datetime | None
    table: pa.Table | None = None
    blocks: tuple[ray.ObjectRef, ...] = ()

    def dataset(self) -> ray.data.Dataset:
        """The prepared rows as a Ray Dataset (Ray must be up)."""
        if self.table is not None:
            return ray.data.from_arrow(self.table)
        return ray.data.from_arrow_refs(list(self.blocks))


def entity_rows(entities: pd.DataFrame | ray.data.Dataset, targets: Sequence[KeyTarget], outputs: Sequence[str],
                request_fields: Mapping[str, str]) -> EntityRows:
    """`entities` checked against the join's key `targets`, the feature columns it `outputs` and the request
    fields of its on-demand views (field: view), and prepared.

    Raises:
        FeatureStoreError: no event time column, a missing key or request field, a column the features would
            produce, or (for a DataFrame; for a Dataset when its rows are prepared) a null event time or a key
            that does not convert.
    """
    refs: list[ray.ObjectRef] = []
    if isinstance(entities, ray.data.Dataset):
        refs = entities.to_arrow_refs()
        schema = ray.data.from_arrow_refs(refs).schema() if refs else None
        if schema is None:
            raise FeatureStoreError("the entity Dataset has no rows nor schema; give it the entity columns and an "
                                    "event timestamp column")
        arrow = schema.base_schema
    else:
        table = _from_pandas(entities)
        arrow = table.schema
    time_column = time_column_of(arrow)
    casts = _check(arrow, time_column, targets, outputs, request_fields)
    columns = tuple(arrow.names)
    if not isinstance(entities, ray.data.Dataset):
        prepared = prepare_block(table, time_column, casts, 0)
        first, last = _time_range(prepared)
        return EntityRows(columns, time_column, first, last, table=prepared)
    blocks, ranges = [], []
    for index, block in enumerate(refs):
        rows, bounds = _prepare_remote.remote(block, time_column, casts, index)
        blocks.append(rows)
        ranges.append(bounds)
    found = [bounds for bounds in task_result(ranges) if bounds[0] is not None]
    first = min((b[0] for b in found), default=None)
    last = max((b[1] for b in found), default=None)
    return EntityRows(columns, time_column, first, last, blocks=tuple(blocks))


def time_column_of(schema: pa.Schema) -> str:
    """`event_timestamp`, else the one timestamp column (as Feast infers it).

    Raises:
        FeatureStoreError: neither exists.
    """
    if EVENT_TIMESTAMP in schema.names:
        return EVENT_TIMESTAMP
    times = [f.name for f in schema if pa.types.is_timestamp(f.type)]
    if len(times) != 1:
        raise FeatureStoreError(f"the entity rows need an `{EVENT_TIMESTAMP}` column (or exactly one timestamp "
                                f"column); they have {schema.names}")
    return times[0]


def prepare_block(table: pa.Table, time_column: str, casts: Mapping[str, KeyTarget], index: int) -> pa.Table:
    """One block of entity rows with its row numbers (`index` << `BLOCK_SHIFT` onwards), the event time in UTC
    microseconds and its keys cast.

    Raises:
        FeatureStoreError: a row has no event time, or a key value does not convert.
    """
    times = table.column(time_column)
    if times.null_count:
        raise FeatureStoreError(f"{times.null_count} entity row(s) have no `{time_column}`; every row needs the "
                                "time its features are wanted for")
    if times.type.tz is None:
        times = pc.assume_timezone(times, "UTC")
    table = table.append_column(ENTITY_TS, times.cast(pa.timestamp("us", tz="UTC"), safe=False))
    first_row = index << BLOCK_SHIFT
    table = table.append_column(ROW, pa.array(np.arange(first_row, first_row + table.num_rows, dtype=np.int64)))
    for key, target in casts.items():
        try:
            cast = table.column(key).cast(target.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise FeatureStoreError(f"entity column `{key}` holds {table.column(key).type} values that do not "
                                    f"convert to {target.type}, the type of `{target.table}`: {err}",
                                    feature=target.view) from None
        table = table.set_column(table.column_names.index(key), key, cast)
    return table


@ray.remote(num_returns=2)
def _prepare_remote(table: pa.Table, time_column: str, casts: Mapping[str, KeyTarget],
                    index: int) -> tuple[pa.Table, tuple[dt.datetime | None, dt.datetime | None]]:
    prepared = prepare_block(table, time_column, casts, index)
    return prepared, _time_range(prepared)


def _time_range(table: pa.Table) -> tuple[dt.datetime | None, dt.datetime | None]:
    bounds = pc.min_max(table.column(ENTITY_TS))
    return bounds["min"].as_py(), bounds["max"].as_py()


def _from_pandas(frame: pd.DataFrame) -> pa.Table:
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise FeatureStoreError(f"the entity DataFrame does not convert to Arrow ({err}); give every column one "
                                "type") from None


def _check(schema: pa.Schema, time_column: str, targets: Sequence[KeyTarget], outputs: Sequence[str],
           request_fields: Mapping[str, str]) -> dict[str, KeyTarget]:
    """The keys to cast; raises on a clash with a feature column, a missing key or request field, or an event
    time that is not a timestamp."""
    clashes = sorted(set(outputs) & set(schema.names))
    if clashes:
        raise FeatureStoreError(f"the entity rows already have column(s) {clashes}, which the requested features "
                                "would produce; rename them or use full_feature_names=True")
    kind = schema.field(time_column).type
    if not pa.types.is_timestamp(kind):
        raise FeatureStoreError(f"entity column `{time_column}` must hold timestamps, not {kind}")
    for field, view in request_fields.items():
        if field not in schema.names:
            raise FeatureStoreError(f"the entity rows have no column `{field}`, a request field of on-demand "
                                    f"feature view `{view}`; add it (columns: {schema.names})", feature=view)
    casts = {}
    for target in targets:
        if target.key not in schema.names:
            raise FeatureStoreError(f"the entity rows have no column `{target.key}`, the join key of feature view "
                                    f"`{target.view}`; add it (columns: {schema.names})", feature=target.view)
        if schema.field(target.key).type != target.type:
            casts[target.key] = target
    return casts
