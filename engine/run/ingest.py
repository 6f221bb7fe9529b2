"""Ingesting a bronze table: the landing files not taken in yet, read in Ray tasks and committed once."""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime
from typing import Any

import pyarrow as pa

from engine.changes.recorded import DEFINITION_KEY
from engine.errors import IngestError
from engine.guard import guarded
from engine.ingest.batch import ingest_new_files
from engine.ingest.checkpoint import (
    TYPES_KEY,
    every_ingested_file,
    files_to_ingest,
    ingestion_checkpoint,
    known_shape,
)
from engine.ingest.discovery import discover
from engine.ingest.sources import FileSource
from engine.names import DELTA
from engine.pipeline import TableDefinition
from engine.recovery import restore_table
from engine.run.commits import ATTEMPT_KEY, attempt, commit_quarantine, discarded_on_conflict
from engine.run.outcome import TableOutcome
from engine.run.rebuilds import assess_definition
from engine.run.scope import RunScope
from engine.tables import delta, progress
from engine.tables.built_from import schema_version_of
from engine.tables.handle import TableHandle
from engine.tables.progress import FILES_KEY, SCHEMA_KEY

log = logging.getLogger("engine.runner")


def ingest(scope: RunScope, definition: TableDefinition, source: FileSource, run_started: datetime) -> TableOutcome:
    """Ingest the landing files of `source` that the table has not taken in (or the part of an append-only file
    that grew), in one commit with the checkpoint of the files it took in."""
    handle = scope.handle(definition.name)
    if definition.name in scope.reingest:
        empty_ingested(scope, definition, source)
    # The markers first: the commits of this work are refused if another run committed since they were read.
    transaction, quarantine_transaction = scope.transactions(handle)
    landed = discover(scope.layout.landing(source.directory), source)
    checkpoint = ingestion_checkpoint(handle.uri, handle.name, [f.name for f in landed], handle.store)
    new, changed = files_to_ingest(landed, checkpoint, source)
    details: dict[str, Any] = {"files_new": len(new), "files_seen": len(landed)}
    if changed:
        names = ", ".join(f.name for f in changed)
        if source.on_change == "fail":
            raise IngestError(
                f"table `{definition.name}`: {len(changed)} landing file(s) changed after they were ingested "
                f"({source.growth} files): {names}. Put the ingested content back and land the new content as "
                "new files, or declare the source `growth=\"append-only\"` if its files only grow at the end",
                table=definition.name, path=changed[0].uri if len(changed) == 1 else None)
        details["files_changed_after_ingestion"] = [f.name for f in changed]
        log.warning("table `%s`: %d landing file(s) changed after they were ingested and are not "
                    "ingested again: %s", definition.name, len(changed), names)
    if grown := [f.name for f in new if f.start]:
        details["files_grown"] = grown
    if not new:
        return TableOutcome(status="unchanged", details=details)
    assessment = assess_definition(scope, definition, None)
    if assessment.change is not None:
        details["definition"] = assessment.reason
        log.warning("table `%s`: %s", definition.name, assessment.reason)
    known_columns, known_types = known_shape(handle.uri, handle.name, handle.store)
    reingested = definition.name in scope.reingest
    retyped = [] if reingested else stored_types_differing(handle, source, definition.pii)
    if retyped:
        raise IngestError(
            f"table `{definition.name}`: {'; '.join(retyped)}; the table keeps the types it was ingested with. "
            f"Ingest every landing file again with the declared types (`medallion run PIPELINE --select "
            f"{definition.name} --full-refresh`), or declare the stored types", table=definition.name)
    batch = guarded(definition, lambda: ingest_new_files(
        new, source, scope.stager(definition, handle.uri), ingested_at=run_started,
        known_columns=known_columns, known_types=known_types, ray_options=definition.ray_options))
    if batch.drifts:
        details["schema_drift"] = [drift.describe() for drift in batch.drifts]
        log.warning("table `%s`: schema drift (%s): %s", definition.name, source.on_drift,
                    "; ".join(details["schema_drift"]))
    if batch.quarantined:
        details["files_quarantined"] = list(batch.quarantined)
        log.warning("table `%s`: %d landing file(s) quarantined whole in `%s`: %s", definition.name,
                    len(batch.quarantined), handle.quarantine, "; ".join(batch.quarantined))
        work = attempt({f.name: progress.file_code(f.fingerprint()) for f in new}, handle.latest_version())
        with discarded_on_conflict(handle.uri, batch.staged.data):
            commit_quarantine(scope, definition, batch.staged,
                              scope.commit_metadata(definition, **{ATTEMPT_KEY: work}), quarantine_transaction)
    staged = batch.staged
    added = [c for c in batch.schema.names if not c.startswith("_") and c not in known_columns]
    schema_version = schema_version_of(handle.uri, handle.name, handle.store) + (
        1 if added or not handle.exists() or (reingested and stored_types_differing(handle, source, definition.pii)) else 0)
    metadata = scope.commit_metadata(definition, **{
        FILES_KEY: list(batch.fingerprints), TYPES_KEY: batch.types, SCHEMA_KEY: schema_version,
        DEFINITION_KEY: assessment.commit_value(scope.run_id, None, reingested=reingested).to_metadata()})
    with discarded_on_conflict(handle.uri, staged.data):
        # A table emptied to be ingested again takes the declared types: an overwrite sets the new schema.
        version = handle.store.commit_files(handle.uri, staged.data, mode="overwrite" if reingested else "append",
                                            metadata=metadata,
                                            empty_schema=batch.schema, commit_empty=True, transaction=transaction)
    return TableOutcome(output_version=version, rows_in=staged.rows, rows_written=staged.rows,
                        rows_quarantined=staged.quarantined_rows, details=details)


