"""The engine's one key hash: equal values hash alike across the types that carry them, and key types whose
values never compare equal are refused; the key bytes that bind encrypted values to their rows."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pytest

from engine.errors import KeyMismatch
from engine.keyhash import check_comparable, key_bytes, key_hash

INTEGERS = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]


def hashes(values: list[object], data_type: pa.DataType) -> list[int]:
    return key_hash(pa.table({"k": pa.array(values, data_type)}), ["k"]).tolist()


def test_every_integer_type_hashes_a_value_like_int64() -> None:
    expected = hashes([0, 1, 100, None], pa.int64())
    for data_type in INTEGERS:
        assert hashes([0, 1, 100, None], data_type) == expected, data_type


def test_temporal_values_hash_by_instant_day_and_microsecond_whatever_their_unit() -> None:
    instants = [dt.datetime(2026, 3, 1, 12, 30, 15, 250000), None]
    expected = hashes(instants, pa.timestamp("us"))
    for unit in ("s", "ms", "ns"):
        assert hashes([instants[0].replace(microsecond=0), None], pa.timestamp(unit)) == \
            hashes([instants[0].replace(microsecond=0), None], pa.timestamp("us")), unit
    assert hashes(instants, pa.timestamp("ms", "UTC")) == expected
    assert hashes([dt.date(2026, 3, 1)], pa.date64()) == hashes([dt.date(2026, 3, 1)], pa.date32())
    assert hashes([dt.time(1, 2, 3)], pa.time32("s")) == hashes([dt.time(1, 2, 3)], pa.time64("ns"))
    assert hashes([dt.timedelta(seconds=5)], pa.duration("ms")) == hashes([dt.timedelta(seconds=5)], pa.duration("us"))


def test_string_variants_and_dictionaries_hash_like_strings() -> None:
    expected = hashes(["", "é", "a" * 100, None], pa.string())
    for data_type in (pa.large_string(), pa.string_view(), pa.dictionary(pa.int8(), pa.string())):
        assert hashes(["", "é", "a" * 100, None], data_type) == expected, data_type


def test_key_types_of_one_family_pass_and_others_are_refused_naming_inputs_column_and_types() -> None:
    schemas = {"input `a`": pa.schema([("k", pa.int8()), ("s", pa.string())]),
               "input `b`": pa.schema([("k", pa.uint64()), ("s", pa.large_string())]),
               "input `c`": pa.schema([("k", pa.null()), ("s", pa.null())]),
               "input `d`": pa.schema([])}
    check_comparable(schemas, ["k", "s"], "co_partition")
    refused = {"input `e`": pa.schema([("k", pa.string())])}
    with pytest.raises(KeyMismatch, match=r"co_partition: key column `k` is int8 in input `a` but string in "
                                          r"input `e`"):
        check_comparable(schemas | refused, ["k"], "co_partition")
    decimals = {"input `x`": pa.schema([("k", pa.decimal128(10, 2))]), "input `y`": pa.schema([("k", pa.decimal128(12, 3))])}
    assert hashes([Decimal("1.50")], pa.decimal128(10, 2)) != hashes([Decimal("1.500")], pa.decimal128(12, 3))
    with pytest.raises(KeyMismatch, match=r"is decimal128\(10, 2\) in input `x` but decimal128\(12, 3\) in input `y`"):
        check_comparable(decimals, ["k"], "co_partition")


def test_key_bytes_are_alike_for_equal_keys_of_any_comparable_types_and_unlike_for_different_keys() -> None:
    narrow = pa.table({"n": pa.array([1, None, 3, 1], pa.int8()), "s": ["a", "b", None, ""],
                       "t": pa.array([dt.datetime(2026, 3, 1)] * 4, pa.timestamp("ms"))})
    wide = pa.table({"n": pa.array([1, None, 3, 1], pa.int64()),
                     "s": pa.array(["a", "b", None, ""], pa.dictionary(pa.int8(), pa.large_string())),
                     "t": pa.array([dt.datetime(2026, 3, 1)] * 4, pa.timestamp("us", "UTC"))})
    keys = key_bytes(narrow, ["n", "s", "t"])
    assert keys.type == pa.large_binary() and keys.equals(key_bytes(wide, ["n", "s", "t"]))
    assert len(set(keys.to_pylist())) == 4
    assert keys[0].as_py()[:10] == b"\x01" + (1).to_bytes(8, "big") + b"\x02"
    shifted = pa.table({"a": ["ab", "a"], "b": ["c", "bc"]})
    assert len(set(key_bytes(shifted, ["a", "b"]).to_pylist())) == 2
    assert key_bytes(pa.table({"f": [0.0, -0.0]}), ["f"]).to_pylist()[0] == key_bytes(
        pa.table({"f": [-0.0]}), ["f"]).to_pylist()[0]
