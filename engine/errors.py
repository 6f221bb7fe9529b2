"""The engine's exceptions: one base class, subclasses that name what failed and how to fix it."""

from __future__ import annotations

from collections.abc import Iterable
from difflib import get_close_matches


class EngineError(Exception):
    """Base class of every error the engine raises on purpose.

    Attributes:
        table: the table concerned, when there is one.
        run_id: the run during which the error happened, when there is one.
        path: the file or folder concerned, when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        table: str | None = None,
        run_id: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.table = table
        self.run_id = run_id
        self.path = path


class ConfigError(EngineError):
    """A setting is missing or invalid."""


class PipelineDefinitionError(EngineError):
    """A pipeline declares a table wrongly (unknown input, cycle, bad name, duplicate)."""


class SelectionError(EngineError):
    """A selection expression names no table or is malformed."""


class KeyMismatch(EngineError):
    """Inputs hashed on the same key (a shuffle, a merge) lack a key column or hold it in types whose values
    never compare equal (an integer and a string)."""


class TableNotFound(EngineError):
    """A table was read before it was ever written."""


class TableFailed(EngineError):
    """A table's function, or the writing of its result, failed during a run."""


class QualityFailed(TableFailed):
    """A check with the action `fail` found offending rows; the table's commit was aborted."""


class IngestError(EngineError):
    """A landing file could not be discovered or read."""


class SourceError(IngestError):
    """A database source cannot be reached or read, is not set up for change data capture, or its replication
    slot no longer holds the changes its bronze table has not taken in."""


class UnreadableFileError(IngestError):
    """A landing file cannot be read into records at all: it is not valid UTF-8 text (binary or compressed data,
    another encoding, a cut character), or its CSV header repeats a column name, leaves one empty or uses an
    engine column's name."""


class LandingFileExists(EngineError):
    """Generated landing data would replace a landing file already there; landed files are never replaced."""


class SchemaDriftError(IngestError):
    """A landing file's columns differ from its source's declared ones under the `fail` drift policy."""


class SchemaEvolutionError(TableFailed):
    """A table's new output drops, renames or narrows a column without a declared migration."""


class TableFormatError(EngineError):
    """A table's location holds a table of another format than the one declared, or a format cannot do what the
    table declares."""


class CommitConflict(EngineError):
    """Another writer committed the same batch of a table first; this writer's work was discarded."""


class LeaseHeld(EngineError):
    """Another live run holds the run lease of the same pipeline and root."""


class LeaseLost(EngineError):
    """The run lease this run held was taken over by another run, which now writes the pipeline's tables."""


class RunFailed(EngineError):
    """A run finished with at least one failed table."""


class StorageError(EngineError):
    """A storage root cannot be used: no credentials, an unreachable endpoint, a missing bucket, or a
    configuration that would let concurrent writers lose commits."""


class MaintenanceError(EngineError):
    """A maintenance operation (optimize, vacuum, pin, backup) was refused or failed, or a backup did not verify."""


class GovernanceError(EngineError):
    """Personal data could not be protected or erased as declared: no tokenization key, a declared subject or
    personal-data column missing from a table, a landing file that cannot be rewritten."""


class AccessDenied(GovernanceError):
    """The acting principal's roles do not allow an operation on a table, quarantine, landing folder or feature
    view (`access` settings)."""


class FeatureStoreError(EngineError):
    """The feature store was misconfigured or misused: unknown feature, view or entity, unreadable source
    table, or materialization that did not leave the online store as intended.

    Attributes:
        feature: the feature view or feature reference concerned, when there is one.
    """

    def __init__(self, message: str, *, feature: str | None = None, table: str | None = None,
                 path: str | None = None) -> None:
        super().__init__(message, table=table, path=path)
        self.feature = feature


class ClusterConfigError(EngineError):
    """A cluster configuration (launcher YAML or KubeRay manifest) is invalid, unsafe, or out of step with the lock
    file; or a cluster operation was asked of no cluster."""


class TrainingError(EngineError):
    """A training, scoring or reproduction job failed: unknown job or run, unusable training set, a model that
    cannot be loaded, or a training set that no longer matches its recorded run.

    Attributes:
        job: the training job concerned (`pipeline/job`), when there is one.
        model: the registered model concerned, when there is one.
        mlflow_run: the MLflow run concerned, when there is one.
    """

    def __init__(self, message: str, *, job: str | None = None, model: str | None = None,
                 mlflow_run: str | None = None, table: str | None = None) -> None:
        super().__init__(message, table=table)
        self.job = job
        self.model = model
        self.mlflow_run = mlflow_run


def name_hint(name: str, known: Iterable[str], otherwise: str) -> str:
    """`did you mean `a` or `b`?` with the known names closest to a mistyped `name`, else `otherwise`."""
    close = get_close_matches(name, sorted(set(known)), n=3)
    return f"did you mean {' or '.join(f'`{c}`' for c in close)}?" if close else otherwise
