"""A TRUNCATE of the source table, made explicit: after its `t` row, a `d` row for every key the table held then,
at the truncate's position, so that tables merged from bronze by key (`Merge(delete_when="_op = 'd'")`) are
emptied by it as the source was. Run in the task that read the changes; bronze's key and change columns are read
there, never on the driver."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from engine.ingest.postgres.pgoutput import COMMIT_TIME, LSN, OP, POSITION
from engine.tables import delta


def with_truncates_expanded(changes: pa.Table, keys: Sequence[str], bronze_uri: str, table: str) -> pa.Table:
    """`changes` with, after each `t` row, a `d` row for each key alive then (by bronze's and the batch's
    earlier changes), carrying the truncate's `_lsn`, `_position` and `_commit_time`."""
    if not pc.any(pc.equal(changes[OP], "t")).as_py():
        return changes
    columns = [*keys, OP, POSITION]
    history = delta.open_table(bronze_uri, table).to_pyarrow_dataset().to_table(columns=columns) \
        if delta.table_exists(bronze_uri) else pa.table({c: pa.array([], pa.string()) for c in columns})
    parts: list[pa.Table] = []
    connection = duckdb.connect()
    truncates = changes.filter(pc.equal(changes[OP], "t"))
    for index in range(truncates.num_rows):
        truncate = truncates.slice(index, 1)
        at = truncate[POSITION][0].as_py()
        before = changes.filter(pc.less(changes[POSITION], at)).select(columns)
        connection.register("events", pa.concat_tables([history, before, *(p.select(columns) for p in parts)]))
        key_list = ", ".join(f'"{k}"' for k in keys)
        alive = connection.execute(
            f"SELECT {key_list} FROM (SELECT {key_list}, {OP}, row_number() OVER (PARTITION BY {key_list} "
            f"ORDER BY {POSITION} DESC, {OP} = 'd' DESC) AS newest FROM events WHERE {OP} <> 't' "
            f"AND {POSITION} < $at) WHERE newest = 1 AND {OP} <> 'd'", {"at": at}).to_arrow_table()
        rows = alive.num_rows
        deletes = {name: alive[name] if name in keys else pa.nulls(rows, changes.schema.field(name).type)
                   for name in changes.column_names}
        deletes[OP] = pa.repeat(pa.scalar("d"), rows)
        for name in (LSN, POSITION, COMMIT_TIME):
            deletes[name] = pa.repeat(truncate[name][0], rows)
        parts.append(pa.table(deletes, schema=changes.schema))
    ordered = pa.concat_tables([changes, *parts])
    return ordered.take(pc.sort_indices(ordered, [(POSITION, "ascending")]))
