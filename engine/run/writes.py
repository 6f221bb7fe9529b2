"""One write strategy per write kind: where a table's rows are staged, and how they are committed.

`write_strategy(kind)` selects the strategy once per table; the builder stages the function's output where the
strategy says, checks it, and hands it to `commit`, which returns the table's `TableOutcome`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray.data
from deltalake.transaction import Transaction

from engine.guard import guarded
from engine.kinds import SCD2, AnyKind, Append, Merge, Overwrite, RecomputeKeys
from engine.pipeline import TableDefinition
from engine.run.commits import discarded_on_conflict, schema_of
from engine.run.outcome import TableOutcome
from engine.run.scope import RunScope
from engine.storage import delete_tree
from engine.tables import scd2
from engine.tables.files import ChangeFiles, discard_files
from engine.tables.formats import DeltaStore, TableStore
from engine.tables.handle import TableHandle
from engine.tables.replace import Slice
from engine.tables.staging import StagedFiles


@dataclass(frozen=True)
class StagedWrite:
    """A table's checked rows, ready to commit.

    Attributes:
        scope: the run.
        definition: the table.
        handle: the table's handle.
        output: the function's output (its schema makes an empty table's schema).
        staged: the staged data files and rejected rows.
        folder: where the data files were staged.
        metadata: what the commit carries.
        transaction: the marker read before the work began.
        rebuild: the table is rebuilt from its inputs alone.
        affected: the keys recomputed (`RecomputeKeys` built incrementally), None for every key.
    """

    scope: RunScope
    definition: TableDefinition
    handle: TableHandle
    output: ray.data.Dataset
    staged: StagedFiles
    folder: str
    metadata: dict[str, Any]
    transaction: Transaction
    rebuild: bool = False
    affected: pa.Table | None = None


class WriteStrategy:
    """How the rows of one write kind are staged and committed.

    Attributes:
        change_feed: rows are changes, staged apart and applied to the table (no uniqueness check on the rows).
        keeps_rows: the table keeps its rows from one build to the next, so a schema migration rewrites them.
    """

    change_feed = False
    keeps_rows = True

    def folder(self, scope: RunScope, handle: TableHandle) -> str:
        """Where the rows are staged: the table's own folder, so a commit only adds files."""
        return handle.uri

    def discard(self, folder: str, staged: StagedFiles) -> None:
        """Delete the data files staged for a commit that will not happen."""
        discard_files(folder, staged.data)

    def emptied_on_rebuild(self, handle: TableHandle) -> list[tuple[TableStore, str]]:
        """The tables emptied before a full rebuild, besides the quarantine."""
        return []

    def stored_schema(self, output: pa.Schema) -> pa.Schema:
        """The table schema a function output makes."""
        return output

    def commit(self, write: StagedWrite) -> TableOutcome:
        """Commit the staged rows; the table's outcome."""
        raise NotImplementedError

    def _commit_files(self, write: StagedWrite, mode: str) -> TableOutcome:
        with discarded_on_conflict(write.handle.uri, write.staged.data):
            version = write.handle.store.commit_files(
                write.handle.uri, write.staged.data, mode=mode, metadata=write.metadata, commit_empty=True,
                empty_schema=None if write.staged.data else schema_of(write.output), transaction=write.transaction)
        return TableOutcome(output_version=version, rows_written=write.staged.rows)


class AppendWrite(WriteStrategy):
    """`Append`: the rows are added to the table (which a rebuild replaces)."""

    def commit(self, write: StagedWrite) -> TableOutcome:
        return self._commit_files(write, "overwrite" if write.rebuild else "append")


class OverwriteWrite(WriteStrategy):
    """`Overwrite`: the rows replace the table's."""

    keeps_rows = False

    def commit(self, write: StagedWrite) -> TableOutcome:
        return self._commit_files(write, "overwrite")


class RecomputeKeysWrite(WriteStrategy):
    """`RecomputeKeys`: the rows of the keys recomputed (or of a backfill's days) replace theirs alone; a first or
    whole build replaces the table."""

    def __init__(self, kind: RecomputeKeys) -> None:
        self.kind = kind

    def commit(self, write: StagedWrite) -> TableOutcome:
        window = write.scope.window
        if write.affected is None and window is None:
            return self._commit_files(write, "overwrite")
        assert self.kind.time_column is not None or window is None
        where = (Slice.of_range(self.kind.time_column, *window) if window is not None  # type: ignore[arg-type]
                 else Slice.of_keys(write.affected))  # type: ignore[arg-type]
        handle, staged = write.handle, write.staged
        with discarded_on_conflict(handle.uri, staged.data):
            replaced = handle.store.replace(handle.uri, handle.name, where, staged.data,
                                            storage=write.scope.settings.storage, prefix=write.scope.run_id,
                                            metadata=write.metadata, transaction=write.transaction)
        return TableOutcome(output_version=replaced.version, rows_written=staged.rows, details={
            "keys_recomputed": None if write.affected is None else write.affected.num_rows,
            "rows_replaced": replaced.rows_removed, "files_rewritten": replaced.files_rewritten,
            "files_skipped": replaced.files_skipped})


