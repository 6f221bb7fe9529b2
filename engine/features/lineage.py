"""Which table versions each feature retrieval and materialization used: `<root>/_meta/features/lineage`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from engine.features.snapshot import Snapshot
from engine.layout import Layout
from engine.tables.delta import read_rows

SCHEMA = pa.schema([
    ("at", pa.timestamp("us", tz="UTC")),
    ("kind", pa.string()),
    ("table", pa.string()),
    ("version", pa.int64()),
    ("rows", pa.int64()),
    ("views", pa.list_(pa.string())),
])


def record(root: str, kind: str, snapshots: Sequence[Snapshot], rows: int, *, views: Sequence[str]) -> None:
    """Append one row per snapshot: `kind` (`historical`, `materialize`, or `pull_latest` / `pull_all` for
    Feast's source pulls), the table, its version, the rows produced and the feature views involved (none
    for a pull, which reads a source)."""
    if not snapshots:
        return
    now = dt.datetime.now(dt.UTC)
    table = pa.table({
        "at": [now] * len(snapshots),
        "kind": [kind] * len(snapshots),
        "table": [s.table for s in snapshots],
        "version": [s.version for s in snapshots],
        "rows": [rows] * len(snapshots),
        "views": [list(views)] * len(snapshots),
    }, schema=SCHEMA)
    write_deltalake(Layout.at(root).feature_lineage(), table, mode="append")


def read_lineage(root: str) -> pl.DataFrame:
    """Every recorded use, oldest first (an empty frame when nothing was recorded)."""
    path = Layout.at(root).feature_lineage()
    if not DeltaTable.is_deltatable(path):
        return pl.from_arrow(SCHEMA.empty_table())  # type: ignore[return-value]
    frame = pl.from_arrow(read_rows(path, path))
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("at")
