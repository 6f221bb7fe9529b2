"""Before a run: whether the actor may run the selection, and whether a run now would do anything at all, decided
from the tables' logs and the landing folders alone (no Ray)."""

from __future__ import annotations

from engine.changes.plan import TablePlan, plan
from engine.config import Settings
from engine.declarations import record_declarations
from engine.governance import access
from engine.ingest.sources import FileSource
from engine.layout import Layout
from engine.pipeline import Pipeline, TableDefinition
from engine.storage import check_root


def authorize_run(settings: Settings, pipeline: Pipeline, definitions: list[TableDefinition]) -> None:
    """Refuse a run before anything is read unless the actor may write every table it builds and read every table
    and landing folder those read.

    Raises:
        AccessDenied: the actor may not.
    """
    purpose = f"a run of pipeline `{pipeline.name}`"
    reads = [name for d in definitions for name in d.dependencies]
    reads += [access.landing_of(d.source.directory) for d in definitions if isinstance(d.source, FileSource)]
    access.authorize(settings.access, "write", [d.name for d in definitions], purpose)
    access.authorize(settings.access, "read", reads, purpose)


def idle_plan(pipeline: Pipeline, settings: Settings, select: str | None = None) -> list[TablePlan] | None:
    """The plan of the selection when a run of it now would commit nothing (every table `nothing`, no landing
    file changed after ingestion), None when there is work. The declarations are recorded as a run records them.

    Raises:
        StorageError: the root is an S3 root the engine cannot use safely.
        AccessDenied: the actor may not run the selection.
    """
    layout = Layout.at(settings.storage.root)
    check_root(layout.root, allow_unsafe_writes=settings.storage.allow_unsafe_writes)
    definitions = pipeline.resolve()
    authorize_run(settings, pipeline, [definitions[name] for name in pipeline.select(select)])
    plans = plan(pipeline, settings, select)
    if any(p.action != "nothing" or p.changed_files for p in plans):
        return None
    record_declarations(layout, pipeline)
    return plans
