"""Where each ingested table of a pipeline stands against its source (`medallion sources`): landing files taken
in and waiting, or a PostgreSQL table's WAL position, its slot's and the WAL the slot holds back, with the fix
when the slot no longer holds what the table still needs. Read from the tables' logs, the landing folders and the
database's catalog; no Ray."""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import Settings
from engine.errors import SourceError
from engine.ingest.checkpoint import files_to_ingest, ingestion_checkpoint
from engine.ingest.discovery import discover
from engine.ingest.postgres import database
from engine.ingest.postgres.pgoutput import format_lsn
from engine.ingest.postgres.source import PostgresSource
from engine.ingest.sources import FileSource
from engine.pipeline import Pipeline
from engine.run.ingest_database import recorded_position
from engine.tables.formats import TableFormats
from engine.tables.handle import TableHandle


@dataclass(frozen=True)
class SourceState:
    """One ingested table against its source.

    Attributes:
        table: the bronze table.
        kind: `files` or `postgres`.
        source: the landing folder, or `schema.table (slot)`.
        position: what the table took in (files, or the WAL position).
        waiting: what the source holds that it has not (files and bytes, or WAL bytes the slot holds back).
        state: `ok`, `behind`, or what is wrong.
        fix: what to do when something is wrong.
    """

    table: str
    kind: str
    source: str
    position: str
    waiting: str
    state: str
    fix: str = ""


def source_states(pipeline: Pipeline, settings: Settings) -> list[SourceState]:
    """The state of every ingested table of `pipeline` under the settings' root, in declaration order."""
    formats = TableFormats(settings, {n: d.table_format or settings.storage.table_format
                                      for n, d in pipeline.tables.items()})
    states = []
    for name, definition in pipeline.tables.items():
        handle = TableHandle.of(formats, name)
        if isinstance(definition.source, FileSource):
            states.append(_files_state(handle, definition.source))
        elif isinstance(definition.source, PostgresSource):
            states.append(_database_state(handle, definition.source))
    return states


def _files_state(handle: TableHandle, source: FileSource) -> SourceState:
    landed = discover(handle.layout.landing(source.directory), source)
    checkpoint = ingestion_checkpoint(handle.uri, handle.name, [f.name for f in landed], handle.store)
    new, changed = files_to_ingest(landed, checkpoint, source)
    waiting = f"{len(new)} file(s), {sum(f.size - f.start for f in new)} bytes"
    state = "changed files" if changed else "behind" if new else "ok"
    fix = "land changed content as new files (docs/sources.md)" if changed else ""
    return SourceState(handle.name, "files", f"landing/{source.directory}", f"{len(checkpoint)} file(s) taken in",
                       waiting, state, fix)


def _database_state(handle: TableHandle, source: PostgresSource) -> SourceState:
    recorded = recorded_position(handle, source)
    described = f"{source.qualified} (slot {source.slot_name})"
    position = format_lsn(recorded) if recorded is not None else "no snapshot yet"
    refresh = f"medallion run --full-refresh --select {handle.name}+"
    try:
        with database.connect(source) as connection:
            slot = database.slot_state(connection, source)
    except SourceError as error:
        return SourceState(handle.name, "postgres", described, position, "?", "unreachable", str(error))
    if slot is None:
        state, fix = ("no slot", "") if recorded is None else ("slot gone", refresh)
        return SourceState(handle.name, "postgres", described, position, "?", state, fix)
    waiting = f"{slot.lag_bytes} WAL bytes"
    if recorded is None:
        return SourceState(handle.name, "postgres", described, position, waiting, "no snapshot yet")
    if slot.wal_status == "lost" or slot.confirmed > recorded:
        return SourceState(handle.name, "postgres", described, position, waiting,
                           f"slot past the table ({format_lsn(slot.confirmed)})", refresh)
    return SourceState(handle.name, "postgres", described, position, waiting,
                       "behind" if slot.current > recorded else "ok")
