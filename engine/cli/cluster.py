"""`medallion cluster ...`: check cluster configurations, show a pipeline's backlog, reserve capacity ahead of work."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from engine.cli.common import console, errors, reported, settings_of
from engine.errors import ClusterConfigError
from engine.layout import Layout


@click.group()
def cluster() -> None:
    """Cluster configurations and capacity."""


@cluster.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@reported
def validate(files: tuple[str, ...]) -> None:
    """Check cluster-launcher YAMLs as `ray up` does and KubeRay manifests structurally, plus the project's rules
    (the locked Ray version, token authentication, nothing exposed publicly)."""
    from clusterlint import ConfigProblem, validate_file

    failed = 0
    for path in files:
        try:
            specs = validate_file(path)
        except ConfigProblem as err:
            failed += 1
            errors.print(f"[red]invalid[/red] {escape(str(err))}", soft_wrap=True)
            continue
        for spec in specs:
            console.print(f"[green]valid[/green]   {escape(path)}: {escape(spec.describe())}", soft_wrap=True)
    if failed:
        raise ClusterConfigError(f"{failed} of {len(files)} file(s) invalid; see the reasons above")


@cluster.command()
@click.argument("pipeline")
@click.option("--select", "selection", default=None, help="Tables to consider, as for `medallion run`.")
@click.option("--bytes-per-task", type=click.IntRange(min=1), default=None,
              help="Input bytes one task of a step is sized for (default: the `ray.bytes_per_task` setting).")
@click.pass_context
@reported
def backlog(ctx: click.Context, pipeline: str, selection: str | None, bytes_per_task: int | None) -> None:
    """What a run of PIPELINE would process now, step by step, and the capacity `run` would ask for."""
    from engine.capacity import measure_backlog, plan, task_shape
    from engine.entrypoints import load_pipeline

    settings = settings_of(ctx)
    waiting = measure_backlog(load_pipeline(pipeline), Layout.at(settings.storage.root), selection)
    if not waiting.steps:
        console.print("nothing waiting: a run would commit nothing")
        return
    view = Table(title=f"backlog of `{escape(pipeline)}` under {escape(Layout.at(settings.storage.root).root)}")
    for column in ("table", "input MiB", "files", "versions behind", "task shape"):
        view.add_column(column, justify="left" if column in ("table", "task shape") else "right")
    for step in waiting.steps:
        shape = ", ".join(f"{k} {v:g}" for k, v in task_shape(step.ray_options).items())
        view.add_row(escape(step.table), f"{step.bytes / 2**20:.2f}", str(step.files), str(step.versions_behind), shape)
    console.print(view)
    reservation = plan(waiting, bytes_per_task or settings.ray.bytes_per_task)
    if reservation:
        console.print(reservation.describe(planned=True), soft_wrap=True)


@cluster.command()
@click.argument("pipeline")
@click.option("--select", "selection", default=None, help="Tables to consider, as for `medallion run`.")
@click.option("--bytes-per-task", type=click.IntRange(min=1), default=None,
              help="Input bytes one task of a step is sized for (default: the `ray.bytes_per_task` setting).")
@click.option("--release", is_flag=True, help="Clear the request instead, so that idle nodes are removed.")
@click.pass_context
@reported
def reserve(ctx: click.Context, pipeline: str, selection: str | None, bytes_per_task: int | None,
            release: bool) -> None:
    """Ask the cluster's autoscaler now for the nodes PIPELINE's backlog needs (until a run ends or --release).

    Needs a cluster: --address, RAY_ADDRESS or `ray.address` in the settings.
    """
    from engine.capacity import measure_backlog, plan, request
    from engine.entrypoints import load_pipeline
    from engine.runtime import ray_session, resolve_address

    settings = settings_of(ctx)
    if resolve_address(settings.ray) is None:
        raise ClusterConfigError("`medallion cluster reserve` needs a cluster with an autoscaler: pass "
                                 "`--address HOST:PORT` before `cluster`, or set RAY_ADDRESS")
    reservation = None
    if not release:
        reservation = plan(measure_backlog(load_pipeline(pipeline), Layout.at(settings.storage.root), selection),
                           bytes_per_task or settings.ray.bytes_per_task)
    with ray_session(settings.ray):
        request(reservation)
    if reservation:
        console.print(reservation.describe(), soft_wrap=True)
    else:
        console.print("capacity: request cleared; idle nodes are removed after the idle timeout")
