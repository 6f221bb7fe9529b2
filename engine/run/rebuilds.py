"""A table's definition and schema against what built it: whether it is rebuilt, the emptying before a rebuild,
the kind a rebuild turned out to be, and the migration of existing rows to a new schema."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from engine import schema
from engine.arrow import unify
from engine.changes import verify
from engine.changes.assess import Assessment, assess
from engine.changes.recorded import DEFINITION_KEY, save_parts
from engine.pipeline import TableDefinition
from engine.run.scope import RunScope
from engine.run.writes import WriteStrategy
from engine.runtime import ensure_ray
from engine.tables.built_from import schema_version_of
from engine.tables.formats import DeltaStore, TableStore
from engine.tables.progress import INPUTS_KEY, SCHEMA_KEY
from engine.tables.staging import StagedFiles

log = logging.getLogger("engine.runner")


def assess_definition(scope: RunScope, definition: TableDefinition,
                      consumed: Mapping[str, int | None] | None) -> Assessment:
    """The table's definition against what built it; a definition not seen before is kept under the root, for
    later comparisons, before any commit records it."""
    override = scope.change_kind.get(definition.name) if isinstance(scope.change_kind, Mapping) \
        else scope.change_kind
    assessment = assess(definition, scope.layout, scope.formats.for_table, consumed, override)
    if assessment.recorded is None or assessment.recorded.fingerprint != assessment.parts.fingerprint:
        save_parts(scope.layout, assessment.parts)
    return assessment


def settle_rebuild(scope: RunScope, definition: TableDefinition, assessment: Assessment, before: int | None,
                   before_schema: pa.Schema | None) -> dict[str, Any]:
    """Settle the change kind of a rebuild: one expected non-breaking holds when the rebuilt table only added
    columns and kept the others' rows (unless the user said so); it is then recorded by a commit of its own,
    which gives the table back its epoch. Returns the run record's `rebuilt` details."""
    details: dict[str, Any] = {"reason": assessment.reason, "change": "breaking"}
    if before is None or before_schema is None or not assessment.expected_non_breaking:
        return details
    handle = scope.handle(definition.name)
    after = handle.latest_version()
    added = verify.added_columns(before_schema, handle.schema())
    told = assessment.change is not None and assessment.change.overridden
    if after is None or (not told and (added is None or not verify.same_rows(
            handle.store, handle.uri, handle.name, before, after, before_schema.names,
            dict(definition.ray_options)))):
        log.warning("table `%s`: the rebuild changed the rows of existing columns: a breaking change, so "
                    "the tables downstream are rebuilt too", handle.name)
        return details
    added = added or ()
    handle.store.commit_files(handle.uri, [], mode="append", commit_empty=True, metadata=scope.commit_metadata(
        definition, **{DEFINITION_KEY: assessment.confirmed(before, added).to_metadata()}))
    return details | {"change": "non-breaking", "added": list(added)}


def evolve_schema(scope: RunScope, definition: TableDefinition, strategy: WriteStrategy,
                  staged: StagedFiles) -> int:
    """Check the staged output's schema against the table's under the table's evolution policy; rewrite
    the existing rows first when a declared migration changes them (tables that keep their rows).
    Returns the schema version of the coming commit: one more than the last when the schema changes.

    Raises:
        SchemaEvolutionError: a change the table does not declare.
    """
    handle = scope.handle(definition.name)
    version = schema_version_of(handle.uri, handle.name, handle.store)
    if not handle.exists():
        return version + 1
    if not staged.data:
        return version
    current = handle.schema()
    incoming = handle.store.as_stored(strategy.stored_schema(unify([f.schema for f in staged.data])))
    changes = schema.changes_between(handle.name, current, incoming, definition.evolution)
    if not changes:
        return version
    log.warning("table `%s`: schema changes: %s", handle.name, "; ".join(c.describe() for c in changes))
    if schema.needs_rewrite(changes) and strategy.keeps_rows:
        handle.store.rewrite(handle.uri, handle.name, lambda rows: schema.migrate(rows, changes, incoming),
                             metadata=scope.commit_metadata(definition, **{
                                 SCHEMA_KEY: version + 1, "migration": [c.describe() for c in changes]}),
                             storage=scope.settings.storage, need_ray=ensure_ray)
    return version + 1


def empty_for_rebuild(scope: RunScope, definition: TableDefinition, strategy: WriteStrategy,
                      built: dict[str, Any]) -> None:
    """Before a full refresh, empty a table's quarantine and, for a change-fed table, the table and its
    change log. The emptying commit records that the table was built from no input, so a run that dies
    right after still rebuilds it whole, and the definition of the coming build (`built`)."""
    metadata = built | {INPUTS_KEY: dict.fromkeys(definition.dependencies), "full_refresh": True}
    handle = scope.handle(definition.name)
    emptied: list[tuple[TableStore, str]] = [*strategy.emptied_on_rebuild(handle), (DeltaStore(), handle.quarantine)]
    for store, uri in emptied:
        if store.table_exists(uri):
            store.commit_files(uri, [], mode="overwrite", metadata=metadata)
