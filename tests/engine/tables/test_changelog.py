"""Tests of a table's change log: the changes of some keys are read with a filter on the keys, not the whole log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from engine.arrow import to_storage
from engine.tables import changelog, delta

IDENTITY = ["region", "id", "seq"]
RUNS, PER_RUN = 5, 400


def logged(tmp_path: Path) -> str:
    """A change log of `RUNS` appends, each logging a change of each of `PER_RUN` keys (region, id): id `i` in
    region `eu` when odd, else `us`, and id 0 as null."""
    uri = str(tmp_path / "_changes" / "silver" / "t")
    for run in range(RUNS):
        changes = pa.table({"region": ["eu" if i % 2 else "us" for i in range(PER_RUN)],
                            "id": pa.array([i or None for i in range(PER_RUN)], pa.int64()),
                            "seq": [run] * PER_RUN, "_deleted": [i % 3 == 0 for i in range(PER_RUN)]})
        changelog.append(uri, to_storage(changes), metadata={})
    return uri


def independently(uri: str, keys: pa.Table) -> pl.DataFrame:
    """The logged changes of `keys`: every file of the log read, then semi-joined in polars."""
    whole = pl.from_arrow(pads.dataset(delta.open_table(uri, "t").file_uris(), format="parquet").to_table())
    wanted = pl.from_arrow(keys).cast({"id": pl.Int64})  # type: ignore[union-attr]
    assert isinstance(whole, pl.DataFrame) and isinstance(wanted, pl.DataFrame)
    return whole.join(wanted, on=keys.column_names, how="semi", nulls_equal=True).sort(IDENTITY)


@pytest.mark.parametrize(("keys", "rows"), [
    (pa.table({"region": ["eu", "us"], "id": pa.array([7, 8], pa.int32())}), 2 * RUNS),  # not the log's int type
    (pa.table({"region": ["us", "eu"], "id": pa.array([None, 7], pa.int64())}), 2 * RUNS),  # a null key is a key
    (pa.table({"region": ["eu"], "id": pa.array([10_001], pa.int64())}), 0),  # never logged
], ids=["other-type", "null-key", "unknown"])
def test_the_changes_of_some_keys_are_read_without_reading_the_whole_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: pa.Table, rows: int) -> None:
    uri = logged(tmp_path)
    scanned: list[int] = []
    opened = delta.rows_dataset

    class Counted:
        """The log's dataset, counting the rows each scan brings into memory."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.dataset = opened(*args, **kwargs)
            self.schema = self.dataset.schema

        def to_table(self, **options: Any) -> pa.Table:
            read = self.dataset.to_table(**options)
            scanned.append(read.num_rows)
            return read

    monkeypatch.setattr(delta, "rows_dataset", Counted)
    found = changelog.read_for_keys(uri, "silver.t", keys)
    assert found is not None and found.num_rows == rows
    assert pl.from_arrow(found).sort(IDENTITY).equals(independently(uri, keys))  # type: ignore[union-attr]
    assert scanned == [rows]  # the keys' rows, not the 2,000 logged


def test_a_table_that_never_logged_a_change_has_no_log(tmp_path: Path) -> None:
    assert changelog.read_for_keys(str(tmp_path / "_changes" / "silver" / "x"), "silver.x", pa.table({"id": [1]})) is None
