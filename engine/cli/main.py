"""The `medallion` command: its global options and its commands, one module each under `engine.cli`."""

from __future__ import annotations

import logging

import click

from engine import logs
from engine.cli.access import access
from engine.cli.catalog import catalog
from engine.cli.changes import diff, plan
from engine.cli.cluster import cluster
from engine.cli.common import address_option
from engine.cli.features import features
from engine.cli.governance import audit, erase
from engine.cli.lineage import lineage
from engine.cli.maintenance import backup, maintain
from engine.cli.report import report
from engine.cli.running import backfill, demo, generate, run
from engine.cli.runs import runs
from engine.cli.scaffold import init
from engine.cli.sources import sources
from engine.cli.tables import history, quality, restore, show, status
from engine.cli.training import mlflow_ui, score, train
from engine.synthesis import leave_out_data_synthesis


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", envvar="MEDALLION__STORAGE__ROOT", default=None,
              help="Storage root (default ./lakehouse).")
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="YAML settings file (default ./medallion.yaml when present).")
@address_option
@click.option("-v", "--verbose", is_flag=True,
              help="Also show the libraries' output: Ray's, Feast's and MLflow's logs and warnings, Ray Data's "
                   "progress bars, Tune's progress, the Ray workers' output.")
@click.option("--log-format", type=click.Choice(logs.FORMATS), envvar="MEDALLION_LOG_FORMAT", default=logs.HUMAN,
              show_default=True, help="Log records on stderr as text, or one JSON object per line.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              envvar="MEDALLION_LOG_LEVEL", default=None, help="Lowest level logged (default WARNING, INFO with -v).")
def main(root: str | None, config: str | None, verbose: bool, log_format: str, log_level: str | None) -> None:
    """Medallion lakehouse pipelines on Ray."""
    leave_out_data_synthesis()
    logs.configure(log_format, log_level.upper() if log_level else logging.INFO if verbose else logging.WARNING,
                   libraries=verbose)


for command in (init, generate, run, backfill, restore, demo, status, runs, history, show, quality, catalog, plan, diff,
                cluster, features, train, score, mlflow_ui, maintain, backup, erase, audit, access, lineage, report, sources):
    main.add_command(command)
