"""A Ray-distributed engine for medallion lakehouse pipelines."""

from engine.config import Settings as Settings
from engine.config import load_settings as load_settings
from engine.context import TableContext as TableContext
from engine.context import table_context as table_context
from engine.errors import EngineError as EngineError
from engine.freshness import Freshness as Freshness
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
from engine.runner import Runner as Runner
from engine.runner import RunResult as RunResult
from engine.runtime import ray_session as ray_session
from engine.schema import SchemaEvolution as SchemaEvolution
