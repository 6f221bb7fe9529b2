"""What a run did: one `TableOutcome` per table as it is built, and the `RunResult` of the whole run."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from engine.runlog import RunRecord

if TYPE_CHECKING:
    from engine.features.materialize import MaterializationReport
    from engine.maintenance.due import Done


@dataclass(frozen=True)
class TableOutcome:
    """What building or ingesting one table did; its run record is made from it.

    Attributes:
        status: `succeeded`, or `unchanged` when nothing new was written.
        output_version: the version committed, None when nothing was committed.
        input_versions: the version read of every upstream table.
        rows_in: rows read from the inputs (landing records for an ingested table).
        rows_written: rows applied to the table.
        rows_quarantined: rows sent to the table's quarantine.
        rows_duplicate: incoming rows dropped as older changes of a key seen in the same run.
        details: anything else worth keeping (merge metrics, files ingested, ...).
    """

    status: str = "succeeded"
    output_version: int | None = None
    input_versions: dict[str, int | None] = field(default_factory=dict)
    rows_in: int = 0
    rows_written: int = 0
    rows_quarantined: int = 0
    rows_duplicate: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def replace(self, **values: Any) -> TableOutcome:
        """This outcome with `values` instead."""
        return dataclasses.replace(self, **values)

    def with_details(self, **details: Any) -> TableOutcome:
        """This outcome with `details` added to its details."""
        return dataclasses.replace(self, details=self.details | details)

    def record_values(self) -> dict[str, Any]:
        """The fields of the run record it fills, status apart."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "status"}


@dataclass
class RunResult:
    """The outcome of one run.

    Attributes:
        run_id: the run's id.
        pipeline: the pipeline's name.
        records: one record per table run, in execution order.
        stopped: the run was asked to stop before every selected table was run.
        maintenance: the maintenance done after the run (`maintenance.after_runs`).
        materialized: the feature views materialized after the run (`features.materialize_after_runs`).
        seconds: how long the tables took, the hooks after the run apart.
    """

    run_id: str
    pipeline: str
    records: list[RunRecord] = field(default_factory=list)
    stopped: bool = False
    maintenance: list[Done] = field(default_factory=list)
    materialized: list[MaterializationReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def committed(self) -> list[str]:
        """The tables the run committed new rows or changes to."""
        return [r.table for r in self.records if r.status == "succeeded"]

    @property
    def succeeded(self) -> bool:
        """True when no table failed or was skipped."""
        return all(r.status in ("succeeded", "unchanged") for r in self.records)

    @property
    def status(self) -> str:
        """`stopped` (asked to stop, nothing failed), `succeeded` or `failed`."""
        return "stopped" if self.stopped and self.succeeded else "succeeded" if self.succeeded else "failed"

    def failures(self) -> list[RunRecord]:
        """Records of failed tables."""
        return [r for r in self.records if r.status == "failed"]


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
