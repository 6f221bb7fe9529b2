"""Writing a table's new rows as Parquet files in parallel tasks, without committing them.

Rows carrying a `_rejected_reason` go to the quarantine folder instead. The driver then commits all
files of a table in one Delta transaction (see `engine.tables.delta`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.block import Block, BlockAccessor
from ray.data.datasource.datasink import Datasink, WriteResult

from engine.arrow import to_storage, unify
from engine.columns import REJECTED_REASON, RESCUED_DATA, RUN_ID
from engine.config import StorageSettings
from engine.quality.checks import Quality
from engine.quality.results import CheckResult, combine_results
from engine.quality.validate import validate_batch
from engine.tables.files import DataFile, RollingParquetWriter, discard_files


@dataclass(frozen=True)
class StagedFiles:
    """Files written by one or more write tasks.

    Attributes:
        data: files of accepted rows, under the data folder.
        quarantine: files of rejected rows, under the quarantine folder.
        checks: row-level check results, one per check, summed over every task.
    """

    data: tuple[DataFile, ...] = ()
    quarantine: tuple[DataFile, ...] = ()
    checks: tuple[CheckResult, ...] = ()

    @property
    def rows(self) -> int:
        """Accepted rows."""
        return sum(f.num_rows for f in self.data)

    @property
    def quarantined_rows(self) -> int:
        """Rejected rows."""
        return sum(f.num_rows for f in self.quarantine)

    @staticmethod
    def combine(parts: Iterable[StagedFiles]) -> StagedFiles:
        """All files of `parts`."""
        parts = list(parts)
        return StagedFiles(
            data=tuple(f for p in parts for f in p.data),
            quarantine=tuple(f for p in parts for f in p.quarantine),
            checks=tuple(combine_results([c for p in parts for c in p.checks])),
        )


def data_schema(files: Iterable[DataFile]) -> pa.Schema | None:
    """The unified schema of `files`, or None when there are none."""
    schemas = [f.schema for f in files]
    return unify(schemas) if schemas else None


def split_rejected(table: pa.Table, run_id: str) -> tuple[pa.Table, pa.Table]:
    """Accepted rows, and rejected rows with their reason and the id of the rejecting run.

    When a table function rejects rows, accepted rows lose the reason and `_rescued_data` columns: raw
    text of unparseable records belongs with the rejected rows only.
    """
    if REJECTED_REASON not in table.column_names:
        return table, table.slice(0, 0)
    accepted = pc.is_null(table.column(REJECTED_REASON))
    rejected = table.filter(pc.invert(accepted))
    if RUN_ID in rejected.column_names:
        rejected = rejected.drop_columns([RUN_ID])
    rejected = rejected.append_column(RUN_ID, pa.repeat(pa.scalar(run_id, pa.string()), rejected.num_rows))
    dropped = [c for c in (REJECTED_REASON, RESCUED_DATA) if c in table.column_names]
    return table.filter(accepted).drop_columns(dropped), rejected


@dataclass(frozen=True)
class Stager:
    """Writes a table's new rows to rolling Parquet files, routing rejected rows to quarantine.

    Attributes:
        data_folder: where accepted rows go.
        quarantine_folder: where rejected rows go.
        storage: file size and compression.
        run_id: the run writing; it prefixes file names and tags quarantined rows.
        table: the table's name, for check results.
        quality: row-level checks applied to every batch.
        reference_keys: key values of referenced tables, for reference checks, or their references in the object
            store (fetched by the write task).
        opaque: columns kept out of file statistics (personal data).
    """

    data_folder: str
    quarantine_folder: str
    storage: StorageSettings
    run_id: str
    table: str = ""
    quality: Quality | None = None
    reference_keys: Mapping[str, pa.Array | ray.ObjectRef] = field(default_factory=dict)
    opaque: frozenset[str] = frozenset()

    def write(self, tables: Iterable[pa.Table], task: int) -> StagedFiles:
        """Stage `tables`, the batches of one task numbered `task` (which names its files). An empty batch has
        nothing to check or write, and may lack columns: Ray Data hands functions of empty inputs such batches."""
        prefix = f"{self.run_id}-{task:05d}"
        data = RollingParquetWriter(self.data_folder, self.storage, prefix, self.opaque)
        quarantine = RollingParquetWriter(self.quarantine_folder, self.storage, prefix, self.opaque)
        checks: list[CheckResult] = []
        references = {name: ray.get(keys) if isinstance(keys, ray.ObjectRef) else keys
                      for name, keys in self.reference_keys.items()}
        for table in tables:
            if table.num_rows == 0:
                continue
            if self.quality is not None:
                table, results = validate_batch(table, self.quality, self.table, references)
                checks.extend(results)
            accepted, rejected = split_rejected(to_storage(table), self.run_id)
            data.write(accepted)
            quarantine.write(rejected)
        return StagedFiles(tuple(data.close()), tuple(quarantine.close()), tuple(combine_results(checks)))

    def discard(self, staged: StagedFiles) -> None:
        """Delete files this stager wrote that will never be committed."""
        discard_files(self.data_folder, staged.data)
        discard_files(self.quarantine_folder, staged.quarantine)

    def gather(self, refs: list[ray.ObjectRef]) -> list[Any]:
        """The results of the tasks `refs` that staged with this stager (`StagedFiles`, or results holding them
        as `staged`); when one task failed, wait for every other, discard what they staged, and raise the failure,
        so that no task's error goes unobserved and no staged file is left behind."""
        try:
            return ray.get(refs)
        except Exception:
            for ref in refs:
                try:
                    done = ray.get(ref)
                except Exception:  # noqa: BLE001 - the first failure is already being raised
                    continue
                self.discard(done if isinstance(done, StagedFiles) else done.staged)
            raise


@dataclass
class StagingDatasink(Datasink[StagedFiles]):
    """A Ray Data sink staging each write task's blocks; `result` holds every file once the write ends."""

    stager: Stager
    result: StagedFiles = field(default_factory=StagedFiles)

    def write(self, blocks: Iterable[Block], ctx: object) -> StagedFiles:
        return self.stager.write((BlockAccessor.for_block(block).to_arrow() for block in blocks),
                                 getattr(ctx, "task_idx", 0))

    def on_write_complete(self, write_result: WriteResult[StagedFiles]) -> None:
        self.result = StagedFiles.combine(r for r in write_result.write_returns if r is not None)

    def get_name(self) -> str:
        return "StageTableFiles"
