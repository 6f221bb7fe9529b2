"""The one hash of key columns that routes rows: shuffle partitions, merge buckets and backup content hashes;
and the key columns of a row as bytes, which bind an encrypted value to its row (`engine/governance/encryption.py`).

Equal key values hash alike whatever type carries them: integers of any width or signedness hash by their
value, string and binary variants by their bytes, timestamps by their instant in microseconds (any unit or
zone), dates by their day, times and durations in microseconds. The hash is stable across processes,
machines and library versions (polars' and DuckDB's hashes are not), so a table's bucket layout stays valid
for its life. Inputs whose key types cannot be compared (an integer and a string) are refused by
`check_comparable` instead of silently meeting nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import KeyMismatch

_NULL_HASH = np.uint64(0x9E3779B97F4A7C15)
_BASE = np.uint64(0x100000001B3)
_SLICE_ROWS = 1 << 16
_UNIT = "us"
_NULL, _WORD, _BYTES, _EMPTY = b"\x00", b"\x01", b"\x02", b""


@functools.cache
def _token(raw: bytes) -> pa.Scalar:
    """`raw` as a large-binary scalar, made on first use (making one imports pandas, which a module need not)."""
    return pa.scalar(raw, pa.large_binary())


def key_hash(table: pa.Table, keys: Sequence[str]) -> np.ndarray:
    """A 64-bit hash of every row's key columns, equal for equal values of any comparable types.

    Integers, booleans and temporal values hash by their integer value in a common unit (an int32 and an int64
    key agree, so do a timestamp in ms and one in us), floats by their bits as float64, strings and binaries by
    their bytes, other types by their text form; nulls share one hash. Unsigned values above the int64 range
    share the hash of a negative int64 (a collision, never a miss).
    """
    combined = np.zeros(table.num_rows, np.uint64)
    for name in keys:
        chunks = [_array_hash(chunk) for chunk in table.column(name).chunks]
        with np.errstate(over="ignore"):
            combined = _mix(combined * _BASE + (np.concatenate(chunks) if chunks else combined))
    return combined


def key_bytes(table: pa.Table, keys: Sequence[str]) -> pa.Array:
    """The key columns of every row as bytes (large_binary), alike for key values that compare equal across
    types as in `key_hash`, and unlike the hash never alike for different keys (but for unsigned values above
    the int64 range, as there). Per column, in the order of `keys` (at least one): a null is `0x00`, a 64-bit
    word `0x01` and its 8 bytes, a string or binary `0x02`, its length in 8 bytes and its bytes.
    """
    return pc.binary_join_element_wise(*[_key_tokens(table.column(name).combine_chunks()) for name in keys], _token(_EMPTY))


def bucket_of(table: pa.Table, keys: Sequence[str], buckets: int) -> np.ndarray:
    """The bucket (0 to `buckets` - 1) of every row of `table`, from `key_hash` of its key columns."""
    return (key_hash(table, keys) % np.uint64(buckets)).astype(np.int64)


def key_family(data_type: pa.DataType) -> str | None:
    """The family of values a key type holds: keys of one family compare by value and hash alike; None for the
    null type, which compares with any."""
    if pa.types.is_dictionary(data_type):
        return key_family(data_type.value_type)
    if pa.types.is_null(data_type):
        return None
    if pa.types.is_decimal(data_type):
        return f"decimal with scale {data_type.scale}"
    families = {"integer": pa.types.is_integer, "floating point": pa.types.is_floating,
                "string": _is_string, "binary": _is_binary, "boolean": pa.types.is_boolean,
                "date": pa.types.is_date, "timestamp": pa.types.is_timestamp, "time": pa.types.is_time,
                "duration": pa.types.is_duration}
    return next((family for family, member in families.items() if member(data_type)), str(data_type))


def check_comparable(schemas: Mapping[str, pa.Schema], keys: Sequence[str], where: str) -> None:
    """Refuse inputs hashed on the same `keys` when one lacks a key column or two hold it in types of
    different families (see `key_family`); inputs without columns (nothing read) are skipped.

    Args:
        schemas: the schema of every input, by how the message names it (e.g. "input `lines`").
        keys: the key columns.
        where: what hashes them, for the message (e.g. "co_partition in table `gold.orders`").

    Raises:
        KeyMismatch: naming the inputs, the column and both types.
    """
    named = {name: schema for name, schema in schemas.items() if len(schema)}
    for column in keys:
        seen: tuple[str, pa.DataType] | None = None
        for name, schema in named.items():
            if schema.get_field_index(column) < 0:
                raise KeyMismatch(f"{where}: {name} has no key column `{column}` (it has "
                                  f"{', '.join(schema.names)}); select or rename the column before the shuffle")
            data_type = schema.field(column).type
            if key_family(data_type) is None:
                continue
            if seen is not None and key_family(seen[1]) != key_family(data_type):
                raise KeyMismatch(
                    f"{where}: key column `{column}` is {seen[1]} in {seen[0]} but {data_type} in {name}, whose "
                    f"values never compare equal; cast `{column}` to one type in both first")
            seen = seen or (name, data_type)


def _is_string(data_type: pa.DataType) -> bool:
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or pa.types.is_string_view(data_type)


def _is_binary(data_type: pa.DataType) -> bool:
    return pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type) or pa.types.is_binary_view(data_type)


def _canonical(array: pa.Array) -> pa.Array:
    """Temporal values in one unit per kind: timestamps as UTC microseconds, dates as days, times and
    durations as microseconds (finer units truncated, so equal values stay equal)."""
    data_type = array.type
    if pa.types.is_timestamp(data_type) and data_type.unit != _UNIT:
        return array.cast(pa.timestamp(_UNIT, data_type.tz), safe=False)
    if pa.types.is_date64(data_type):
        return array.cast(pa.date32(), safe=False)
    if pa.types.is_time(data_type) and data_type.unit != _UNIT:
        return array.cast(pa.time64(_UNIT), safe=False)
    if pa.types.is_duration(data_type) and data_type.unit != _UNIT:
        return array.cast(pa.duration(_UNIT), safe=False)
    return array


def _key_values(array: pa.Array) -> pa.Array | np.ndarray:
    """One key column chunk as the values it compares by: a large_binary array (strings and binaries by their
    bytes, other types by their text form), or 64-bit words (integers, booleans and temporal values as int64 in
    a common unit, floats as their float64 bits with one zero and one NaN) with nulls as zero."""
    data_type = array.type
    if pa.types.is_dictionary(data_type):
        return _key_values(array.dictionary_decode())
    if _is_string(data_type) or _is_binary(data_type):
        return array.cast(pa.large_binary())
    if pa.types.is_floating(data_type):
        values = array.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False) + 0.0
        values[np.isnan(values)] = np.nan
        return values.view(np.uint64)
    if pa.types.is_temporal(data_type) or pa.types.is_integer(data_type) or pa.types.is_boolean(data_type):
        if pa.types.is_temporal(data_type):
            array = _canonical(array)
            array = array.view(pa.int32() if array.type.bit_width == 32 else pa.int64())
        return array.cast(pa.int64(), safe=False).fill_null(0).to_numpy(zero_copy_only=False).view(np.uint64)
    return _key_values(array.cast(pa.string()))


def _array_hash(array: pa.Array) -> np.ndarray:
    """The hash of every value of one key column chunk; nulls share one value."""
    if pa.types.is_dictionary(array.type):
        return _array_hash(array.dictionary_decode())
    values = _key_values(array)
    if isinstance(values, np.ndarray):
        hashed = _mix(values)
    else:
        slices = [_bytes_hash(values.slice(start, _SLICE_ROWS)) for start in range(0, len(values), _SLICE_ROWS)]
        hashed = np.concatenate(slices) if slices else np.zeros(0, np.uint64)
    if array.null_count:
        hashed[array.is_null().to_numpy(zero_copy_only=False)] = _NULL_HASH
    return hashed


def _key_tokens(array: pa.Array) -> pa.Array:
    """Every value of one key column as bytes that tell it apart from any other (see `key_bytes`)."""
    if pa.types.is_dictionary(array.type):
        return _key_tokens(array.dictionary_decode())
    values = _key_values(array)
    if isinstance(values, np.ndarray):
        token = pc.binary_join_element_wise(_token(_WORD), _fixed_words(values), _token(_EMPTY))
    else:
        lengths = _fixed_words(pc.binary_length(values).fill_null(0).to_numpy(zero_copy_only=False))
        token = pc.binary_join_element_wise(_token(_BYTES), lengths, values.fill_null(b""), _token(_EMPTY))
    return pc.if_else(array.is_null(), _token(_NULL), token)


def _fixed_words(values: np.ndarray) -> pa.Array:
    """64-bit words as 8 big-endian bytes each, in a large_binary array."""
    data = pa.py_buffer(values.astype(">u8").tobytes())
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(8), len(values), [None, data]).cast(pa.large_binary())


def _bytes_hash(array: pa.Array) -> np.ndarray:
    """A polynomial hash of the bytes of every value of a large_binary array, mixed with its length."""
    offsets = np.frombuffer(array.buffers()[1], np.int64)[array.offset:array.offset + len(array) + 1]
    buffer = array.buffers()[2]
    data = np.frombuffer(buffer, np.uint8)[offsets[0]:offsets[-1]] if buffer is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1] - offsets[0], np.diff(offsets)
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.full(int(lengths.max(initial=0)), _BASE, np.uint64), dtype=np.uint64)
        terms = (data.astype(np.uint64) + np.uint64(1)) * powers[np.arange(len(data)) - np.repeat(starts, lengths)]
        sums = np.concatenate([np.zeros(1, np.uint64), np.cumsum(terms, dtype=np.uint64)])
        return _mix((sums[starts + lengths] - sums[starts]) ^ _mix(lengths.astype(np.uint64)))


def _mix(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: every input bit affects the whole 64-bit result."""
    with np.errstate(over="ignore"):
        values = values ^ (values >> np.uint64(30))
        values = values * np.uint64(0xBF58476D1CE4E5B9)
        values = values ^ (values >> np.uint64(27))
        values = values * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))
