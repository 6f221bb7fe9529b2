"""GDPR erasure: a data subject's rows out of every table, change log, quarantine, landing file and the
online store, physically.

A row is the subject's when its subject column holds the id in any spelling the silver parser reads as it
(`engine/governance/subject.py`). For each Delta table holding a declared subject column, the live files with
the subject's rows are rewritten without them in one commit (`replace_slice`); then the files that held the
subject, live before or removed by earlier commits but not vacuumed yet, are deleted at once whatever the
retention; statistics of every file the table no longer references are stripped from its commit files, and
checkpoints are rewritten (`engine/tables/deltalog.py`). The audit keeps a keyed hash of the id, never the
id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import ray

from engine.config import Settings
from engine.governance import pii
from engine.governance.access import authorize
from engine.governance.actor import audit_fields
from engine.governance.landing import erase_from_landing
from engine.governance.secrets import pii_key
from engine.governance.subject import SubjectId
from engine.ingest.checkpoint import ingested_files
from engine.ingest.sources import FileSource
from engine.layout import Layout
from engine.pipeline import Pipeline
from engine.run.outcome import new_run_id
from engine.runlog import RunRecord, append_records
from engine.storage import filesystem_of
from engine.tables import delta, deltalog
from engine.tables.delta_files import add_actions
from engine.tables.progress import FILES_KEY
from engine.tables.replace import Slice, replace_slice

if TYPE_CHECKING:
    from feast import FeatureStore



@dataclass(frozen=True)
class Target:
    """A Delta table that may hold a subject's rows.

    Attributes:
        name: the table (`silver.customers`, `quarantine.silver.customers`, `changes.gold.dim_customer`, ...).
        uri: where it lives.
        column: the column holding the subject's id.
        pipeline: the pipeline that declares it.
    """

    name: str
    uri: str
    column: str
    pipeline: str


@dataclass(frozen=True)
class TableErasure:
    """What an erasure did to one table.

    Attributes:
        table: the target's name.
        version: the version committed, None when the table held none of the subject's rows.
        rows_removed: the subject's rows in the live table.
        files_deleted: data files physically deleted (live ones rewritten, and older unreferenced ones).
    """

    table: str
    version: int | None
    rows_removed: int
    files_deleted: int


@dataclass
class ErasureReport:
    """The outcome of one erasure.

    Attributes:
        run_id: the erasure's run id (in commits and run records).
        subject: the keyed hash of the subject's id, as audited.
        tables: one entry per table that held the subject's rows.
        landing_files: landing files rewritten without the subject's records.
        online_views: feature views whose online rows of the subject were deleted.
    """

    run_id: str
    subject: str
    tables: list[TableErasure] = field(default_factory=list)
    landing_files: list[str] = field(default_factory=list)
    online_views: list[str] = field(default_factory=list)


def subject_hash(settings: Settings, subject_id: str) -> str:
    """The keyed hash of a subject id that the audit keeps instead of the id (a PII token)."""
    key = pii_key(settings.pii, "erasure (its audit keeps a keyed hash of the subject id)", settings.storage.root)
    return str(pii.tokenize(pa.array([subject_id]), key)[0].as_py())


def targets(layout: Layout, pipelines: Iterable[Pipeline]) -> list[Target]:
    """Every table declaring a subject column, with its quarantine and change log, and the Feast
    materialization state tables keyed by such a column."""
    found, columns = [], {}
    for pipeline in pipelines:
        for definition in pipeline.tables.values():
            if definition.subject is None:
                continue
            columns[definition.subject] = pipeline.name
            name, column = definition.name, definition.subject
            found += [Target(name, layout.table(name), column, pipeline.name),
                      Target(f"quarantine.{name}", layout.quarantine(name), column, pipeline.name),
                      Target(f"changes.{name}", layout.changes(name), column, pipeline.name)]
    for uri in deltalog.delta_tables(layout.feature_state()):
        schema = delta.open_table(uri, uri).schema().to_arrow()
        for column, pipeline_name in columns.items():
            if column in pa.schema(schema).names:
                found.append(Target(f"features.{uri.rsplit('/', 1)[-1]}", uri, column, pipeline_name))
    return [t for t in found if delta.table_exists(t.uri)]


def erase_subject(
    settings: Settings,
    pipelines: Sequence[Pipeline],
    subject_id: str,
    *,
    reason: str | None = None,
    store: FeatureStore | None = None,
) -> ErasureReport:
    """Erase every row of the data subject `subject_id` under the storage root (see the module doc), and
    its records from the landing files and from `store`'s online store; audited in commits and run records.

    Raises:
        GovernanceError: `subject_id` is blank or, where the subject column holds integers, no integer; no
            personal-data key is configured (the audit needs it); or a landing file cannot be rewritten.
        AccessDenied: the actor may not manage every table the subject's rows are in.
    """
    layout = Layout.at(settings.storage.root)
    found = targets(layout, pipelines)
    subject = SubjectId.parse(subject_id, integer=any(_integer_column(t) for t in found))
    report = ErasureReport(new_run_id(), subject_hash(settings, subject.text))
    audit = audit_fields("erase", reason)
    started = datetime.now(UTC)
    authorize(settings.access, "manage", [t.name for t in found], "an erasure")
    fingerprints = _erase_landing(layout, pipelines, subject, report)
    records = []
    for target in found:
        metadata = {"run_id": report.run_id, "pipeline": target.pipeline, "table": target.name,
                    "subject": report.subject} | audit
        landed = fingerprints.get(target.name, [])
        ingested = ingested_files(target.uri, target.name, [f[0] for f in landed]) if landed else {}
        rewritten = [f for f in landed if f[0] in ingested]
        if rewritten:
            metadata[FILES_KEY] = rewritten
        erased = erase_table(target, subject, settings, report.run_id, metadata)
        if erased is None:
            continue
        report.tables.append(erased)
        records.append(RunRecord(
            run_id=report.run_id, pipeline=target.pipeline, table=target.name, status="succeeded",
            started_at=started, finished_at=datetime.now(UTC), output_version=erased.version,
            details={"subject": report.subject, "rows_removed": erased.rows_removed,
                     "files_deleted": erased.files_deleted}, operation="erase", reason=audit["reason"]))
    if store is not None:
        from engine.governance.online import erase_entity

        for column in {t.column for t in found}:
            report.online_views += erase_entity(store, column, subject.text)
    append_records(layout.runs(), records)
    return report


def erase_table(target: Target, subject: SubjectId, settings: Settings, run_id: str,
                metadata: dict[str, Any]) -> TableErasure | None:
    """Remove the subject's rows (its id in any spelling silver parses to it) from one table and physically
    delete every file that held them; strip the statistics of every file the table no longer references from
    its log (files vacuumed earlier may have held the subject too). None when the table has no such column or
    held none of the subject's rows (a landing checkpoint update in `metadata` is still committed)."""
    table = delta.open_table(target.uri, target.name)
    schema = pa.schema(table.schema().to_arrow())
    if target.column not in schema.names:
        return None
    live = set(_live_paths(target.uri, target.name))
    unreferenced = [p for p in deltalog.logged_paths(target.uri) - live if _exists(target.uri, p)]
    column = schema.field(target.column)
    paths = [*live, *unreferenced]
    matched = dict(zip(paths, ray.get([_subject_values.remote(target.uri, p, column, subject) for p in paths])))
    rows = sum(len(matched[p]) for p in live)
    version = None
    if rows:
        selector = pc.field(target.column).isin(pc.unique(pa.chunked_array([matched[p] for p in live], column.type)))
        where = Slice(selector, target.column, subject.value, subject.value) \
            if pa.types.is_integer(column.type) and isinstance(subject.value, int) else Slice(selector)
        version = replace_slice(target.uri, target.name, where, [], storage=settings.storage, prefix=run_id,
                                metadata=metadata).version
    elif FILES_KEY in metadata:
        version = delta.commit_files(target.uri, [], mode="append", metadata=metadata, commit_empty=True)
    held = {p for p, values in matched.items() if len(values)}
    remaining = set(_live_paths(target.uri, target.name))
    deleted = deltalog.delete_data_files(target.uri, held - remaining)
    deltalog.strip_stats(target.uri, paths=deltalog.logged_paths(target.uri) - remaining)
    deltalog.refresh_checkpoints(target.uri)
    if version is None and not held:
        return None
    return TableErasure(target.name, version, rows, deleted)


