"""`medallion train` and `medallion score`: tracked training, reproduction and batch scoring of a data
product's models."""

from __future__ import annotations

import datetime as dt
import warnings

import click

from engine.cli import _reported, _settings, console
from engine.runtime import ray_session

_REPO = click.option("--repo", envvar="MEDALLION_FEATURE_REPO", default="features", show_default=True,
                     type=click.Path(file_okay=False), help="Feature repository (applied with `features apply`).")
_FEAST_CONFIG = click.option("--feast-config", envvar="MEDALLION_FEAST_CONFIG", default=None,
                             type=click.Path(dir_okay=False), help="YAML merged over the Feast defaults.")
_TRACKING = click.option("--tracking-uri", default=None,
                         help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else <root>/_meta/mlflow).")


def _quiet() -> None:
    warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


@click.command("train")
@click.argument("job", default="retail")
@click.option("--trials", type=int, default=0, show_default=True,
              help="Ray Tune trials over the job's search space before the final fit.")
@click.option("--reproduce", "run_id", default=None, metavar="RUN_ID",
              help="Rebuild RUN_ID's training set from its recorded table versions, check it, and retrain.")
@_REPO
@_FEAST_CONFIG
@_TRACKING
@click.pass_context
@_reported
def train(ctx: click.Context, job: str, trials: int, run_id: str | None, repo: str, feast_config: str | None,
          tracking_uri: str | None) -> None:
    """Train JOB (`pipeline/job`, or `pipeline` with one job), track it in MLflow and register the model."""
    from engine.training.train import reproduce
    from engine.training.train import train as run_training

    _quiet()
    settings = _settings(ctx)
    with ray_session(settings.ray):
        if run_id:
            result = reproduce(run_id, settings, repo=repo, overlay=feast_config, tracking_uri=tracking_uri)
        else:
            result = run_training(job, settings, repo=repo, overlay=feast_config, tracking_uri=tracking_uri,
                                  trials=trials)
    first, last = result.training_set.time_range()
    console.print(f"run {result.run_id}: {result.training_set.rows.num_rows:,} rows from {first:%Y-%m-%d} to "
                  f"{last:%Y-%m-%d}, tables {result.training_set.versions}")
    console.print("holdout " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
    if run_id:
        console.print(f"training set identical to run {run_id}'s (fingerprint "
                      f"{result.training_set.fingerprint[:12]})")
    else:
        console.print(f"registered version {result.model_version}: {result.decision}")


@click.command("score")
@click.argument("job", default="retail")
@click.option("--at", "at", default=None, help="Point in time of the features (ISO 8601; default now).")
@click.option("--model-version", default="champion", show_default=True, help="Version number or alias.")
@_REPO
@_FEAST_CONFIG
@_TRACKING
@click.pass_context
@_reported
def score(ctx: click.Context, job: str, at: str | None, model_version: str, repo: str, feast_config: str | None,
          tracking_uri: str | None) -> None:
    """Score JOB's population with a registered model into its scores table (one Delta commit)."""
    from engine.errors import TrainingError
    from engine.training.scoring import score_batch

    _quiet()
    settings = _settings(ctx)
    try:
        moment = dt.datetime.fromisoformat(at) if at else None
    except ValueError:
        raise TrainingError(f"--at `{at}` is not an ISO 8601 time (e.g. 2026-06-01T00:00:00+00:00)") from None
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    with ray_session(settings.ray):
        result = score_batch(job, settings, repo=repo, overlay=feast_config, tracking_uri=tracking_uri, at=moment,
                             model_version=model_version)
    console.print(f"{result.rows:,} scores by model version {result.model_version} as of "
                  f"{result.scored_at:%Y-%m-%d %H:%M:%S} written to `{result.table}` v{result.version}")
