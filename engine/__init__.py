"""A Ray-distributed engine for medallion lakehouse pipelines.

The public names are loaded on first use, so a Ray worker that imports one module of the engine (a partition
function's `engine.columns`, say) does not also import the runner, pandera and deltalake.
"""

from __future__ import annotations

from engine.lazy import lazy_exports

EXPORTS = {
    "Settings": "engine.config",
    "load_settings": "engine.config",
    "TableContext": "engine.context",
    "table_context": "engine.context",
    "EngineError": "engine.errors",
    "Freshness": "engine.freshness",
    "FileSource": "engine.ingest.sources",
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
