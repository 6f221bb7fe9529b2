"""Columns a source declares typed, converted from the text they arrived as without losing a value.

Arrow's CSV reader types a file's declared columns while parsing it when every value parses
(`engine.ingest.readers`). Otherwise, and for JSON lines, the declared columns arrive as strings and are typed
here: a value is typed as Arrow's CSV reader would type it (surrounding whitespace ignored, an empty value
null); a value that does not parse is null in its column and kept as it arrived in the row's `_rescued_data`,
as the JSON object `{"<column>": "<text>", ...}` of the file's columns with such values, so that silver can
judge the row.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from engine.ingest.drift import with_rescued

_LEAF = 16
"""Values cast one at a time once a failing slice is this short."""
_TRUE, _FALSE = ["1", "True", "TRUE", "true"], ["0", "False", "FALSE", "false"]
"""The booleans Arrow's CSV reader accepts."""


def typed_columns(table: pa.Table, types: Mapping[str, pa.DataType]) -> pa.Table:
    """`table` with each column of `types` it holds as text converted to its declared type, the values that
    do not parse moved into `_rescued_data`."""
    names, rescued = [], []
    for name, kind in types.items():
        if name not in table.column_names or table.schema.field(name).type == kind:
            continue
        text = table.column(name).combine_chunks().cast(pa.string())
        values, unparsed = _converted(text, kind)
        table = table.set_column(table.column_names.index(name), pa.field(name, kind), values)
        if unparsed is not None:
            names.append(name)
            rescued.append(unparsed)
    return with_rescued(table, names, rescued) if names else table


def _converted(text: pa.Array, kind: pa.DataType) -> tuple[pa.Array, pa.Array | None]:
    """`text` as `kind`, and the text of the values that do not parse (null elsewhere), or None when all do."""
    if kind == pa.string():
        return text, None
    trimmed = pc.utf8_trim_whitespace(text)
    trimmed = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)
    try:
        return pc.cast(trimmed, kind), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    candidates = pc.if_else(pc.is_valid(_guess(trimmed, kind)), trimmed, pa.scalar(None, pa.string()))
    values = _cast_each(candidates, kind)
    unparsed = pc.and_(pc.is_valid(trimmed), pc.is_null(values))
    return values, pc.if_else(unparsed, text, pa.scalar(None, pa.string()))


def _guess(trimmed: pa.Array, kind: pa.DataType) -> pa.Array:
    """Which values of `trimmed` polars parses as `kind` (null where it does not): a fast first sieve, each
    value it keeps cast again by Arrow."""
    series = pl.from_arrow(trimmed)
    assert isinstance(series, pl.Series)
    if pa.types.is_boolean(kind):
        return pl.select(pl.when(series.is_in(_TRUE + _FALSE)).then(pl.lit(True))).to_series().to_arrow()
    if kind == pa.date32():
        return series.str.to_date("%Y-%m-%d", strict=False).to_arrow()
    if pa.types.is_timestamp(kind):
        return series.str.to_datetime(strict=False, time_unit="us").to_arrow()
    return series.cast(pl.from_arrow(pa.array([], kind)).dtype, strict=False).to_arrow()


def _cast_each(values: pa.Array, kind: pa.DataType) -> pa.Array:
    """`values` cast to `kind`, null where a value does not parse: halves are cast until each failing slice is
    short, whose values are then cast one at a time."""
    try:
        return pc.cast(values, kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if len(values) <= _LEAF:
        return pa.concat_arrays([_cast_or_null(values.slice(i, 1), kind) for i in range(len(values))])
    half = len(values) // 2
    return pa.concat_arrays([_cast_each(values.slice(0, half), kind), _cast_each(values.slice(half), kind)])


def _cast_or_null(value: pa.Array, kind: pa.DataType) -> pa.Array:
    try:
        return pc.cast(value, kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.nulls(1, kind)
