"""Ingesting a batch of new landing files in parallel Ray tasks, with schema drift detected in file order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import pyarrow as pa
import ray

from engine.columns import INGESTED_AT, RAW_FILE, REJECTED_REASON, RESCUED_DATA, RUN_ID, SOURCE_FILE
from engine.errors import UnreadableFileError
from engine.ingest.drift import SchemaDrift, apply_policy, detect_drift
from engine.ingest.readers import landing_bytes, read_records
from engine.ingest.sources import FileSource, LandingFile
from engine.ingest.typed import typed_columns
from engine.storage import parquet_dataset
from engine.tables.staging import StagedFiles, Stager


@dataclass(frozen=True)
class FileShape:
    """The columns and JSON value types one landing file arrived with."""

    name: str
    columns: tuple[str, ...]
    types: dict[str, str]


@dataclass(frozen=True)
class FileRead:
    """What the task reading one landing file did with it.

    Attributes:
        staged: its records staged as bronze files, or the file quarantined whole.
        shape: its columns and JSON value types (none when quarantined).
        end: the byte offset its ingestion ended at.
        unreadable: why it cannot be read at all, when it cannot (`UnreadableFileError`).
    """

    staged: StagedFiles
    shape: FileShape
    end: int
    unreadable: str | None = None


@dataclass(frozen=True)
class IngestBatch:
    """New landing files read and staged for one bronze table.

    Attributes:
        staged: the files' records with the ingestion columns, drift policy applied, as staged Parquet files.
        drifts: every file whose shape differed from what was expected before it, in file order.
        columns: the source columns known after this batch.
        types: the JSON value shape (`object`, `array` or `scalar`) per column known after this batch.
        fingerprints: the checkpoint entry of every file of the batch, quarantined ones included.
        quarantined: `<file>: <reason>` of every file quarantined whole, in file order.
        column_types: the Arrow type of each column the source declares typed; the others are strings.
    """

    staged: StagedFiles
    drifts: tuple[SchemaDrift, ...]
    columns: tuple[str, ...]
    types: dict[str, str]
    fingerprints: tuple[list[object], ...] = ()
    quarantined: tuple[str, ...] = ()
    column_types: Mapping[str, pa.DataType] = field(default_factory=dict)

    @property
    def schema(self) -> pa.Schema:
        """The bronze schema of the known columns: every source column a string unless declared typed, then
        the engine's."""
        return pa.schema(
            [(column, self.column_types.get(column, pa.string())) for column in self.columns]
            + [(RESCUED_DATA, pa.string()), (SOURCE_FILE, pa.string()),
               (INGESTED_AT, pa.timestamp("us", tz="UTC")), (RUN_ID, pa.string())]
        )


def ingest_new_files(
    files: Sequence[LandingFile],
    source: FileSource,
    stager: Stager,
    *,
    ingested_at: datetime,
    known_columns: Sequence[str],
    known_types: Mapping[str, str],
    ray_options: Mapping[str, Any] | None = None,
) -> IngestBatch:
    """Read and stage `files`, one Ray task each, then compare each with the columns expected so far and
    apply the source's drift policy. Each file's records go straight from its landing file to a staged
    Parquet file in the task that parsed them; only a file the `rescue` policy must change is staged again.

    The expected columns are the source's declared ones, else the table's, else the first file's; under
    `evolve` without declared columns, what a file adds is expected from the next file on. A file that
    cannot be read at all (`UnreadableFileError`) is staged whole to the quarantine under the source's
    `quarantine` policy.

    Raises:
        SchemaDriftError: the source's policy is `fail` and a file drifted; nothing stays staged.
        UnreadableFileError: the source's `on_unreadable` is `fail` and files cannot be read (all named);
            nothing stays staged.
    """
    table = stager.table
    tasks = [_ingest_file.options(**dict(ray_options or {})).remote(file, index, source, ingested_at, stager)
             for index, file in enumerate(files)]
    reads: list[FileRead] = stager.gather(tasks)
    bad = [(file, read) for file, read in zip(files, reads, strict=True) if read.unreadable]
    unreadable = tuple(f"{file.name}: {read.unreadable}" for file, read in bad)
    if unreadable and source.on_unreadable == "fail":
        for read in reads:
            stager.discard(read.staged)
        raise UnreadableFileError(
            f"source `{table}`: {len(unreadable)} landing file(s) cannot be read: {'; '.join(unreadable)}. "
            "Replace them with UTF-8 files with a usable header, or declare the source with `on_unreadable=\"quarantine\"` "
            "to ingest the other files", table=table, path=bad[0][0].uri if len(bad) == 1 else None)
    results = [(read.staged, read.shape) for read in reads]
    expected = list(source.columns or known_columns or (results[0][1].columns if results else ()))
    types = dict(known_types)
    drifts: list[SchemaDrift] = []
    staged: list[StagedFiles | ray.ObjectRef] = []
    for index, (files_staged, shape) in enumerate(results):
        if shape.columns:
            drift = detect_drift(shape.name, _shape_table(shape), expected, types, shape.types)
            if not drift.is_empty:
                drifts.append(drift)
                if source.on_drift == "fail":
                    for done, _ in results:
                        stager.discard(done)
                    apply_policy(_shape_table(shape), drift, "fail", source=table)
                if source.on_drift == "rescue":
                    files_staged = _restage.options(**dict(ray_options or {})).remote(
                        files_staged, drift, stager, len(files) + index)
                elif source.columns is None:
                    expected += [c for c in shape.columns if c not in expected]
            types.update({column: kind for column, kind in shape.types.items() if column not in types})
        staged.append(files_staged)
    restaged = iter(stager.gather([s for s in staged if isinstance(s, ray.ObjectRef)]))
    in_file_order = [s if isinstance(s, StagedFiles) else next(restaged) for s in staged]
    fingerprints = tuple(file.fingerprint(read.end) for file, read in zip(files, reads, strict=True))
    return IngestBatch(StagedFiles.combine(in_file_order), tuple(drifts), tuple(expected), types, fingerprints,
                       unreadable, source.column_types)


