"""The shuffle benchmark's input, its deduplication and its table, without starting Ray."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks import shuffle


def test_the_input_holds_the_keys_it_says_and_deduplication_keeps_one_row_of_each(tmp_path: Path) -> None:
    unique = shuffle.write_input(tmp_path, 5_050)
    rows = pq.read_table(tmp_path)
    assert rows.num_rows == 5_050
    keys = pc.binary_join_element_wise(rows["orderkey"].cast(pa.string()), rows["linenumber"].cast(pa.string()), "-")
    assert pc.count_distinct(keys).as_py() == unique == 5_000
    once = shuffle.deduplicated(rows)
    assert once.num_rows == unique and set(once.column_names) == set(rows.column_names)
    assert once.group_by(shuffle.KEYS).aggregate([([], "count_all")])["count_all"].to_pylist() == [1] * unique


def test_the_table_has_a_row_per_variant_and_flags_a_wrong_result() -> None:
    variants = {name: {"median": 2.0, "best": 1.5, "runs": 3, "one_row_per_key": name != "ray:shuffle_v2"}
                for name in shuffle.VARIANTS}
    lines = shuffle.markdown({"rows": 6_000, "unique": 5_940, "variants": variants})
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| shuffle")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(shuffle.VARIANTS)
    assert rows[-1].endswith("| NO |") and all(row.endswith("| yes |") for row in rows[:-1])
