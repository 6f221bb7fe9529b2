"""Reading a PostgreSQL source in Ray tasks: the first snapshot by key ranges, then batches of changes, each staged
as bronze Parquet files in the task that read it. The driver sees only positions, shapes and file lists."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import ray
from psycopg import sql

from engine.columns import INGESTED_AT, RESCUED_DATA, RUN_ID, SOURCE_FILE
from engine.errors import SourceError
from engine.ingest.drift import SchemaDrift, apply_policy, detect_drift
from engine.ingest.postgres.database import connect, failure
from engine.ingest.postgres.pgoutput import (
    BEFORE,
    COMMIT_TIME,
    LSN,
    OP,
    POSITION,
    UNCHANGED,
    Decoder,
    format_lsn,
    parse_lsn,
    position,
)
from engine.ingest.postgres.source import PostgresSource
from engine.ingest.postgres.truncates import with_truncates_expanded
from engine.tables.staging import StagedFiles, Stager

MOST_SNAPSHOT_TASKS = 256
_SNAPSHOT_NAME = re.compile(r"^[0-9A-F-]+$")


@dataclass(frozen=True)
class TableShape:
    """The source table's columns and their PostgreSQL types, as one part of a read found them."""

    columns: tuple[str, ...]
    types: dict[str, str]


@dataclass(frozen=True)
class ChangeRead:
    """What a task reading the source's changes staged.

    Attributes:
        staged: the changes as bronze files (none when the drift policy `fail` refused them).
        columns: the bronze table's source columns once the batch is taken in.
        types: the PostgreSQL type of each of them.
        drifts: each change of the table's shape in the batch, described.
        position: where the next batch starts: the slot may release the WAL before it once this batch is committed.
        rows: changes read.
        truncates: TRUNCATE events among them.
    """

    staged: StagedFiles
    columns: tuple[str, ...]
    types: dict[str, str]
    drifts: tuple[str, ...]
    position: int
    rows: int
    truncates: int


def bronze_schema(columns: Sequence[str]) -> pa.Schema:
    """The bronze schema of a database source with `columns`: each a string, then the change and ingestion columns."""
    return pa.schema([(c, pa.string()) for c in columns]
                     + [(OP, pa.string()), (LSN, pa.string()), (POSITION, pa.string()),
                        (COMMIT_TIME, pa.timestamp("us", tz="UTC")), (BEFORE, pa.string()), (UNCHANGED, pa.string()),
                        (RESCUED_DATA, pa.string()), (SOURCE_FILE, pa.string()),
                        (INGESTED_AT, pa.timestamp("us", tz="UTC")), (RUN_ID, pa.string())])


def table_shape(connection: psycopg.Connection, source: PostgresSource) -> TableShape:
    """The table's columns and types now (in the connection's transaction)."""
    rows = connection.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass(%s) "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (f'"{source.schema_name}"."{source.table_name}"',)
    ).fetchall()
    return TableShape(tuple(r[0] for r in rows), {r[0]: r[1] for r in rows})


def key_ranges(connection: psycopg.Connection, source: PostgresSource, key: str) -> list[tuple[str | None, str | None]]:
    """Ranges of the key's first column splitting the table into parts of about `snapshot_rows_per_task` rows,
    from the planner's row estimate and a sample's percentiles: [lower, upper), None for unbounded."""
    table = sql.SQL("{}.{}").format(sql.Identifier(source.schema_name), sql.Identifier(source.table_name))
    estimate = connection.execute(
        "SELECT CASE WHEN reltuples >= 0 THEN reltuples ELSE pg_relation_size(oid) / 100 END FROM pg_class "
        "WHERE oid = to_regclass(%s)", (f'"{source.schema_name}"."{source.table_name}"',)).fetchone()
    rows = float(estimate[0]) if estimate and estimate[0] is not None else 0.0
    tasks = min(MOST_SNAPSHOT_TASKS, max(1, math.ceil(rows / source.snapshot_rows_per_task)))
    if tasks == 1:
        return [(None, None)]
    sample = min(100.0, 100.0 * 1000 * tasks / max(rows, 1.0))
    fractions = [i / tasks for i in range(1, tasks)]
    found = connection.execute(sql.SQL(
        "SELECT (percentile_disc(%s::float8[]) WITHIN GROUP (ORDER BY {key}))::text[] "
        "FROM {table} TABLESAMPLE SYSTEM (%s)").format(key=sql.Identifier(key), table=table),
        (fractions, sample)).fetchone()
    percentiles = found[0] if found and found[0] else []
    edges: list[str | None] = [None, *dict.fromkeys(b for b in percentiles if b is not None), None]
    return list(zip(edges[:-1], edges[1:], strict=True))