def stored_types_differing(handle: TableHandle, source: FileSource, pii: Collection[str]) -> list[str]:
    """`column `c` is stored as T and declared as U` for each source column of an existing table whose stored
    type is not the one the source declares now (a string where it declares none); personal-data columns, stored
    as their protected form, are not compared."""
    if not handle.exists():
        return []
    schema, declared = handle.store.schema(handle.uri, handle.name), source.column_types
    stored = {f.name: pa.string() if pa.types.is_large_string(f.type) or pa.types.is_string_view(f.type) else f.type
              for f in schema if not f.name.startswith("_") and f.name not in pii}
    return [f"column `{name}` is stored as {kind} and declared as {declared.get(name, pa.string())}"
            for name, kind in stored.items() if kind != declared.get(name, pa.string())]


def empty_ingested(scope: RunScope, definition: TableDefinition, source: FileSource) -> None:
    """Before a full refresh of an ingested table, empty it and its quarantine, forgetting the files it took in,
    so that it ingests every landing file again with its current definition.

    Raises:
        IngestError: a landing file it ingested is gone (its rows would be lost), or it is no Delta table.
    """
    handle, table = scope.handle(definition.name), definition.name
    if not handle.exists():
        return
    if handle.store.name != DELTA:
        raise IngestError(f"table `{table}`: a full refresh of an ingested table needs a Delta table; "
                          "move the table away to ingest its landing files again", table=table)
    landed = {f.name for f in discover(scope.layout.landing(source.directory), source)}
    gone = sorted(every_ingested_file(handle.uri, table, handle.store) - landed)
    if gone:
        raise IngestError(
            f"table `{table}` cannot be ingested again in full: {len(gone)} landing file(s) it took in are gone "
            f"from {scope.layout.landing(source.directory)} (first: {gone[0]}), and their rows would be lost; "
            "put them back, or run without --full-refresh for this table", table=table)
    log.warning("table `%s`: emptied to ingest its %d landing file(s) again (full refresh)", table, len(landed))
    restore_table(handle.uri, -1, reason="full refresh: every landing file ingested again", run_id=scope.run_id)
    if delta.table_exists(handle.quarantine):
        delta.commit_files(handle.quarantine, [], mode="overwrite",
                           metadata=scope.commit_metadata(definition, full_refresh=True))
