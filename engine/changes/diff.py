"""What changed in a table between two versions: columns, row count, and for a keyed table which keys were
added, removed or changed.

Keys are compared in Ray tasks: both versions are hash-partitioned on the keys (`co_partition`), and each
partition sums, per key, a hash of the rows' values in the columns both versions have (a key of an `SCD2` table
has several rows). A key is changed when its sums differ. The driver adds three numbers per partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import ray.data

from engine.errors import EngineError
from engine.keyhash import key_hash
from engine.partitioning import co_partition
from engine.tables.formats import TableStore

_SUM = "_row_hash_sum"


@dataclass(frozen=True)
class TableDiff:
    """Two versions of a table compared.

    Attributes:
        added, removed: column names only one of the versions has.
        retyped: (column, type before, type after) of shared columns whose type changed.
        keys: the key columns the rows were compared by; empty for a table without keys.
        keys_added, keys_removed, keys_changed: key counts; None for a table without keys.
    """

    table: str
    start: int
    end: int
    rows_before: int
    rows_after: int
    added: tuple[str, ...]
    removed: tuple[str, ...]
    retyped: tuple[tuple[str, str, str], ...]
    keys: tuple[str, ...] = ()
    keys_added: int | None = None
    keys_removed: int | None = None
    keys_changed: int | None = None


def diff_versions(store: TableStore, uri: str, table: str, start: int, end: int, keys: Sequence[str] = ()) -> TableDiff:
    """Compare versions `start` and `end` of the table, by `keys` when given.

    Raises:
        EngineError: a version the table does not have, or a key column missing from either version.
    """
    latest = store.latest_version(uri)
    for version in (start, end):
        if latest is None or not 0 <= version <= latest:
            raise EngineError(f"table `{table}` has no version {version}; its versions are 0 to {latest}",
                              table=table)
    before, after = store.read_dataset(uri, table, start), store.read_dataset(uri, table, end)
    old, new = _schema(before), _schema(after)
    missing = [k for k in keys if k not in old.names or k not in new.names]
    if missing:
        raise EngineError(f"table `{table}`: key column(s) {', '.join(missing)} missing from version "
                          f"{start if missing[0] not in old.names else end}", table=table)
    shared = [c for c in old.names if c in new.names and c not in keys]
    result = TableDiff(
        table, start, end, store.row_count(uri, table, start), store.row_count(uri, table, end),
        tuple(c for c in new.names if c not in old.names), tuple(c for c in old.names if c not in new.names),
        tuple((c, str(old.field(c).type), str(new.field(c).type)) for c in shared
              if old.field(c).type != new.field(c).type))
    if not keys:
        return result
    counts = co_partition({"before": before.select_columns([*keys, *shared]),
                           "after": after.select_columns([*keys, *shared])}, list(keys), _compare_partition,
                          fn_kwargs={"keys": list(keys), "values": shared}).take_all()
    total = {name: sum(int(row[name]) for row in counts) for name in ("added", "removed", "changed")}
    return TableDiff(**{**result.__dict__, "keys": tuple(keys), "keys_added": total["added"],
                        "keys_removed": total["removed"], "keys_changed": total["changed"]})


def _schema(dataset: ray.data.Dataset) -> pa.Schema:
    schema = dataset.schema()
    assert schema is not None
    return schema.base_schema


def _compare_partition(before: pa.Table, after: pa.Table, keys: list[str], values: list[str]) -> pa.Table:
    old, new = _per_key(before, keys, values), _per_key(after, keys, values)
    joined = old.join(new, on=keys, how="full", suffix="_after", coalesce=True, nulls_equal=True)
    present_before, present_after = pl.col(_SUM).is_not_null(), pl.col(f"{_SUM}_after").is_not_null()
    counts = joined.select(
        (present_after & ~present_before).sum().alias("added"),
        (present_before & ~present_after).sum().alias("removed"),
        (present_before & present_after & (pl.col(_SUM) != pl.col(f"{_SUM}_after"))).sum().alias("changed"))
    return counts.cast(pl.Int64).to_arrow()


def _per_key(rows: pa.Table, keys: list[str], values: list[str]) -> pl.DataFrame:
    with np.errstate(over="ignore"):
        hashes = key_hash(rows, values) if values else np.zeros(rows.num_rows, np.uint64)
    frame = pl.from_arrow(rows.select(keys))
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(pl.Series(_SUM, hashes, pl.UInt64)).group_by(keys).agg(
        pl.col(_SUM).sum().alias(_SUM))
