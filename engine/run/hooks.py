"""What follows a successful run when the settings ask for it: due maintenance of the tables it committed
(`maintenance.after_runs`), and incremental materialization of the online feature views over them
(`features.materialize_after_runs`)."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import TYPE_CHECKING

from engine.config import Settings
from engine.maintenance.due import Done, run_due_maintenance
from engine.pipeline import Pipeline

if TYPE_CHECKING:
    from engine.features.materialize import MaterializationReport

log = logging.getLogger("engine.runner")


def maintain(pipeline: Pipeline, settings: Settings, committed: Collection[str]) -> list[Done]:
    """Compact and vacuum the `committed` tables and their quarantines that are due, when the settings say so."""
    if not settings.maintenance.after_runs:
        return []
    return run_due_maintenance(pipeline, settings, committed)


def materialize(settings: Settings, committed: Collection[str]) -> list[MaterializationReport]:
    """Materialize incrementally, as of now, the online views over the `committed` tables of the repository
    `features.repo`, when the settings say so."""
    if not settings.features.materialize_after_runs or not committed:
        return []
    from engine.features.materialize import materialize as materialize_views  # Feast takes seconds to import
    from engine.features.repo import store_of
    from engine.features.source import DeltaSource

    store = store_of(settings)
    online = [v for v in store.list_feature_views() if v.online]
    if not online:
        log.warning("features: project `%s` has no online feature view to materialize; run "
                    "`medallion features apply`", store.project)
        return []
    views = sorted(v.name for v in online
                   if isinstance(v.batch_source, DeltaSource) and v.batch_source.table in committed)
    return materialize_views(store, incremental=True, views=views) if views else []
