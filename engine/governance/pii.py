"""Personal data columns: tokenized with a keyed HMAC-SHA256, masked or encrypted (`encryption.py`), whole
batches at a time.

A token is `<key version>:<first 32 hex digits of HMAC-SHA256(key, value)>`: deterministic for one key
version (joins and distinct counts still work), different for another. The HMAC runs inside DuckDB over
the Arrow column (`sha256` of the padded key blocks concatenated with the values), so no Python code runs
per value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from engine.columns import RESCUED_DATA
from engine.errors import GovernanceError
from engine.governance import encryption
from engine.governance.encryption import ColumnKey
from engine.governance.secrets import PiiKey

TOKEN_DIGITS = 32
MASK = "***"
_BLOCK = 64


def tokenize(values: pa.Array | pa.ChunkedArray, key: PiiKey) -> pa.Array:
    """HMAC-SHA256 tokens of `values` (as text), nulls kept null."""
    secret = key.secret if len(key.secret) <= _BLOCK else hashlib.sha256(key.secret).digest()
    padded = secret.ljust(_BLOCK, b"\0")
    inner, outer = bytes(b ^ 0x36 for b in padded), bytes(b ^ 0x5C for b in padded)
    column = pa.table({"v": pc.cast(values, pa.string())})
    with duckdb.connect() as db:
        db.register("batch", column)
        tokens = db.sql(
            "SELECT CASE WHEN v IS NULL THEN NULL ELSE ? || substr(sha256(?::BLOB || "
            "unhex(sha256(?::BLOB || encode(v)))), 1, ?) END AS t FROM batch",
            params=[f"{key.version}:", outer, inner, TOKEN_DIGITS]).to_arrow_table()
    return tokens.column("t").combine_chunks().cast(pa.string())


def mask(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The first character of each value followed by `***`, nulls kept null."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    text = pc.cast(values, pa.string())
    return pc.binary_join_element_wise(pc.utf8_slice_codeunits(text, 0, 1), pa.scalar(MASK), "")


def protect(batch: pa.Table, columns: Mapping[str, str], key: PiiKey, table: str = "",
            column_key: ColumnKey | None = None, key_columns: Sequence[str] = ()) -> pa.Table:
    """`batch` with each personal-data column tokenized, masked or encrypted (with `column_key`, as binary
    bound to the table, the column and the row's `key_columns` as they are stored) as declared, and the raw
    text of unparseable records (`_rescued_data`, bound for quarantine) tokenized, since it may hold any of them.

    Raises:
        GovernanceError: a declared column is not in a batch that has rows, one is declared `encrypt` and no
            `column_key` is given, or the batch lacks a key column.
    """
    encrypted = [column for column, action in columns.items() if action == "encrypt"]
    if encrypted and column_key is None:
        raise GovernanceError(f"table `{table}` declares {', '.join(f'`{c}`' for c in encrypted)} `encrypt`, and "
                              "no column-encryption key was given", table=table)
    missing = [column for column in columns if column not in batch.column_names]
    if missing and batch.num_rows:
        raise GovernanceError(f"table `{table}` declares personal-data column `{missing[0]}`, which its rows lack "
                              f"(columns: {', '.join(batch.column_names)}); fix the `pii` declaration", table=table)
    present = [column for column in columns if column not in missing]
    for column in (c for c in present if columns[c] != "encrypt"):
        index = batch.column_names.index(column)
        text = tokenize(batch.column(index), key) if columns[column] == "tokenize" else mask(batch.column(index))
        batch = batch.set_column(index, pa.field(column, pa.string()), text)
    row_key = encryption.row_keys(batch, table, key_columns) if encrypted and batch.num_rows else None
    for column in (c for c in present if columns[c] == "encrypt"):
        assert column_key is not None
        index = batch.column_names.index(column)
        batch = batch.set_column(index, pa.field(column, pa.large_binary()),
                                 encryption.encrypt(batch.column(index), column_key, table, column, row_key))
    if columns and RESCUED_DATA in batch.column_names:
        index = batch.column_names.index(RESCUED_DATA)
        batch = batch.set_column(index, pa.field(RESCUED_DATA, pa.string()), tokenize(batch.column(index), key))
    return batch
