"""Building a derived table: read its inputs at this run's versions, call its function in Ray tasks, stage and
check the rows, then commit them with the strategy of its write kind."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pyarrow as pa
import ray.data

from engine.changes.recorded import DEFINITION_KEY
from engine.context import TableContext, building
from engine.errors import CommitConflict, PipelineDefinitionError, QualityFailed, SchemaEvolutionError
from engine.guard import call_table_function, guarded
from engine.kinds import RecomputeKeys
from engine.pipeline import TableDefinition
from engine.quality import gate
from engine.quality.results import CheckResult
from engine.run.commits import ATTEMPT_KEY, attempt, commit_quarantine
from engine.run.inputs import affected_keys, read_input, read_keys_only, unkeyed_inputs, within
from engine.run.outcome import TableOutcome
from engine.run.rebuilds import assess_definition, empty_for_rebuild, evolve_schema, settle_rebuild
from engine.run.scope import RunScope
from engine.run.writes import StagedWrite, WriteStrategy, write_strategy
from engine.tables.built_from import consumed_versions
from engine.tables.files import discard_files
from engine.tables.progress import INPUTS_KEY, SCHEMA_KEY
from engine.tables.staging import StagedFiles, StagingDatasink

log = logging.getLogger("engine.runner")


def build(scope: RunScope, definition: TableDefinition, checks: list[CheckResult]) -> TableOutcome:
    """Build one table; `checks` receives its quality results, also when the table fails."""
    assert definition.function is not None
    handle, strategy = scope.handle(definition.name), write_strategy(definition.kind)
    # The markers first: every commit of this work is refused if another run committed since they were read.
    transaction, quarantine_transaction = scope.transactions(handle)
    versions = {t: scope.handle(t).latest_version() for t in definition.dependencies}
    consumed = consumed_versions(handle.uri, handle.name, definition.dependencies, handle.store)
    assessment = assess_definition(scope, definition, consumed)
    before = handle.latest_version()
    definition_value = assessment.commit_value(scope.run_id, before).to_metadata()
    metadata = scope.commit_metadata(definition, **{INPUTS_KEY: versions, DEFINITION_KEY: definition_value})
    previous = None if scope.force or assessment.rebuild else (
        None if consumed is None else {**consumed, **assessment.skipped})
    if versions and previous == versions and scope.window is None:
        if consumed == versions:
            return TableOutcome(status="unchanged", input_versions=versions,
                                details={"reason": "inputs unchanged since the table was last built"})
        version = handle.store.commit_files(handle.uri, [], mode="append", metadata=metadata, commit_empty=True,
                                            transaction=transaction)
        return TableOutcome(status="unchanged", input_versions=versions, output_version=version, details={
            "reason": f"passed over the non-breaking rebuild of {', '.join(sorted(assessment.skipped))}"})
    rebuild = scope.full_refresh or assessment.rebuild
    if assessment.rebuild:
        log.warning("table `%s` is rebuilt: %s", definition.name, assessment.reason)
    before_schema = handle.schema() if assessment.rebuild and before is not None else None
    kind = definition.kind
    unkeyed: dict[str, list[str]] = {}
    affected: pa.Table | None = None
    if isinstance(kind, RecomputeKeys):
        unkeyed = guarded(definition, lambda: unkeyed_inputs(scope, definition, kind, versions))
        if not scope.window and not assessment.rebuild:
            affected = guarded(definition, lambda: affected_keys(scope, definition, kind, versions, previous,
                                                                 unkeyed))
    if affected is not None and affected.num_rows == 0:
        version = handle.store.commit_files(handle.uri, [], mode="append", metadata=metadata, commit_empty=True,
                                            transaction=transaction)
        return TableOutcome(status="unchanged", input_versions=versions, output_version=version,
                            details={"reason": "no entity's input rows changed"})
    if affected is not None:
        reads = [read_input(scope, definition, t, versions[t], None) if t in unkeyed else
                 read_keys_only(scope, definition, t, versions[t], affected) for t in definition.inputs]
    else:
        reads = [read_input(scope, definition, t, versions[t], (previous or {}).get(t)) for t in definition.inputs]
    rows_in = sum(rows for _, rows in reads)
    with building(TableContext(scope.settings, scope.run_id, definition.name, versions)):
        output = scope.protected(definition, call_table_function(definition, [dataset for dataset, _ in reads]))
    if scope.window is not None:
        output = within(output, time_column(definition), *scope.window)
    folder = strategy.folder(scope, handle)
    keys = guarded(definition, lambda: gate.reference_keys(definition.quality, scope.layout, scope.formats)
                   if definition.quality else {})
    staged = guarded(definition, lambda: stage_rows(scope, definition, output, folder, keys))
    checks.extend(_table_checks(definition, strategy, staged, folder, rows_in))
    try:
        gate.enforce(definition.name, checks, handle.latest_version())
        schema_version = evolve_schema(scope, definition, strategy, staged)
    except (QualityFailed, SchemaEvolutionError):
        strategy.discard(folder, staged)
        discard_files(handle.quarantine, staged.quarantine)
        raise
    if rebuild:
        empty_for_rebuild(scope, definition, strategy, metadata)
    metadata |= {SCHEMA_KEY: schema_version}
    if scope.window is not None:
        metadata = {k: v for k, v in metadata.items() if k != INPUTS_KEY} | {
            "backfill": [str(day) for day in scope.window]}
    if staged.quarantine:
        try:
            commit_quarantine(scope, definition, staged, metadata | {
                ATTEMPT_KEY: attempt(versions, handle.latest_version())}, quarantine_transaction)
        except CommitConflict:
            strategy.discard(folder, staged)
            raise
    outcome = strategy.commit(StagedWrite(scope, definition, handle, output, staged, folder, metadata, transaction,
                                          rebuild=rebuild, affected=affected))
    outcome = outcome.replace(input_versions=versions, rows_in=rows_in, rows_quarantined=staged.quarantined_rows)
    if assessment.rebuild:
        outcome = outcome.with_details(rebuilt=settle_rebuild(scope, definition, assessment, before, before_schema))
    return outcome


def time_column(definition: TableDefinition) -> str:
    """The time partition column a backfill of the table recomputes by.

    Raises:
        PipelineDefinitionError: the table is not `RecomputeKeys` with a `time_column`.
    """
    kind = definition.kind
    if not isinstance(kind, RecomputeKeys) or kind.time_column is None:
        raise PipelineDefinitionError(
            f"table `{definition.name}` has no time partition to backfill; declare it with "
            "`kind=RecomputeKeys(keys=[...], time_column=...)`", table=definition.name)
    return kind.time_column


def stage_rows(scope: RunScope, definition: TableDefinition, dataset: ray.data.Dataset, folder: str,
               reference_keys: Mapping[str, ray.ObjectRef]) -> StagedFiles:
    """Write the table's rows as data files under `folder` in Ray tasks, checking them on the way; rejected rows
    go to files of the quarantine."""
    sink = StagingDatasink(scope.stager(definition, folder, reference_keys))
    dataset.write_datasink(sink, ray_remote_args=dict(definition.ray_options))
    return sink.result


def _table_checks(definition: TableDefinition, strategy: WriteStrategy, staged: StagedFiles, folder: str,
                  rows_in: int) -> list[CheckResult]:
    """Row-level results from the write tasks plus the table-level checks over the staged files."""
    quality = definition.quality
    if quality is None:
        return list(staged.checks)
    unique = [] if strategy.change_feed else gate.unique_check(definition.name, quality, folder, staged.data,
                                                                definition.ray_options)
    conservation = gate.conservation_check(definition.name, quality, rows_in, staged.rows, staged.quarantined_rows)
    return [*staged.checks, *unique, *conservation]

