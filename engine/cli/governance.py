"""`medallion erase` and `medallion audit`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from engine.cli.common import console, reported, settings_of
from engine.errors import GovernanceError
from engine.layout import Layout

if TYPE_CHECKING:
    from feast import FeatureStore

    from engine.config import Settings
    from engine.pipeline import Pipeline


@click.command()
@click.option("--customer-id", "subject_id", required=True,
              help="The data subject's id, as held by the columns the pipeline declares with `subject=`.")
@click.option("--reason", default=None, help="Why (recorded; default: data subject erasure request).")
@click.option("--pipeline", "pipeline_names", multiple=True,
              help="Pipeline declaring the subject columns (repeatable; default: every pipeline run under --root).")
@click.option("--repo", envvar="MEDALLION_FEATURE_REPO", default=None, type=click.Path(file_okay=False),
              help="Feature repository whose online store is erased too (default `features.repo`: ./features).")
@click.option("--feast-config", envvar="MEDALLION_FEAST_CONFIG", default=None, type=click.Path(dir_okay=False),
              help="YAML merged over the Feast defaults (e.g. features/production.yaml).")
@click.pass_context
@reported
def erase(ctx: click.Context, subject_id: str, reason: str | None, pipeline_names: tuple[str, ...], repo: str | None,
          feast_config: str | None) -> None:
    """Erase a data subject from every table, change log, quarantine, landing file and the online store."""
    from engine.governance.erase import erase_subject
    from engine.runtime import ray_session

    settings = settings_of(ctx)
    layout = Layout.at(settings.storage.root)
    pipelines = _pipelines(layout, pipeline_names)
    with ray_session(settings.ray):
        report = erase_subject(settings, pipelines, subject_id.strip(), reason=reason,
                               store=_store(settings, repo, feast_config))
    for item in report.tables:
        version = "-" if item.version is None else f"v{item.version}"
        console.print(f"{escape(item.table.ljust(36))} {version:>5}  {item.rows_removed:,} row(s) removed, "
                      f"{item.files_deleted} file(s) deleted")
    for path in report.landing_files:
        console.print(f"landing/{escape(path)}: rewritten without the subject's records")
    for view in report.online_views:
        console.print(f"online store, view `{escape(view)}`: the subject's row deleted")
    console.print(f"erasure {report.run_id} done; audited as subject {escape(report.subject)}")


@click.command()
@click.argument("table", required=False)
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), default=None,
              help="Only operations at or after this UTC time.")
@click.pass_context
@reported
def audit(ctx: click.Context, table: str | None, since: datetime | None) -> None:
    """Who wrote, maintained or erased TABLE (a name or glob; default every table), when, which version, why."""
    from engine.governance.audit import audit_trail

    root = settings_of(ctx).storage.root
    entries = audit_trail(root, table, since.replace(tzinfo=UTC) if since else None)
    if not entries:
        console.print(f"no audited operations under {escape(Layout.at(root).root)}"
                      + (f" for `{escape(table)}`" if table else ""))
        return
    view = Table(title="audit trail" + (f" of {escape(table)}" if table else ""))
    for column in ("when (UTC)", "table", "version", "operation", "actor", "reason", "run"):
        view.add_column(column, justify="right" if column == "version" else "left")
    for entry in entries:
        view.add_row(entry.at.strftime("%Y-%m-%d %H:%M:%S"), escape(entry.table),
                     "" if entry.version is None else str(entry.version), escape(entry.operation),
                     escape(entry.actor or ""), escape(entry.reason or ""), escape(entry.run_id or ""))
    console.print(view)


def _pipelines(layout: Layout, names: tuple[str, ...]) -> list[Pipeline]:
    """The pipelines named, else every pipeline with a run record under the root."""
    from engine.entrypoints import load_pipeline
    from engine.runlog import read_records

    chosen = list(names) or sorted(set(read_records(layout.runs())["pipeline"].to_list()))
    if not chosen:
        raise GovernanceError(f"no pipeline ever ran under {layout.root}; name one with --pipeline")
    return [load_pipeline(name) for name in chosen]


def _store(settings: Settings, repo: str | None, overlay: str | None) -> FeatureStore | None:
    """The Feast store of the root, None when no feature registry was ever applied there."""
    from feast import FeatureStore

    from engine.features.repo import render_config, repo_of

    repo, overlay = repo_of(settings, repo, overlay)
    config = render_config(settings.storage.root, repo if Path(repo).is_dir() else None, overlay=overlay)
    if config.registry.registry_type == "file" and not Path(config.registry.path).exists():
        return None
    return FeatureStore(config=config)
