"""Ingesting a bronze table from a PostgreSQL source: the first run takes a consistent snapshot, read by key ranges
in Ray tasks; every later run takes the changes since, read and staged in a Ray task. Each batch is committed with
the WAL position it reached, and only then is the replication slot advanced, so that a run killed anywhere and run
again takes in every change exactly once (`docs/sources.md`)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import ray

from engine.changes.recorded import DEFINITION_KEY
from engine.errors import SchemaDriftError, SourceError
from engine.guard import guarded
from engine.ingest.checkpoint import TYPES_KEY, known_shape
from engine.ingest.postgres import database
from engine.ingest.postgres.pgoutput import format_lsn
from engine.ingest.postgres.read import (
    ChangeRead,
    TableShape,
    bronze_schema,
    key_ranges,
    read_changes,
    read_snapshot,
    table_shape,
)
from engine.ingest.postgres.source import PostgresSource
from engine.names import DELTA
from engine.pipeline import TableDefinition
from engine.recovery import restore_table
from engine.run.commits import discarded_on_conflict
from engine.run.outcome import TableOutcome
from engine.run.rebuilds import assess_definition
from engine.run.scope import RunScope
from engine.tables import delta, progress
from engine.tables.built_from import schema_version_of
from engine.tables.handle import TableHandle
from engine.tables.progress import SCHEMA_KEY, SOURCE_KEY
from engine.tables.staging import StagedFiles

log = logging.getLogger("engine.runner")


def recorded_position(handle: TableHandle, source: PostgresSource) -> int | None:
    """The WAL position the table's ingestion from the source reached, None before its first snapshot.

    Raises:
        SourceError: the table was ingested through another replication slot (the source's slot was renamed).
    """
    if not handle.exists():
        return None
    value = handle.store.last_commit_value(handle.uri, handle.name, SOURCE_KEY)
    if value is not None and value.get("slot") != source.slot_name:
        raise SourceError(
            f"table `{handle.name}` took in its changes through replication slot `{value.get('slot')}`, and its source "
            f"now names slot `{source.slot_name}`, which knows nothing of them; name the old slot again, or run "
            f"`medallion run --full-refresh --select {handle.name}+` to take a new snapshot through the new one",
            table=handle.name)
    if value is not None:
        return int(value["lsn"])
    if handle.store.name == DELTA and not handle.store.history_complete(handle.uri):
        return progress.carried_source_position(delta.open_table(handle.uri, handle.name), source.slot_name)
    return None


def ingest_database(scope: RunScope, definition: TableDefinition, source: PostgresSource,
                    run_started: datetime) -> TableOutcome:
    """Take in what the source holds that the table has not: its snapshot on the first run, its changes after."""
    handle = scope.handle(definition.name)
    if handle.store.name != DELTA:
        raise SourceError(f"table `{definition.name}`: the bronze table of a PostgreSQL source is a Delta table (its "
                          "WAL position rides in Delta commits); declare it with table_format=\"delta\"",
                          table=definition.name)
    if definition.name in scope.reingest:
        _empty_for_snapshot(scope, definition, source, handle)
    transaction, _ = scope.transactions(handle)
    recorded = recorded_position(handle, source)
    with database.connect(source) as connection:
        keys = database.check_server(connection, source)
        state = database.slot_state(connection, source)
        if recorded is None:
            return _snapshot(scope, definition, source, handle, keys, state is not None, run_started, transaction)
        if state is None:
            raise SourceError(
                f"table `{definition.name}`: replication slot `{source.slot_name}` of source `{source.qualified}` is "
                f"gone, and with it the changes since {format_lsn(recorded)}; run `medallion run --full-refresh "
                f"--select {definition.name}` to take a new snapshot", table=definition.name)
        if state.wal_status == "lost" or state.confirmed > recorded:
            raise SourceError(
                f"table `{definition.name}`: replication slot `{source.slot_name}` is at {format_lsn(state.confirmed)}"
                f", past {format_lsn(recorded)} where the table's ingestion stopped (its changes in between were "
                "consumed elsewhere or the WAL was removed); run `medallion run --full-refresh --select "
                f"{definition.name}` to take a new snapshot", table=definition.name)
        # A run that committed but died before advancing the slot: the changes up to `recorded` are in the table.
        database.advance_slot(connection, source, recorded)
    lagging = _lagging(definition, source, state)
    known_columns, known_types = known_shape(handle.uri, handle.name, handle.store)
    stager = scope.stager(definition, handle.uri)
    read: ChangeRead = guarded(definition, lambda: ray.get(read_changes.options(**definition.ray_options).remote(
        source, TableShape(tuple(known_columns), known_types), stager, run_started)))
    details: dict[str, Any] = {"changes": read.rows, "position": format_lsn(read.position), **lagging}
    if read.drifts:
        details["schema_drift"] = list(read.drifts)
        log.warning("table `%s`: schema drift (%s): %s", definition.name, source.on_drift, "; ".join(read.drifts))
        if source.on_drift == "fail":
            raise SchemaDriftError(
                f"table `{definition.name}`: source table `{source.qualified}` changed its columns: "
                f"{'; '.join(read.drifts)}. Choose on_drift=\"evolve\" (widen bronze) or \"rescue\" (keep new "
                f"columns in `_rescued_data`), or run `medallion run --full-refresh --select {definition.name}`",
                table=definition.name)
    if not read.rows:
        if read.position - recorded < source.release_wal_bytes:
            return TableOutcome(status="unchanged", details=details)
        metadata = scope.commit_metadata(definition, **{SOURCE_KEY: _position(source, read.position)})
        handle.store.commit_files(handle.uri, [], mode="append", metadata=metadata, commit_empty=True,
                                  transaction=transaction)
        _advance(source, read.position)
        return TableOutcome(status="unchanged", details=details)
    if read.truncates:
        details["truncates"] = read.truncates
        log.warning("table `%s`: source table `%s` was truncated %d time(s); recorded as rows with `_op` = 't'",
                    definition.name, source.qualified, read.truncates)
    assessment = assess_definition(scope, definition, None)
    added = [c for c in read.columns if c not in known_columns]
    schema_version = schema_version_of(handle.uri, handle.name, handle.store) + (1 if added else 0)
    metadata = scope.commit_metadata(definition, **{
        SOURCE_KEY: _position(source, read.position), TYPES_KEY: read.types, SCHEMA_KEY: schema_version,
        DEFINITION_KEY: assessment.commit_value(scope.run_id, None).to_metadata()})
    with discarded_on_conflict(handle.uri, read.staged.data):
        version = handle.store.commit_files(handle.uri, read.staged.data, mode="append", metadata=metadata,
                                            empty_schema=bronze_schema(read.columns), transaction=transaction)
    _advance(source, read.position)
    return TableOutcome(output_version=version, rows_in=read.staged.rows, rows_written=read.staged.rows,
                        details=details)


def _snapshot(scope: RunScope, definition: TableDefinition, source: PostgresSource, handle: TableHandle,
              keys: tuple[str, ...], slot_exists: bool, run_started: datetime, transaction: Any) -> TableOutcome:
    """The first ingestion: a new slot and the table's rows in the snapshot it exports, read in parallel."""
    with database.connect(source) as connection:
        database.ensure_publication(connection, source)
        if slot_exists:  # left by a first snapshot that did not commit
            log.warning("table `%s`: replication slot `%s` holds no committed snapshot; it is made again",
                        definition.name, source.slot_name)
            database.drop_slot(connection, source)
    stager = scope.stager(definition, handle.uri)
    with database.connect(source, replication=True) as replication:
        consistent_point, snapshot = database.create_slot(replication, source)
        with database.connect(source) as connection:
            connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            connection.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            shape = table_shape(connection, source)
            ranges = key_ranges(connection, source, keys[0])
            connection.execute("COMMIT")
        tasks = read_snapshot(source, snapshot, shape, keys[0], ranges, consistent_point, stager, run_started,
                              dict(definition.ray_options))
        parts: list[StagedFiles] = guarded(definition, lambda: stager.gather(tasks))
    staged = StagedFiles.combine(parts)
    assessment = assess_definition(scope, definition, None)
    metadata = scope.commit_metadata(definition, **{
        SOURCE_KEY: _position(source, consistent_point), TYPES_KEY: shape.types,
        SCHEMA_KEY: schema_version_of(handle.uri, handle.name, handle.store) + 1,
        DEFINITION_KEY: assessment.commit_value(scope.run_id, None,
                                                reingested=definition.name in scope.reingest).to_metadata()})
    with discarded_on_conflict(handle.uri, staged.data):
        version = handle.store.commit_files(handle.uri, staged.data, mode="append", metadata=metadata,
                                            empty_schema=bronze_schema(shape.columns), commit_empty=True,
                                            transaction=transaction)
    details = {"snapshot_rows": staged.rows, "snapshot_tasks": len(ranges), "position": format_lsn(consistent_point)}
    return TableOutcome(output_version=version, rows_in=staged.rows, rows_written=staged.rows, details=details)


def _lagging(definition: TableDefinition, source: PostgresSource, state: database.SlotState) -> dict[str, Any]:
    """The run record's note, and a warning, when the slot holds back more WAL than the server keeps for certain
    (`wal_status` `extended` or `unreserved`: past `max_wal_size`, or about to lose what it needs)."""
    if state.wal_status not in ("extended", "unreserved"):
        return {}
    log.warning("table `%s`: replication slot `%s` holds back %d bytes of WAL (%s); run the pipeline more often or "
                "raise max_slot_wal_keep_size, before the server removes changes the table has not taken in",
                definition.name, source.slot_name, state.lag_bytes, state.wal_status)
    return {"slot_wal_status": state.wal_status, "slot_lag_bytes": state.lag_bytes}


def _position(source: PostgresSource, lsn: int) -> dict[str, Any]:
    return {"slot": source.slot_name, "lsn": lsn}


def _advance(source: PostgresSource, lsn: int) -> None:
    """Let the slot release what the committed batch took in; a failure only delays that to the next run."""
    try:
        with database.connect(source) as connection:
            database.advance_slot(connection, source, lsn)
    except Exception as error:  # noqa: BLE001 - the batch is committed; the next run advances the slot
        log.warning("source `%s`: the replication slot could not be advanced now (%s); the next run does it",
                    source.qualified, error)


def _empty_for_snapshot(scope: RunScope, definition: TableDefinition, source: PostgresSource,
                        handle: TableHandle) -> None:
    """Before a full refresh: drop the slot and empty the table, so that the run takes a new snapshot."""
    with database.connect(source) as connection:
        database.drop_slot(connection, source)
    if handle.exists():
        log.warning("table `%s`: emptied to take a new snapshot of `%s` (full refresh)", definition.name,
                    source.qualified)
        restore_table(handle.uri, -1, reason="full refresh: a new snapshot of the source", run_id=scope.run_id)
