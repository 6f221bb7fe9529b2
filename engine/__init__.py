"""A Ray-distributed engine for medallion lakehouse pipelines.

The public names are loaded on first use, so a Ray worker that imports one module of the engine (a partition
function's `engine.columns`, say) does not also import the runner, pandera and deltalake.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.lazy import lazy_exports
from engine.synthesis import leave_out_data_synthesis_in_a_ray_worker
from engine.typechecks import defer_feast_type_checks

if TYPE_CHECKING:  # what type checkers see: the names below, from the modules that define them
    from engine.aggregates import aggregate as aggregate
    from engine.config import Settings as Settings
    from engine.config import load_settings as load_settings
    from engine.context import TableContext as TableContext
    from engine.context import table_context as table_context
    from engine.errors import EngineError as EngineError
    from engine.freshness import Freshness as Freshness
    from engine.ingest.postgres.source import PostgresSource as PostgresSource
    from engine.ingest.sources import FileSource as FileSource
    from engine.kinds import SCD2 as SCD2
    from engine.kinds import Append as Append
    from engine.kinds import Merge as Merge
    from engine.kinds import Overwrite as Overwrite
    from engine.kinds import RecomputeKeys as RecomputeKeys
    from engine.maintenance.policy import Maintenance as Maintenance
    from engine.partitioning import co_partition as co_partition
    from engine.partitioning import default_partitions as default_partitions
    from engine.partitioning import map_partitions as map_partitions
    from engine.pipeline import Pipeline as Pipeline
    from engine.quality.checks import Expect as Expect
    from engine.quality.checks import Quality as Quality
    from engine.quality.checks import References as References
    from engine.run.outcome import RunResult as RunResult
    from engine.runner import Runner as Runner
    from engine.runtime import ray_session as ray_session
    from engine.schema import SchemaEvolution as SchemaEvolution

EXPORTS = {
    "aggregate": "engine.aggregates",
    "Settings": "engine.config",
    "load_settings": "engine.config",
    "TableContext": "engine.context",
    "table_context": "engine.context",
    "EngineError": "engine.errors",
    "Expect": "engine.quality.checks",
    "Quality": "engine.quality.checks",
    "References": "engine.quality.checks",
    "Freshness": "engine.freshness",
    "FileSource": "engine.ingest.sources",
    "PostgresSource": "engine.ingest.postgres.source",
    "SCD2": "engine.kinds",
    "Append": "engine.kinds",
    "Merge": "engine.kinds",
    "Overwrite": "engine.kinds",
    "RecomputeKeys": "engine.kinds",
    "Maintenance": "engine.maintenance.policy",
    "co_partition": "engine.partitioning",
    "default_partitions": "engine.partitioning",
    "map_partitions": "engine.partitioning",
    "Pipeline": "engine.pipeline",
    "Runner": "engine.runner",
    "RunResult": "engine.run.outcome",
    "ray_session": "engine.runtime",
    "SchemaEvolution": "engine.schema",
}
"""Public name -> the module that defines it."""

__all__ = sorted(EXPORTS)
__getattr__ = lazy_exports(__name__, EXPORTS)
defer_feast_type_checks()
leave_out_data_synthesis_in_a_ray_worker()