def _erase_landing(layout: Layout, pipelines: Sequence[Pipeline], subject: SubjectId,
                   report: ErasureReport) -> dict[str, list[list[Any]]]:
    """Rewrite the landing files of ingested tables with a subject; the new fingerprints of each table's
    rewritten files, recorded in its erase commit so that the ingestion checkpoint does not take them for
    changed files."""
    fingerprints = {}
    for pipeline in pipelines:
        for definition in pipeline.tables.values():
            if not isinstance(definition.source, FileSource) or definition.subject is None:
                continue
            folder = layout.landing(definition.source.directory)
            rewritten = erase_from_landing(folder, definition.source, definition.subject, subject)
            report.landing_files += [f"{definition.source.directory}/{r.file.name}" for r in rewritten]
            if rewritten:
                fingerprints[definition.name] = [r.file.fingerprint() for r in rewritten]
    return fingerprints


def _integer_column(target: Target) -> bool:
    """Whether the target stores its subject column as integers (silver and gold do; bronze keeps text)."""
    schema = pa.schema(delta.open_table(target.uri, target.name).schema().to_arrow())
    return target.column in schema.names and pa.types.is_integer(schema.field(target.column).type)


@ray.remote
def _subject_values(uri: str, path: str, column: pa.Field, subject: SubjectId) -> pa.Array:
    """The values of `column` in one data file that are the subject's id (one per row, as stored)."""
    values = pads.dataset(f"{uri}/{path}", schema=pa.schema([column]), format="parquet").to_table().column(0)
    return values.filter(subject.matches(values)).combine_chunks().cast(column.type)


def _live_paths(uri: str, table: str) -> list[str]:
    return add_actions(delta.open_table(uri, table)).column("path").to_pylist()


def _exists(uri: str, path: str) -> bool:
    filesystem, location = filesystem_of(f"{uri}/{path}")
    return filesystem.get_file_info(location).type == pafs.FileType.File
