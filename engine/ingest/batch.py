"""Reading a batch of new landing files in parallel Ray tasks, with schema drift detected in file order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import ray
import ray.data

from engine.columns import INGESTED_AT, RESCUED_DATA, RUN_ID, SOURCE_FILE
from engine.ingest.drift import SchemaDrift, apply_policy, detect_drift
from engine.ingest.readers import json_field_types, parse_landing_text, read_text
from engine.ingest.sources import FileSource, LandingFile


@dataclass(frozen=True)
class FileShape:
    """The columns and JSON value types one landing file arrived with."""

    name: str
    columns: tuple[str, ...]
    types: dict[str, str]


@dataclass(frozen=True)
class IngestBatch:
    """New landing files read for one bronze table.

    Attributes:
        dataset: the files' records with the ingestion columns, drift policy applied.
        drifts: every file whose shape differed from what was expected before it, in file order.
        columns: the source columns known after this batch.
        types: the JSON value shape (`object`, `array` or `scalar`) per column known after this batch.
    """

    dataset: ray.data.Dataset
    drifts: tuple[SchemaDrift, ...]
    columns: tuple[str, ...]
    types: dict[str, str]

    @property
    def schema(self) -> pa.Schema:
        """The bronze schema of the known columns: every source column a string, then the engine's."""
        return pa.schema(
            [(column, pa.string()) for column in self.columns]
            + [(RESCUED_DATA, pa.string()), (SOURCE_FILE, pa.string()),
               (INGESTED_AT, pa.timestamp("us", tz="UTC")), (RUN_ID, pa.string())]
        )


def read_new_files(
    files: Sequence[LandingFile],
    source: FileSource,
    *,
    table: str,
    run_id: str,
    ingested_at: datetime,
    known_columns: Sequence[str],
    known_types: Mapping[str, str],
) -> IngestBatch:
    """Read `files` (one Ray task each), compare each with the columns expected so far, apply the policy.

    The expected columns are the source's declared ones, else the table's, else the first file's; under
    `evolve` without declared columns, what a file adds is expected from the next file on.

    Raises:
        SchemaDriftError: the source's policy is `fail` and a file drifted.
    """
    reads = [_read_file.remote(file, source, run_id, ingested_at) for file in files]
    try:
        shapes: list[FileShape] = ray.get([shape for _, shape in reads])
    except Exception:
        _settle([table_ref for table_ref, _ in reads])
        raise
    expected = list(source.columns or known_columns or (shapes[0].columns if shapes else ()))
    types = dict(known_types)
    drifts, tables = [], []
    for (table_ref, _), shape in zip(reads, shapes):
        if not shape.columns:
            tables.append(table_ref)
            continue
        drift = detect_drift(shape.name, _shape_table(shape), expected, types, shape.types)
        if not drift.is_empty:
            drifts.append(drift)
            if source.on_drift == "fail":
                apply_policy(_shape_table(shape), drift, "fail", source=table)
            if source.on_drift == "rescue":
                table_ref = _rescue.remote(table_ref, drift, table)
            elif source.columns is None:
                expected += [c for c in shape.columns if c not in expected]
        types.update({column: kind for column, kind in shape.types.items() if column not in types})
        tables.append(table_ref)
    return IngestBatch(ray.data.from_arrow_refs(tables), tuple(drifts), tuple(expected), types)


def _settle(refs: list[ray.ObjectRef]) -> None:
    """Wait for the outcome of every read after one failed, so that no task's error goes unobserved."""
    for ref in refs:
        try:
            ray.get(ref)
        except Exception:  # noqa: BLE001 - the first failure is already being raised
            continue


def _shape_table(shape: FileShape) -> pa.Table:
    return pa.schema([(column, pa.string()) for column in shape.columns]).empty_table()


@ray.remote(num_returns=2)
def _read_file(file: LandingFile, source: FileSource, run_id: str, ingested_at: datetime) -> tuple[pa.Table, FileShape]:
    text = read_text(file)
    table = parse_landing_text(text, source, file)
    types = {field: _shape_of(kind) for field, kind in json_field_types(text).items()} if source.format == "jsonl" else {}
    shape = FileShape(file.name, tuple(c for c in table.column_names if not c.startswith("_")), types)
    count = table.num_rows
    table = table.append_column(SOURCE_FILE, pa.array([file.name] * count, pa.string()))
    table = table.append_column(INGESTED_AT, pa.array([ingested_at] * count, pa.timestamp("us", tz="UTC")))
    return table.append_column(RUN_ID, pa.array([run_id] * count, pa.string())), shape


def _shape_of(json_type: str) -> str:
    """`object`, `array` or `scalar`: a number arriving as a string is a value problem for silver to judge
    row by row, while an object turning into a scalar changes how the field must be read."""
    return json_type if json_type in ("object", "array") else "scalar"


@ray.remote
def _rescue(table: pa.Table, drift: SchemaDrift, source: str) -> pa.Table:
    return apply_policy(table, drift, "rescue", source=source)
