"""`medallion features ...`: apply the feature repository, materialize, serve and look up online features."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine.cli.common import Bar, console, errors, reported, settings_of
from engine.errors import FeatureStoreError

if TYPE_CHECKING:
    pass

if TYPE_CHECKING:
    from feast import FeatureStore

    from engine.features.materialize import MaterializationReport


@click.group("features")
@click.option("--repo", envvar="MEDALLION_FEATURE_REPO", default=None, type=click.Path(file_okay=False),
              help="Feature repository (definitions, feature_store.yaml; default `features.repo`: ./features).")
@click.option("--feast-config", envvar="MEDALLION_FEAST_CONFIG", default=None, type=click.Path(dir_okay=False),
              help="YAML merged over the defaults, e.g. features/production.yaml (Redis, SQL registry; default "
                   "`features.feast_config`).")
@click.pass_context
def features(ctx: click.Context, repo: str | None, feast_config: str | None) -> None:
    """The Feast feature store over the gold tables under --root."""
    ctx.obj = {"repo": repo, "overlay": feast_config}


def _repo(ctx: click.Context) -> str:
    """The feature repository: --repo (or MEDALLION_FEATURE_REPO), else the `features.repo` setting."""
    from engine.features.repo import repo_of

    return repo_of(settings_of(ctx), ctx.find_object(dict)["repo"])[0]


def _store(ctx: click.Context) -> FeatureStore:
    from engine.features.repo import store_of

    return store_of(settings_of(ctx), ctx.find_object(dict)["repo"], ctx.find_object(dict)["overlay"])


@features.command()
@click.pass_context
@reported
def apply(ctx: click.Context) -> None:
    """Register the repository's entities, views and services (and drop the ones it no longer defines)."""
    from engine.features.repo import apply_repo, load_definitions

    store = _store(ctx)
    report = apply_repo(store, load_definitions(_repo(ctx)), access=settings_of(ctx).access)
    for change, kinds in report.changes.items():
        for kind, names in kinds.items():
            console.print(f"{change} {kind}: {escape(', '.join(names))}")
    if not report.changes:
        console.print(f"registry of project `{escape(store.project)}` is up to date")


@features.command()
@click.option("--incremental", is_flag=True, help="Apply only what changed since the last materialization.")
@click.option("--end", "end", default=None, help="Point in time the online rows represent (ISO 8601; default now).")
@click.option("--view", "views", multiple=True, help="Feature view to materialize (repeatable; default all).")
@click.pass_context
@reported
def materialize(ctx: click.Context, incremental: bool, end: str | None, views: tuple[str, ...]) -> None:
    """Bring the online store to the features at END of the tables' current versions."""
    from engine.features.materialize import materialize as run
    from engine.runtime import ray_session

    settings = settings_of(ctx)
    moment = _timestamp(end) if end else None
    with ray_session(settings.ray), _view_progress() as on_view:
        reports = run(_store(ctx), end=moment, incremental=incremental, views=list(views) or None, on_view=on_view)
    print_reports(reports, incremental)


def print_reports(reports: list[MaterializationReport], incremental: bool) -> None:
    """A table of what each view's materialization did, and a warning for views left without rows."""
    view = Table(title="materialization" + (" (incremental)" if incremental else ""))
    for column in ("view", "table", "version", "end (UTC)", "written", "deleted", "unchanged", "online rows"):
        view.add_column(column, justify="right" if column not in ("view", "table", "end (UTC)") else "left")
    for r in reports:
        view.add_row(escape(r.view), escape(r.table), str(r.version), r.end.strftime("%Y-%m-%d %H:%M:%S"),
                     f"{r.written:,}",
                     f"{r.deleted:,}", f"{r.unchanged:,}", f"{r.online_rows:,}")
    console.print(view)
    for r in reports:
        if not r.online_rows:
            console.print(f"`{escape(r.view)}` has no row at or before {r.end:%Y-%m-%d %H:%M:%S} within its TTL; "
                          "pass --end to materialize as of a time the table covers", style="yellow")