class ChangeFeedWrite(WriteStrategy):
    """`Merge` and `SCD2`: the rows are changes, staged under the run's staging folder and applied to the table."""

    change_feed = True

    def __init__(self, kind: Merge | SCD2) -> None:
        self.kind = kind

    def folder(self, scope: RunScope, handle: TableHandle) -> str:
        return scope.layout.staging(scope.run_id, handle.name)

    def discard(self, folder: str, staged: StagedFiles) -> None:
        delete_tree(folder)

    def emptied_on_rebuild(self, handle: TableHandle) -> list[tuple[TableStore, str]]:
        return [(handle.store, handle.uri), (DeltaStore(), handle.changes)]

    def stored_schema(self, output: pa.Schema) -> pa.Schema:
        """Steering columns of the change feed are not stored."""
        return pa.schema([f for f in output if f.name not in self.kind.except_columns])

    def commit(self, write: StagedWrite) -> TableOutcome:
        try:
            if write.staged.rows == 0:
                return self._commit_progress(write)
            return guarded(write.definition, lambda: self.apply(write, ChangeFiles(write.folder, write.staged.data)))
        finally:
            delete_tree(write.folder)

    def apply(self, write: StagedWrite, changes: ChangeFiles) -> TableOutcome:
        """Apply a batch of changes, staged in files, to the table."""
        raise NotImplementedError

    def _commit_progress(self, write: StagedWrite) -> TableOutcome:
        """Commit no row but the input versions consumed, for a change-fed table none of whose new input rows
        passed: the rows it rejected are then not read, nor quarantined, again."""
        schema = schema_of(write.output)
        version = write.handle.store.commit_files(
            write.handle.uri, [], mode="append", metadata=write.metadata, commit_empty=True,
            empty_schema=None if schema is None else self.stored_schema(schema), transaction=write.transaction)
        return TableOutcome(output_version=version,
                            status="succeeded" if write.staged.quarantined_rows else "unchanged")


class MergeWrite(ChangeFeedWrite):
    """`Merge`: the latest change per key upserted, deletes recorded in the change log as tombstones."""

    kind: Merge

    def apply(self, write: StagedWrite, changes: ChangeFiles) -> TableOutcome:
        """The staged changes merged through the table's store (on Delta by Ray tasks, this process handling only
        file names, counts and object refs); a `Merge` that logs its deletes drops the changes older than a
        logged delete of their key (`changelog.without_superseded`)."""
        kind, handle = self.kind, write.handle
        logs_deletes = bool(kind.delete_when and kind.sequence_by)
        outcome = handle.store.merge(handle.uri, handle.name, changes, kind, metadata=write.metadata,
                                     transaction=write.transaction, storage=write.scope.settings.storage,
                                     change_log=handle.changes if logs_deletes else None)
        return TableOutcome(output_version=outcome.version, rows_written=changes.rows - outcome.duplicates,
                            rows_duplicate=outcome.duplicates, details={"merge": outcome.metrics})


class SCD2Write(ChangeFeedWrite):
    """`SCD2`: every change kept as a version of its key, with validity columns."""

    kind: SCD2

    def stored_schema(self, output: pa.Schema) -> pa.Schema:
        """The change feed's stored columns plus the history columns."""
        stored = super().stored_schema(output)
        sequence = stored.field(self.kind.sequence_by).type
        return pa.schema([*stored, pa.field("valid_from", sequence), pa.field("valid_to", sequence),
                          pa.field("is_current", pa.bool_())])

    def apply(self, write: StagedWrite, changes: ChangeFiles) -> TableOutcome:
        """The history of the keys the staged changes touch rebuilt and written (`scd2.apply_changes`: on Delta by
        Ray tasks, their difference staged under the table's staging folder)."""
        handle = write.handle
        history = scd2.apply_changes(handle.uri, handle.changes, handle.name, changes, self.kind,
                                     store=handle.store, metadata=write.metadata, transaction=write.transaction,
                                     storage=write.scope.settings.storage, scratch=f"{write.folder}/history")
        return TableOutcome(output_version=history.version, rows_written=history.rows_upserted,
                            rows_duplicate=changes.rows - history.changes_logged,
                            status="succeeded" if history.version is not None else "unchanged",
                            details={"history": {"changes_logged": history.changes_logged,
                                                 "rows_removed": history.rows_removed}})


def write_strategy(kind: AnyKind) -> WriteStrategy:
    """The strategy of a write kind."""
    if isinstance(kind, Append):
        return AppendWrite()
    if isinstance(kind, Overwrite):
        return OverwriteWrite()
    if isinstance(kind, RecomputeKeys):
        return RecomputeKeysWrite(kind)
    if isinstance(kind, SCD2):
        return SCD2Write(kind)
    return MergeWrite(kind)
