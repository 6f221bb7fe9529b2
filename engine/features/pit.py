"""Point-in-time joins and latest rows per key over Arrow tables (polars), run once per hash partition."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

ROW = "__row"
ENTITY_TS = "__entity_ts"
FEATURE_TS = "__feature_ts"
CREATED_TS = "__created_ts"
ROW_HASH = "__row_hash"


@dataclass(frozen=True)
class ViewJoin:
    """How one feature view joins the entity rows.

    Attributes:
        input: the keyword its feature rows arrive under.
        keys: the entity columns to match (the feature rows carry them under the same names).
        features: the feature columns it adds.
        ttl_us: the time to live in microseconds; None or 0 means unlimited.
        has_created: whether the rows carry `__created_ts`, which breaks ties of equal event timestamps.
    """

    input: str
    keys: tuple[str, ...]
    features: tuple[str, ...]
    ttl_us: int | None
    has_created: bool


def as_of_join(entities: pa.Table, views: Sequence[ViewJoin], **feature_rows: pa.Table) -> pa.Table:
    """Every entity row with, per view, the features of the latest row of the same keys whose event time
    is at or before the row's `__entity_ts` and, with a TTL, no older than `__entity_ts - ttl`.

    Rows without such a feature row get nulls; entity rows are neither dropped nor duplicated, and keep their
    column types. Keys compare by value (an int32 entity key matches an int64 feature key). Among feature rows
    with equal keys and event time, the one with the latest `__created_ts` wins.
    """
    frame = _frame(entities).sort(ENTITY_TS, nulls_last=True)
    entity_types = frame.schema
    for view in views:
        right = _latest_by_time(_frame(feature_rows[view.input]), view).sort(FEATURE_TS)
        common = pl.concat([frame.select(view.keys).clear(), right.select(view.keys).clear()],
                           how="vertical_relaxed").schema
        joined = frame.cast(dict(common)).join_asof(right.cast(dict(common)), left_on=ENTITY_TS,
                                                    right_on=FEATURE_TS, by=list(view.keys), strategy="backward",
                                                    check_sortedness=False)
        fresh = pl.col(FEATURE_TS).is_not_null()
        if view.ttl_us:
            fresh = fresh & (pl.col(FEATURE_TS) >= pl.col(ENTITY_TS) - pl.duration(microseconds=view.ttl_us))
        frame = joined.with_columns(
            [pl.when(fresh).then(pl.col(name)).otherwise(None).alias(name) for name in view.features]
        ).drop(FEATURE_TS)
    return frame.cast({name: entity_types[name] for name in frame.columns if name in entity_types}).to_arrow()


def latest_per_key(rows: pa.Table, keys: Sequence[str], time_column: str, created_column: str | None = None,
                   hash_columns: Sequence[str] = ()) -> pa.Table:
    """The latest row of every key by `time_column` (ties broken by `created_column`), rows with a null key
    or time dropped; with `hash_columns`, a `__row_hash` column hashing those values is added."""
    frame = _frame(rows).drop_nulls([*keys, time_column])
    order = [time_column] + ([created_column] if created_column else [])
    frame = frame.sort(order, nulls_last=False).unique(subset=list(keys), keep="last", maintain_order=True)
    if hash_columns:
        frame = frame.with_columns(pl.struct(list(hash_columns)).hash(seed=0).reinterpret(signed=True).alias(ROW_HASH))
    return frame.to_arrow()


def _latest_by_time(rows: pl.DataFrame, view: ViewJoin) -> pl.DataFrame:
    """One row per keys and event time: the latest created, when rows carry a created timestamp."""
    rows = rows.drop_nulls([*view.keys, FEATURE_TS])
    order = [FEATURE_TS] + ([CREATED_TS] if view.has_created else [])
    rows = rows.sort(order, nulls_last=False).unique(subset=[*view.keys, FEATURE_TS], keep="last",
                                                     maintain_order=True)
    return rows.drop(CREATED_TS) if view.has_created else rows


def _frame(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame
