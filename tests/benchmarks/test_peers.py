"""The peers of the TPC-H medallion workload at SF 0.01: each one's output passes the check against DuckDB's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.tpch.check import CheckFailed, Output, assert_correct
from benchmarks.tpch.run import COMMANDS, environment
from tests.benchmarks.test_tpch import data, reference  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("peer", ["polars", "spark", "daft", "daft-ray"])
def test_peer_passes_the_check(peer: str, data: Path, reference: Output, tmp_path: Path) -> None:  # noqa: F811
    done = subprocess.run(COMMANDS[peer](data, tmp_path / peer), env=environment(), capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert_correct(data, Output(tmp_path / peer), reference)


def test_check_rejects_a_wrong_gold_value_in_parquet_output(data: Path, reference: Output,  # noqa: F811
                                                            tmp_path: Path) -> None:
    for log in reference.root.rglob("_delta_log"):
        name = str(log.parent.relative_to(reference.root))
        table = reference.arrow(name)
        if name == "gold/customer_monthly_revenue":
            revenue = table.column("revenue").to_pylist()
            revenue[0] *= 1.01
            table = table.set_column(table.schema.get_field_index("revenue"), "revenue",
                                     pa.array(revenue, table.schema.field("revenue").type))
        (tmp_path / name).mkdir(parents=True)
        pq.write_table(table, tmp_path / name / "part-00000.parquet")
    with pytest.raises(CheckFailed, match=r"gold/customer_monthly_revenue\.revenue: 1 groups differ"):
        assert_correct(data, Output(tmp_path), reference)
