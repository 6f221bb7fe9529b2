"""The merge benchmark at a tiny size: deltalake's single-process merge and the bucketed merge in Ray tasks on three
local Ray nodes (each in its own process, as the benchmark runs them) leave the same table."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from benchmarks import merge

pytestmark = pytest.mark.slow


def rows(table: Path) -> pl.DataFrame:
    frame = pl.from_arrow(DeltaTable(str(table)).to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("id")


def test_both_merges_of_the_benchmark_leave_the_same_table(tmp_path: Path) -> None:
    results = merge.compare(3000, 300, nodes=(3,), buckets=4, folder=tmp_path)

    assert [(r["role"], r["nodes"]) for r in results] == [("deltalake", None), ("bucketing", 3), ("distributed", 3)]
    expected = rows(merge.work_folder(tmp_path, "deltalake", 3))
    assert expected.height == results[0]["rows_after"]
    assert min(results[0][count] for count in ("inserted", "updated", "deleted")) > 0
    for role in ("bucketing", "distributed"):
        merged = rows(merge.work_folder(tmp_path, role, 3))
        assert merged.select(expected.columns).equals(expected), role
    assert all(r["same_rows"] for r in results)
    assert len({(r["rows_after"], r["inserted"], r["updated"], r["deleted"]) for r in results}) == 1