def read_snapshot(source: PostgresSource, snapshot: str, shape: TableShape, key: str,
                  ranges: list[tuple[str | None, str | None]], consistent_point: int, stager: Stager,
                  ingested_at: datetime, ray_options: dict[str, object]) -> list[ray.ObjectRef]:
    """One task per key range, each reading its rows in the exported `snapshot` and staging them."""
    if not _SNAPSHOT_NAME.match(snapshot):
        raise SourceError(f"source `{source.qualified}`: unexpected snapshot name `{snapshot}`")
    return [_read_range.options(**ray_options).remote(source, snapshot, shape, key, lower, upper, consistent_point,
                                                       stager, index, ingested_at)
            for index, (lower, upper) in enumerate(ranges)]


@ray.remote
def _read_range(source: PostgresSource, snapshot: str, shape: TableShape, key: str, lower: str | None,
                upper: str | None, consistent_point: int, stager: Stager, index: int,
                ingested_at: datetime) -> StagedFiles:
    bounds = [sql.SQL("{} >= {}").format(sql.Identifier(key), sql.Literal(lower))] if lower is not None else []
    bounds += [sql.SQL("{} < {}").format(sql.Identifier(key), sql.Literal(upper))] if upper is not None else []
    query = sql.SQL("COPY (SELECT {columns} FROM {schema}.{table}{where}) TO STDOUT (FORMAT csv)").format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in shape.columns),
        schema=sql.Identifier(source.schema_name), table=sql.Identifier(source.table_name),
        where=sql.SQL(" WHERE ") + sql.SQL(" AND ").join(bounds) if bounds else sql.SQL(""))
    buffer = io.BytesIO()
    with connect(source) as connection:
        try:
            connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            connection.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            with connection.cursor().copy(query) as copy:
                for block in copy:
                    buffer.write(block)
            connection.execute("COMMIT")
        except psycopg.Error as error:
            raise failure(source, "reading its snapshot", error) from None
    table = pa.schema([(c, pa.string()) for c in shape.columns]).empty_table() if not buffer.tell() else \
        pacsv.read_csv(io.BytesIO(buffer.getvalue()), read_options=pacsv.ReadOptions(column_names=list(shape.columns)),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in shape.columns},
                                             null_values=[""], strings_can_be_null=True,
                                             quoted_strings_can_be_null=False))
    rows = table.num_rows
    snapshot_columns = {OP: pa.repeat(pa.scalar("r"), rows), LSN: pa.repeat(pa.scalar(format_lsn(consistent_point)), rows),
                        POSITION: pa.repeat(pa.scalar(position(consistent_point, 0)), rows),
                        COMMIT_TIME: pa.nulls(rows, pa.timestamp("us", tz="UTC")),
                        BEFORE: pa.nulls(rows, pa.string()), UNCHANGED: pa.nulls(rows, pa.string())}
    for name, values in snapshot_columns.items():
        table = table.append_column(name, values)
    return stager.write([with_ingestion_columns(table, source, ingested_at, stager.run_id)], index)


