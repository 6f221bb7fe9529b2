"""`train` and `reproduce`: a job's training set from Feast, a model fitted on Ray, tracked in MLflow with
its lineage, registered, and promoted to `champion` only when it beats the current one."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from engine.config import Settings
from engine.errors import TrainingError
from engine.layout import Layout
from engine.maintenance.pins import pin_versions
from engine.redact import redact_url
from engine.training.dataset import TableReader, TrainingSet, build_training_set, model_frame, split_in_task
from engine.training.job import TrainingJob, load_job
from engine.training.tracking import (
    TAG,
    configured_uri,
    experiment_id,
    lineage_tags,
    mlflow_messages,
    resolve_tracking_uri,
    use_tracking,
)

PIP_REQUIREMENTS = ("scikit-learn", "skops", "numpy", "pandas", "pyarrow")
REPRODUCED = {"code_version": "code version", "feast_registry_hash": "Feast registry hash"}
"""Lineage a reproduction compares with the run it reproduces: a difference is warned about, not fatal (the
training set is what must be identical)."""
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingResult:
    """What one training run produced.

    Attributes:
        run_id: the MLflow run.
        model_version: the registered version (None for a reproduction, which registers nothing).
        metrics: holdout metrics.
        params: the parameters the model was fitted with.
        promoted: whether the version became `champion`.
        decision: why it did or did not.
        training_set: the rows it was trained and evaluated on.
        warnings: for a reproduction, how the code and feature definitions differ from the reproduced run's.
    """

    run_id: str
    model_version: str | None
    metrics: dict[str, float]
    params: dict[str, Any]
    promoted: bool
    decision: str
    training_set: TrainingSet
    warnings: tuple[str, ...] = ()


def train(reference: str, settings: Settings, *, repo: str | None = None, overlay: str | None = None,
          tracking_uri: str | None = None, trials: int = 0, params: Mapping[str, Any] | None = None,
          pins: Mapping[str, int] | None = None, reproduces: str | None = None,
          expected_fingerprint: str | None = None, recorded: Mapping[str, str] | None = None) -> TrainingResult:
    """Train job `reference` (`pipeline/job`) on the tables under the settings' root, with Ray already up.

    Args:
        repo: the feature repository (already applied to the registry); None: as `features.repo.repo_of` says.
        overlay: a Feast configuration overlay.
        tracking_uri: overrides `training.tracking_uri` and `$MLFLOW_TRACKING_URI`.
        trials: Ray Tune trials over the job's search space before the final fit (0: none).
        params: overrides of the job's parameters.
        pins: table versions to read (default: the latest).
        reproduces: the run being reproduced; the new run is tagged with it and registers no model.
        expected_fingerprint: the training set must have this fingerprint.
        recorded: the reproduced run's lineage (`REPRODUCED` keys); a value that differs now is warned about.

    Raises:
        TrainingError: the job, its tables or its training set are unusable.
    """
    import mlflow

    from engine.features.repo import store_of
    from engine.training.fit import fit_remote
    from engine.training.registry import decide_champion
    from engine.training.search import search
    from engine.training.tracking import code_version, feast_lineage

    name, job = load_job(reference)
    root = Layout.at(settings.storage.root).root
    store = store_of(settings, repo, overlay)
    uri = resolve_tracking_uri(root, tracking_uri or configured_uri(settings))
    use_tracking(uri, verbose=settings.ray.verbose)
    chosen = {**job.params, **(params or {})}
    training = build_training_set(store, job, TableReader(root, pins, settings.access), chosen)
    if expected_fingerprint is not None and training.fingerprint != expected_fingerprint:
        raise TrainingError(f"the training set rebuilt for run `{reproduces}` differs from the recorded one "
                            f"(fingerprint {training.fingerprint[:12]} != {expected_fingerprint[:12]}) at versions "
                            f"{training.versions}; a pinned version may have been vacuumed or rewritten",
                            job=name, mlflow_run=reproduces)
    split = split_in_task(training.rows, job)
    first, last = training.time_range()
    experiment = experiment_id(name, uri, root)
    with mlflow.start_run(experiment_id=experiment) as run:
        if trials:
            found = search(job, chosen, split.train, training.numeric, training.categorical, trials=trials,
                           storage=Layout.at(root).tune(), name=run.info.run_id, verbose=settings.ray.verbose)
            for number, trial in enumerate(found):
                with mlflow.start_run(experiment_id=experiment, run_name=f"trial-{number}", nested=True):
                    mlflow.log_params(trial.params)
                    mlflow.log_metrics({f"validation_{k}": v for k, v in trial.metrics.items()})
            chosen = {**chosen, **found[0].params}
        fitted = fit_remote(job, chosen, split, training.numeric, training.categorical)
        mlflow.log_params({**chosen, "holdout_fraction": job.holdout_fraction, "gap_days": job.gap.days,
                           "trials": trials, "ray_resources": json.dumps(dict(job.resources), sort_keys=True)})
        mlflow.log_metrics({**fitted.metrics, "rows": training.num_rows, "rows_train": split.rows_train,
                            "rows_holdout": split.rows_holdout})
        lineage = {"job": name, "root": root, "code_version": code_version(), "params": chosen,
                   "table_versions": training.versions, "training_rows": str(training.num_rows),
                   "training_start": first.isoformat(), "training_end": last.isoformat(),
                   "holdout_start": split.holdout_start.isoformat(), "training_fingerprint": training.fingerprint,
                   **feast_lineage(store, job.feature_service)}
        lineage |= {f"table_version.{table}": str(v) for table, v in training.versions.items()}
        notes = tuple(f"the {what} was {recorded[key]} when run {reproduces} trained and is {lineage[key]} now"
                      for key, what in REPRODUCED.items() if key in (recorded or {}) and recorded[key] != lineage[key])
        for note in notes:
            log.warning("reproduction of run %s: %s", reproduces, note)
        if reproduces:
            lineage |= {"reproduces": reproduces, "reproduction_warnings": list(notes)}
        mlflow.set_tags(lineage_tags(lineage))
        with mlflow_messages(settings.ray.verbose):
            version = _log_model(job, fitted.model, training, split.example, register=reproduces is None)
        if version is None:
            return TrainingResult(run.info.run_id, None, fitted.metrics, chosen, False,
                                  f"reproduction of run {reproduces}: nothing registered", training, notes)
        pin_versions(Layout(root), training.versions, who=f"model {job.model_name} v{version}")
        decision = decide_champion(job.model_name, version, fitted.metrics["auc"], split.holdout, job.label,
                                   training.columns)
        mlflow.set_tags(lineage_tags({"model_name": job.model_name, "model_version": version,
                                      "champion.decision": "promoted" if decision.promoted else "kept",
                                      "champion.reason": decision.reason, "champion.version": decision.champion}))
        mlflow.log_param("champion_decision", "promoted" if decision.promoted else "kept")
        if decision.previous_auc is not None:
            mlflow.log_metric("champion_previous_auc", decision.previous_auc)
        mlflow.MlflowClient().set_model_version_tag(job.model_name, version, "champion_decision", decision.reason)
    return TrainingResult(run.info.run_id, version, fitted.metrics, chosen, decision.promoted, decision.reason,
                          training)


def _log_model(job: TrainingJob, model: Any, training: TrainingSet, example_rows: pa.Table, *,
               register: bool) -> str | None:
    """Log `model` with its signature and `example_rows` as its input example; register it under
    `job.model_name` if asked."""
    from importlib.metadata import version

    import mlflow
    from mlflow.models import infer_signature

    example = model_frame(example_rows, training.numeric, training.categorical)
    signature = infer_signature(example, model.predict_proba(example)[:, 1])
    info = mlflow.sklearn.log_model(
        model, name="model", signature=signature, input_example=example,
        skops_trusted_types=list(job.trusted_types) or None,
        pip_requirements=[f"{package}=={version(package)}" for package in PIP_REQUIREMENTS],
        registered_model_name=job.model_name if register else None)
    return str(info.registered_model_version) if register else None


def reproduce(run_id: str, settings: Settings, *, repo: str | None = None, overlay: str | None = None,
              tracking_uri: str | None = None) -> TrainingResult:
    """Rebuild run `run_id`'s training set from its recorded table versions and parameters, check it is
    identical, and retrain on it in a new run tagged `medallion.reproduces`. A code version or Feast registry
    hash that differs from the run's is reported in `warnings` (and the log), not refused.

    Raises:
        TrainingError: the run is unknown or not a training run, or the rebuilt set differs.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    use_tracking(resolve_tracking_uri(settings.storage.root, tracking_uri or configured_uri(settings)),
                 verbose=settings.ray.verbose)
    try:
        recorded = mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        raise TrainingError(f"no MLflow run `{run_id}` at {redact_url(mlflow.get_tracking_uri())}; check the run id "
                            "and --tracking-uri", mlflow_run=run_id) from None
    tags = recorded.data.tags
    needed = [TAG + key for key in ("job", "table_versions", "params", "training_fingerprint")]
    if any(key not in tags for key in needed):
        raise TrainingError(f"MLflow run `{run_id}` lacks the lineage tags {needed}; it was not made by "
                            "`medallion train`", mlflow_run=run_id)
    return train(tags[TAG + "job"], settings, repo=repo, overlay=overlay, tracking_uri=tracking_uri,
                 params=json.loads(tags[TAG + "params"]), pins=json.loads(tags[TAG + "table_versions"]),
                 reproduces=run_id, expected_fingerprint=tags[TAG + "training_fingerprint"],
                 recorded={key: tags[TAG + key] for key in REPRODUCED if TAG + key in tags})
