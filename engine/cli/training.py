"""`medallion train`, `score` and `mlflow-ui`: tracked training, reproduction and batch scoring of a data
product's models, and the tracking UI."""

from __future__ import annotations

import os
import sys

import click
from rich.markup import escape

from engine.cli.common import address_option, console, reported, settings_of

_REPO = click.option("--repo", envvar="MEDALLION_FEATURE_REPO", default=None, type=click.Path(file_okay=False),
                     help="Feature repository (applied with `features apply`; default `features.repo`: ./features).")
_FEAST_CONFIG = click.option("--feast-config", envvar="MEDALLION_FEAST_CONFIG", default=None,
                             type=click.Path(dir_okay=False),
                             help="YAML merged over the Feast defaults (default `features.feast_config`).")
_TRACKING = click.option("--tracking-uri", default=None,
                         help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else <root>/_meta/mlflow).")


@click.command("train")
@click.argument("job", default="retail")
@click.option("--trials", type=int, default=0, show_default=True,
              help="Ray Tune trials over the job's search space before the final fit.")
@click.option("--reproduce", "run_id", default=None, metavar="RUN_ID",
              help="Rebuild RUN_ID's training set from its recorded table versions, check it, and retrain; warns "
                   "when the code version or Feast registry hash differs from the run's.")
@_REPO
@_FEAST_CONFIG
@_TRACKING
@address_option
@click.pass_context
@reported
def train(ctx: click.Context, job: str, trials: int, run_id: str | None, repo: str, feast_config: str | None,
          tracking_uri: str | None) -> None:
    """Train JOB (`pipeline/job`, or `pipeline` with one job), track it in MLflow and register the model."""
    from engine.runtime import ray_session
    from engine.training.trainer import reproduce
    from engine.training.trainer import train as run_training

    settings = settings_of(ctx)
    with ray_session(settings.ray):
        if run_id:
            result = reproduce(run_id, settings, repo=repo, overlay=feast_config, tracking_uri=tracking_uri)
        else:
            result = run_training(job, settings, repo=repo, overlay=feast_config, tracking_uri=tracking_uri,
                                  trials=trials)
    first, last = result.training_set.time_range()
    console.print(f"run {result.run_id}: {result.training_set.num_rows:,} rows from {first:%Y-%m-%d} to "
                  f"{last:%Y-%m-%d}, tables {escape(str(result.training_set.versions))}")
    console.print("holdout " + ", ".join(f"{escape(k)} {v:.4f}" for k, v in result.metrics.items()))
    if run_id:
        console.print(f"training set identical to run {run_id}'s (fingerprint "
                      f"{result.training_set.fingerprint[:12]})")
        for note in result.warnings:
            console.print(f"warning: {escape(note)}", style="yellow", soft_wrap=True)
    else:
        console.print(f"registered version {result.model_version}: {escape(result.decision)}")
    _print_run_url(result.run_id)


def _print_run_url(run_id: str) -> None:
    """The MLflow run's page in the tracking UI, with how to serve the UI when no tracking server does."""
    import mlflow

    from engine.training.tracking import is_server, run_url

    served = is_server(mlflow.get_tracking_uri())
    console.print(f"tracked at {escape(run_url(run_id))}" + ("" if served else " (serve it: `medallion mlflow-ui`)"),
                  soft_wrap=True)


@click.command("score")
@click.argument("job", default="retail")
@click.option("--model-version", default="champion", show_default=True, help="Version number or alias.")
@click.option("--reason", default=None, help="Why, recorded in the commit and the run record (default: batch scoring).")
@_REPO
@_FEAST_CONFIG
@_TRACKING
@click.pass_context
@reported
def score(ctx: click.Context, job: str, model_version: str, reason: str | None, repo: str,
          feast_config: str | None, tracking_uri: str | None) -> None:
    """Run JOB's scores table alone, such as `gold.churn_scores`: a pipeline run that appends the scores of a
    registered model in one commit."""
    from engine.entrypoints import load_pipeline
    from engine.errors import RunFailed, TrainingError
    from engine.runner import Runner
    from engine.runtime import ray_session
    from engine.training.job import load_job
    from engine.training.registry import load_model
    from engine.training.scoring import ScoringOptions, scoring_with
    from engine.training.tracking import configured_uri, resolve_tracking_uri, use_tracking

    settings = settings_of(ctx)
    name, training_job = load_job(job)
    if training_job.scores_table is None:
        raise TrainingError(f"training job `{name}` declares no `scores_table`; declare the pipeline table that "
                            "scores with it", job=name)
    use_tracking(resolve_tracking_uri(settings.storage.root, tracking_uri or configured_uri(settings)),
                 verbose=settings.ray.verbose)
    version = load_model(training_job.model_name, model_version).version
    options = ScoringOptions(version, tracking_uri, repo, feast_config)
    runner = Runner(load_pipeline(name.partition("/")[0]), settings,
                    reason=reason or f"batch scoring with {training_job.model_name} v{version}")
    with ray_session(settings.ray), scoring_with(options):
        result = runner.run(training_job.scores_table, force=True)
    [record] = result.records
    if record.status != "succeeded":
        raise RunFailed(f"run {result.run_id}: table `{record.table}` {record.status}: {record.error}",
                        table=record.table, run_id=result.run_id)
    console.print(f"{record.rows_written:,} scores by model `{escape(training_job.model_name)}` version {version} "
                  f"written to `{escape(record.table)}` v{record.output_version} (run {result.run_id})")


@click.command("mlflow-ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the UI binds (loopback by default).")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@_TRACKING
@click.pass_context
@reported
def mlflow_ui(ctx: click.Context, host: str, port: int, tracking_uri: str | None) -> None:
    """Serve MLflow's UI over the root's tracking store (the runs of `medallion train`) until Ctrl-C; a tracking
    server serves its own, whose address is printed."""
    from engine.errors import TrainingError
    from engine.redact import redact_url
    from engine.training.tracking import configured_uri, existing_tracking_uri, is_server, ui_command, ui_url

    settings = settings_of(ctx)
    uri = existing_tracking_uri(settings.storage.root, tracking_uri or configured_uri(settings))
    if uri is None:
        raise TrainingError(f"nothing tracked under {settings.storage.root} yet; run `medallion train` first, or "
                            "give --tracking-uri")
    if is_server(uri):
        console.print(f"runs are tracked by the server at {escape(redact_url(uri))}; open it in a browser")
        return
    console.print(f"MLflow UI of {escape(redact_url(uri))} on {ui_url(host, port)}; stop with Ctrl-C", soft_wrap=True)
    sys.stdout.flush()
    command = ui_command(uri, host, port)
    os.execv(command[0], command)