@contextlib.contextmanager
def _view_progress() -> Iterator[Callable[[str | None, int, int], None] | None]:
    """A progress bar of feature views materialized, on stderr when it is a terminal."""
    if not errors.is_terminal:
        yield None
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=errors, transient=True, redirect_stdout=console.is_terminal,
                  redirect_stderr=True) as progress:
        bar: Bar | None = None

        def on_view(view: str | None, done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = Bar(progress, total, "materializing")
            bar.update(f"materializing `{view}`" if view else "materialized", done)

        yield on_view


@features.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=6566, show_default=True)
@click.option("--max-body", type=int, default=1 << 20, show_default=True, help="Largest request body in bytes.")
@click.pass_context
@reported
def serve(ctx: click.Context, host: str, port: int, max_body: int) -> None:
    """Serve online features over HTTP (POST /get-online-features, GET /health, GET /metrics).

    With access control on (`access.enforce`), the Feast configuration needs `auth` (OIDC) and the registry
    the roles' permissions (`medallion features apply`); the server refuses to start otherwise."""
    from engine.features.server import check_access
    from engine.features.server import serve as run

    store, access = _store(ctx), settings_of(ctx).access
    check_access(store, access)
    console.print(f"serving online features on http://{escape(host)}:{port}/get-online-features")
    run(store, host, port, max_body=max_body, access=access)


@features.command()
@click.option("--entity", "entities", multiple=True, required=True, help="KEY=VALUE, e.g. customer_id=42.")
@click.option("--feature", "refs", multiple=True, help="view:feature (repeatable).")
@click.option("--service", default=None, help="A feature service instead of --feature.")
@click.pass_context
@reported
def get(ctx: click.Context, entities: tuple[str, ...], refs: tuple[str, ...], service: str | None) -> None:
    """Look up online features of one entity row and print them as JSON."""
    from feast.errors import FeastError

    store = _store(ctx)
    if bool(refs) == bool(service):
        raise FeatureStoreError("give either --feature (one or more) or --service")
    row = dict(_pair(item) for item in entities)
    _check_lookup(store, row, refs, service)
    wanted: Any = store.get_feature_service(service) if service else list(refs)
    try:
        values = store.get_online_features(features=wanted, entity_rows=[row]).to_dict()
    except FeastError as err:
        raise FeatureStoreError(f"online lookup failed: {err}") from None
    console.print_json(json.dumps({k: v[0] for k, v in values.items()}, default=str))


def _check_lookup(store: FeatureStore, row: dict[str, Any], refs: tuple[str, ...], service: str | None) -> None:
    """Check a lookup against the registry as the feature server checks a request.

    Raises:
        FeatureStoreError: naming the option at fault (`--service`, `--feature`, `--entity`) and what it accepts.
    """
    from engine.features.problems import RequestProblem
    from engine.features.validation import catalog_of, check_request

    request = {"feature_service": service} if service else {"features": list(refs)}
    try:
        check_request({**request, "entities": {key: [value] for key, value in row.items()}}, catalog_of(store))
    except RequestProblem as problem:
        details = problem.details
        if problem.code == "unknown_feature_service":
            known = ", ".join(details["known"]) or "none"
            message = (f"--service `{service}`: no such feature service in project `{store.project}` (known: {known}); "
                       "define it and run `medallion features apply`")
        elif problem.code == "wrong_type" and "entity" in details:
            key, kind = details["entity"], details["expected"].lower()
            message = f"--entity {key}={row[key]}: `{key}` is a key of type {kind}; pass a value of that type"
        else:
            listed = details.get("known") or details.get("expected")
            message = str(problem) + (f" (expected: {', '.join(listed)})" if listed else "")
        raise FeatureStoreError(message, feature=service) from None


def _pair(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep:
        raise FeatureStoreError(f"--entity `{item}` is not KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _timestamp(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FeatureStoreError(f"--end `{text}` is not an ISO 8601 time such as 2026-06-01T00:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