def _shape_table(shape: FileShape) -> pa.Table:
    return pa.schema([(column, pa.string()) for column in shape.columns]).empty_table()


@ray.remote
def _ingest_file(file: LandingFile, index: int, source: FileSource, ingested_at: datetime, stager: Stager) -> FileRead:
    raw, end = landing_bytes(file, source)
    try:
        table, json_types = read_records(raw, file, source)
    except UnreadableFileError as err:
        if source.on_unreadable == "fail":
            return FileRead(StagedFiles(), FileShape(file.name, (), {}), end, str(err))
        rejected = pa.table({REJECTED_REASON: pa.array([_quarantine_reason(file, end, err)], pa.string()),
                             RAW_FILE: pa.array([raw], pa.binary())})
        quarantine = replace(stager, quality=None, opaque=stager.opaque | {RAW_FILE})
        staged = quarantine.write([_with_ingestion_columns(rejected, file, ingested_at, stager.run_id)], index)
        return FileRead(staged, FileShape(file.name, (), {}), end, str(err))
    table = typed_columns(table, source.column_types)
    types = {name: _shape_of(kind) for name, kind in json_types.items()}
    shape = FileShape(file.name, tuple(c for c in table.column_names if not c.startswith("_")), types)
    return FileRead(stager.write([_with_ingestion_columns(table, file, ingested_at, stager.run_id)], index), shape, end)


def _with_ingestion_columns(table: pa.Table, file: LandingFile, ingested_at: datetime, run_id: str) -> pa.Table:
    """`table` with the landing file's name, the ingestion time and the run id on every row."""
    count = table.num_rows
    table = table.append_column(SOURCE_FILE, pa.repeat(pa.scalar(file.name, pa.string()), count))
    table = table.append_column(INGESTED_AT, pa.repeat(pa.scalar(ingested_at, pa.timestamp("us", tz="UTC")), count))
    return table.append_column(RUN_ID, pa.repeat(pa.scalar(run_id, pa.string()), count))


def _quarantine_reason(file: LandingFile, end: int, err: UnreadableFileError) -> str:
    """Why a file (or the bytes it grew by) was quarantined whole, and which of its bytes `_raw_file` holds."""
    part = "the whole file" if file.start == 0 else f"bytes {file.start} to {end}, appended since the last ingestion"
    return f"{err} ({part} quarantined in `{RAW_FILE}`)"


def _shape_of(json_type: str) -> str:
    """`object`, `array` or `scalar`: a number arriving as a string is a value problem for silver to judge
    row by row, while an object turning into a scalar changes how the field must be read."""
    return json_type if json_type in ("object", "array") else "scalar"


@ray.remote
def _restage(staged: StagedFiles, drift: SchemaDrift, stager: Stager, task: int) -> StagedFiles:
    """Stage again, with the `rescue` policy applied, the rows of one file staged as it arrived."""
    rows = parquet_dataset([f"{stager.data_folder}/{f.path}" for f in staged.data], format="parquet").to_table()
    stager.discard(staged)
    return stager.write([apply_policy(rows, drift, "rescue", source=stager.table)], task)
