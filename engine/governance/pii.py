"""Personal data columns: tokenized with a keyed HMAC-SHA256, masked or encrypted (`encryption.py`), whole
batches at a time.

A token is `<key version>:<first 32 hex digits of HMAC-SHA256(key, value)>`: deterministic for one key
version (joins and distinct counts still work), different for another. The HMAC runs inside DuckDB over
the Arrow column (`sha256` of the padded key blocks concatenated with the values), so no Python code runs
per value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from engine.columns import RESCUED_DATA
from engine.errors import GovernanceError, PipelineDefinitionError
from engine.governance import deltalog, encryption
from engine.governance.encryption import ColumnKey
from engine.governance.secrets import PiiKey
from engine.tables import delta
from engine.tables.files import STATS_PROPERTY

PiiAction = Literal["tokenize", "mask", "encrypt"]
ACTIONS: tuple[str, ...] = ("tokenize", "mask", "encrypt")
TOKEN_DIGITS = 32
MASK = "***"
_BLOCK = 64


def check_declaration(table: str, pii: Mapping[str, str], keys: Collection[str] = ()) -> None:
    """Raise when a table declares an unknown action for a personal-data column, or encrypts one of its `keys`.

    Raises:
        PipelineDefinitionError: an action other than `tokenize`, `mask` or `encrypt`; `encrypt` on a key
            column (encrypted values never compare equal, and they are bound to the key).
    """
    for column, action in pii.items():
        if action not in ACTIONS:
            raise PipelineDefinitionError(f"table `{table}` declares `{action}` for personal-data column `{column}`; "
                                  f"use one of {', '.join(ACTIONS)}", table=table)
        if action == "encrypt" and column in keys:
            raise PipelineDefinitionError(f"table `{table}` declares its key column `{column}` `encrypt`; keys "
                                          "must compare equal: `tokenize` it instead", table=table)


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


def stats_columns(schema: pa.Schema, personal: Iterable[str]) -> str:
    """The value of `delta.dataSkippingStatsColumns` that keeps every column but `personal` in statistics."""
    excluded = set(personal)
    return ",".join(name for name in schema.names if name not in excluded)


def keep_out_of_stats(uri: str, personal: Collection[str], metadata: dict[str, Any],
                      encrypted: Mapping[str, str] | None = None, key_columns: Sequence[str] = ()) -> bool:
    """Make the table at `uri` leave `personal` columns out of the statistics of the files it gets from now
    on (`delta.dataSkippingStatsColumns`), and strip their min/max from the files already logged; record the
    `encrypted` columns (column: key id) and the `key_columns` their values are bound to
    (`encryption.encryption_properties`), all in one commit carrying `metadata`. Does nothing when the table is
    missing or already set; True when it set it."""
    if not delta.table_exists(uri):
        return False
    table = DeltaTable(uri)
    schema = pa.schema(table.schema().to_arrow())
    present = [c for c in personal if c in schema.names]
    current = table.metadata().configuration
    wanted = {STATS_PROPERTY: stats_columns(schema, present)}
    recorded = {c: key_id for c, key_id in (encrypted or {}).items() if c in schema.names}
    if recorded or encryption.ENCRYPTED_PROPERTY in current:
        wanted |= encryption.encryption_properties(recorded, key_columns)
    changed = {name: value for name, value in wanted.items() if current.get(name) != value}
    if not present or not changed:
        return False
    table.alter.set_table_properties(changed, raise_if_not_exists=False,
                                     commit_properties=delta.commit_metadata(metadata))
    if STATS_PROPERTY in changed:
        deltalog.strip_stats(uri, columns=present)
        deltalog.refresh_checkpoints(uri)
    return True
