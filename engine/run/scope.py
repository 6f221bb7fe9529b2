"""What every table of one run shares: the pipeline, the settings, the root's tables, and how this run writes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import ray.data
from deltalake.transaction import Transaction

from engine.changes.classify import ChangeCategory
from engine.config import Settings
from engine.governance import pii
from engine.governance.actor import audit_fields
from engine.governance.encryption import ColumnKey
from engine.governance.secrets import column_keys, pii_key
from engine.kinds import key_columns
from engine.layout import Layout
from engine.pipeline import Pipeline, TableDefinition
from engine.runlog import RunRecord
from engine.tables.formats import TableFormats
from engine.tables.handle import TableHandle
from engine.tables.staging import Stager


@dataclass
class RunScope:
    """One run (or backfill) of a pipeline's tables.

    Attributes:
        pipeline: the tables.
        settings: storage and run settings.
        formats: the store of every table of the root.
        run_id: the run's id.
        reason: why the tables are written (audit).
        force: rebuild tables whose inputs did not move, and read incremental inputs in full.
        full_refresh: rebuild the selected derived tables from their inputs alone.
        reingest: ingested tables emptied to ingest every landing file again.
        window: the days a backfill recomputes, None for a run.
        change_kind: what a definition change counts as, for every table or by table, instead of the engine.
    """

    pipeline: Pipeline
    settings: Settings
    formats: TableFormats
    run_id: str
    reason: str | None = None
    force: bool = False
    full_refresh: bool = False
    reingest: frozenset[str] = frozenset()
    window: tuple[dt.date, dt.date] | None = None
    change_kind: ChangeCategory | Mapping[str, ChangeCategory] | None = None
    _handles: dict[str, TableHandle] = field(default_factory=dict, repr=False)

    @property
    def layout(self) -> Layout:
        """Where the root's tables live."""
        return self.formats.layout

    @property
    def operation(self) -> str:
        """`run`, or `backfill` for a backfill (audit)."""
        return "run" if self.window is None else "backfill"

    def handle(self, table: str) -> TableHandle:
        """The handle of a layer table, resolved once per run."""
        if table not in self._handles:
            self._handles[table] = TableHandle.of(self.formats, table)
        return self._handles[table]

    def application(self, table: str) -> str:
        """The application id of this pipeline's commits to `table`: one per pipeline table, its version
        counting the table's commits."""
        return f"medallion/{self.pipeline.name}/{table}"

    def transactions(self, handle: TableHandle) -> tuple[Transaction, Transaction]:
        """The markers of this run's commits to the table and to its quarantine. Read before the work begins,
        so that the commits are refused when another run committed since."""
        application = self.application(handle.name)
        return handle.transaction(application), handle.quarantine_transaction(f"{application}/quarantine")

    def commit_metadata(self, definition: TableDefinition, **extra: Any) -> dict[str, Any]:
        """What every commit of this run to the table carries: run, pipeline, table, audit fields, `extra`."""
        return ({"run_id": self.run_id, "pipeline": self.pipeline.name, "table": definition.name}
                | audit_fields(self.operation, self.reason) | extra)

    def record(self, table: str, status: str, started_at: datetime, **values: Any) -> RunRecord:
        """The run record of a table of this run, finished now."""
        return RunRecord(run_id=self.run_id, pipeline=self.pipeline.name, table=table, status=status,
                         started_at=started_at, finished_at=datetime.now(UTC), operation=self.operation,
                         reason=self.reason, **values)

    def stager(self, definition: TableDefinition, folder: str,
               reference_keys: Mapping[str, pa.Array | ray.ObjectRef] | None = None) -> Stager:
        """The writer of the table's staged files under `folder` (and of its rejected rows)."""
        return Stager(folder, self.layout.quarantine(definition.name), self.settings.storage, self.run_id,
                      definition.name, definition.quality, reference_keys or {}, frozenset(definition.pii))

    def protected(self, definition: TableDefinition, output: ray.data.Dataset) -> ray.data.Dataset:
        """The table's rows with its personal-data columns tokenized, masked or encrypted as declared."""
        if not definition.pii:
            return output
        key = pii_key(self.settings.pii, f"table `{definition.name}` (personal-data columns "
                                         f"{', '.join(f'`{c}`' for c in definition.pii)})", self.layout.root)
        return output.map_batches(pii.protect, fn_kwargs={"columns": dict(definition.pii), "key": key,
                                                          "table": definition.name,
                                                          "column_key": self.column_key(definition),
                                                          "key_columns": key_columns(definition.kind)},
                                  batch_format="pyarrow")

    def column_key(self, definition: TableDefinition) -> ColumnKey | None:
        """The current column-encryption key, when the table declares a column `encrypt`."""
        encrypted = [column for column, action in definition.pii.items() if action == "encrypt"]
        if not encrypted:
            return None
        return column_keys(self.settings.encryption, f"table `{definition.name}` (encrypted columns "
                                                     f"{', '.join(f'`{c}`' for c in encrypted)})").current