def with_ingestion_columns(table: pa.Table, source: PostgresSource, ingested_at: datetime, run_id: str) -> pa.Table:
    """`table` with the source's name, the ingestion time and the run id on every row."""
    rows = table.num_rows
    if RESCUED_DATA not in table.column_names:
        table = table.append_column(RESCUED_DATA, pa.nulls(rows, pa.string()))
    table = table.append_column(SOURCE_FILE, pa.repeat(pa.scalar(source.qualified), rows))
    table = table.append_column(INGESTED_AT, pa.repeat(pa.scalar(ingested_at, pa.timestamp("us", tz="UTC")), rows))
    return table.append_column(RUN_ID, pa.repeat(pa.scalar(run_id), rows))


@ray.remote
def read_changes(source: PostgresSource, known: TableShape, stager: Stager, ingested_at: datetime) -> ChangeRead:
    """Stage the changes the slot holds, at most about `batch_changes` of them (whole transactions only), with the
    source's drift policy applied to every change of the table's shape against `known` (the bronze table's)."""
    with connect(source) as connection:
        try:
            current = connection.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert current is not None
            end = parse_lsn(current[0])
            decoder = Decoder(source.schema_name, source.table_name)
            messages = 0
            cursor = connection.execute(
                "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s, 'proto_version', '1', "
                "'publication_names', %s)", (source.slot_name, format_lsn(end), source.batch_changes,
                                             source.publication_name))
            for (message,) in cursor:
                decoder.feed(message)
                messages += 1
            types = sorted({pair for relation in decoder.batch.relations
                            for pair in zip(relation.type_oids, relation.type_modifiers, strict=True)})
            names = {(oid, modifier): name for oid, modifier, name in connection.execute(
                "SELECT o::int, m, format_type(o, m) FROM unnest(%s::oid[], %s::int[]) AS u(o, m)",
                ([t[0] for t in types], [t[1] for t in types])).fetchall()} if types else {}
        except psycopg.Error as error:
            raise failure(source, "reading its changes", error) from None
    batch = decoder.batch
    reached = end if messages < source.batch_changes else (batch.end_lsn or end)
    shapes = [TableShape(r.columns, {c: names.get(t, str(t[0])) for c, t in zip(
        r.columns, zip(r.type_oids, r.type_modifiers, strict=True), strict=True)}) for r in batch.relations]
    drifts, columns, types = _drifts(source, known, shapes, format_lsn(reached))
    staged = StagedFiles()
    if batch.rows and not (drifts and source.on_drift == "fail"):
        table = batch.table(list(columns))
        if batch.truncates:
            table = with_truncates_expanded(table, batch.relations[-1].key, stager.data_folder, stager.table)
        if drifts and source.on_drift == "rescue":
            table = apply_policy(table, SchemaDrift(source.qualified, added=tuple(
                c for c in table.column_names if not c.startswith("_") and c not in columns)), "rescue",
                source=source.qualified)
        staged = stager.write([with_ingestion_columns(table, source, ingested_at, stager.run_id)], 0)
    return ChangeRead(staged, columns, types, tuple(d.describe() for d in drifts), reached, batch.rows,
                      batch.truncates)


def _drifts(source: PostgresSource, known: TableShape, shapes: list[TableShape],
            reached: str) -> tuple[list[SchemaDrift], tuple[str, ...], dict[str, str]]:
    """Each change of the table's shape against the columns expected so far, and the bronze columns and types
    after the batch: `evolve` adds new columns (as does a first batch), the other policies keep the known ones."""
    columns, types = list(known.columns), dict(known.types)
    drifts = []
    for shape in shapes:
        drift = detect_drift(f"{source.qualified} (changes up to {reached})",
                             pa.schema([(c, pa.string()) for c in shape.columns]).empty_table(), columns, types,
                             shape.types)
        if columns and not drift.is_empty:
            drifts.append(drift)
        if source.on_drift == "evolve" or not columns:
            columns += [c for c in shape.columns if c not in columns]
        types.update({c: t for c, t in shape.types.items() if c in columns})
    return drifts, tuple(columns), types
