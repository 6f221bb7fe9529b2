"""Personal data columns: tokenized with a keyed HMAC-SHA256 or masked, whole batches at a time.

A token is `<key version>:<first 32 hex digits of HMAC-SHA256(key, value)>`: deterministic for one key
version (joins and distinct counts still work), different for another. The HMAC runs inside DuckDB over
the Arrow column (`sha256` of the padded key blocks concatenated with the values), so no Python code runs
per value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from engine.columns import RESCUED_DATA
from engine.errors import GovernanceError, PipelineDefinitionError
from engine.governance import deltalog
from engine.governance.secrets import PiiKey
from engine.tables import delta

PiiAction = Literal["tokenize", "mask"]
ACTIONS: tuple[str, ...] = ("tokenize", "mask")
TOKEN_DIGITS = 32
MASK = "***"
STATS_PROPERTY = "delta.dataSkippingStatsColumns"
_BLOCK = 64


def check_declaration(table: str, pii: Mapping[str, str]) -> None:
    """Raise when a table declares an unknown action for a personal-data column.

    Raises:
        PipelineDefinitionError: an action other than `tokenize` or `mask`.
    """
    for column, action in pii.items():
        if action not in ACTIONS:
            raise PipelineDefinitionError(f"table `{table}` declares `{action}` for personal-data column `{column}`; "
                                  f"use one of {', '.join(ACTIONS)}", table=table)


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


def protect(batch: pa.Table, columns: Mapping[str, str], key: PiiKey, table: str = "") -> pa.Table:
    """`batch` with each personal-data column tokenized or masked as declared, and the raw text of
    unparseable records (`_rescued_data`, bound for quarantine) tokenized, since it may hold any of them.

    Raises:
        GovernanceError: a declared column is not in a batch that has rows.
    """
    for column, action in columns.items():
        if column not in batch.column_names:
            if batch.num_rows == 0:
                continue
            raise GovernanceError(f"table `{table}` declares personal-data column `{column}`, which its rows "
                                  f"lack (columns: {', '.join(batch.column_names)}); fix the `pii` declaration",
                                  table=table)
        values = batch.column(column)
        protected = tokenize(values, key) if action == "tokenize" else mask(values)
        index = batch.column_names.index(column)
        batch = batch.set_column(index, pa.field(column, pa.string()), protected)
    if columns and RESCUED_DATA in batch.column_names:
        index = batch.column_names.index(RESCUED_DATA)
        batch = batch.set_column(index, pa.field(RESCUED_DATA, pa.string()), tokenize(batch.column(index), key))
    return batch


def stats_columns(schema: pa.Schema, personal: Iterable[str]) -> str:
    """The value of `delta.dataSkippingStatsColumns` that keeps every column but `personal` in statistics."""
    excluded = set(personal)
    return ",".join(name for name in schema.names if name not in excluded)


def keep_out_of_stats(uri: str, personal: Collection[str], metadata: dict[str, Any]) -> bool:
    """Make the table at `uri` leave `personal` columns out of the statistics of the files it gets from now
    on (`delta.dataSkippingStatsColumns`, a commit carrying `metadata`), and strip their min/max from the
    files already logged. Does nothing when the table is missing or already set; True when it set it."""
    if not delta.table_exists(uri):
        return False
    table = DeltaTable(uri)
    schema = pa.schema(table.schema().to_arrow())
    present = [c for c in personal if c in schema.names]
    wanted = stats_columns(schema, present)
    if not present or table.metadata().configuration.get(STATS_PROPERTY) == wanted:
        return False
    table.alter.set_table_properties({STATS_PROPERTY: wanted}, commit_properties=delta.commit_metadata(metadata))
    deltalog.strip_stats(uri, columns=present)
    deltalog.refresh_checkpoints(uri)
    return True
