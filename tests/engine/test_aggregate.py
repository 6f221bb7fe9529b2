"""Two-phase grouped aggregates, checked against DuckDB's over the same rows."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import ray

from engine import aggregate
from engine.errors import PipelineDefinitionError

pytestmark = pytest.mark.usefixtures("ray_local")

AGGREGATIONS = {"total": ("x", "sum"), "values": ("x", "count"), "rows": ("x", "count_all"), "low": ("n", "min"),
                "high": ("n", "max"), "average": ("x", "mean"), "n_sum": ("n", "sum")}
SQL = ("SELECT g, h, sum(x) AS total, count(x) AS \"values\", count(*) AS \"rows\", min(n) AS low, max(n) AS high, "
       "avg(x) AS average, sum(n) AS n_sum FROM rows GROUP BY g, h")


def random_rows(seed: int, count: int) -> pa.Table:
    draw = np.random.default_rng(seed)
    groups = draw.integers(0, 7, count)
    x = draw.normal(size=count)
    return pa.table({"g": pa.array(groups % 3), "h": pa.array([f"h{v}" for v in groups % 2]),
                     "x": pa.array(x, mask=draw.random(count) < 0.2), "n": pa.array(draw.integers(-50, 50, count)),
                     "only_null_in_g2": pa.array(np.where(groups % 3 == 2, np.nan, x), mask=groups % 3 == 2)})


def collected(dataset: ray.data.Dataset) -> list[dict[str, object]]:
    table = pa.concat_tables(ray.get(dataset.to_arrow_refs()))
    return sorted(table.to_pylist(), key=lambda row: (row["g"], row.get("h")))


@pytest.mark.parametrize("seed", range(3))
def test_two_phase_aggregates_equal_a_single_pass_over_every_row(seed: int) -> None:
    rows = random_rows(seed, 20_000)
    blocks = [rows.slice(start, 1_500) for start in range(0, rows.num_rows, 1_500)]
    result = collected(aggregate(ray.data.from_arrow(blocks), ["g", "h"], AGGREGATIONS, num_partitions=4))
    expected = sorted(duckdb.sql(SQL).to_arrow_table().to_pylist(), key=lambda row: (row["g"], row["h"]))
    assert [list(row) for row in result] == [["g", "h", *AGGREGATIONS]] * len(result)
    assert [(r["g"], r["h"]) for r in result] == [(r["g"], r["h"]) for r in expected]
    for got, want in zip(result, expected, strict=True):
        assert {k: got[k] for k in ("values", "rows", "low", "high", "n_sum")} == \
               {k: want[k] for k in ("values", "rows", "low", "high", "n_sum")}
        assert math.isclose(got["total"], want["total"], rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(got["average"], want["average"], rel_tol=1e-9, abs_tol=1e-12)


def test_a_group_without_values_has_null_sum_and_mean_and_zero_count() -> None:
    rows = random_rows(7, 3_000)
    spec = {"s": ("only_null_in_g2", "sum"), "m": ("only_null_in_g2", "mean"), "c": ("only_null_in_g2", "count")}
    result = {row["g"]: row for row in collected(aggregate(ray.data.from_arrow([rows]), ["g"], spec))}
    assert (result[2]["s"], result[2]["m"], result[2]["c"]) == (None, None, 0)
    assert result[0]["c"] > 0 and result[0]["s"] is not None


def test_an_empty_input_gives_no_group() -> None:
    empty = random_rows(1, 10).slice(0, 0)
    assert collected(aggregate(ray.data.from_arrow([empty]), ["g", "h"], AGGREGATIONS)) == []


def test_a_wrong_declaration_is_refused_with_every_problem_named() -> None:
    with pytest.raises(PipelineDefinitionError, match=r"unknown aggregation `median`.*output `g` is also a group"):
        aggregate(ray.data.from_arrow([random_rows(1, 10)]), ["g"], {"m": ("x", "median"), "g": ("x", "sum")})
