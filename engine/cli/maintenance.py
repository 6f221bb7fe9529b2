"""`medallion maintain ...` (optimize, vacuum, rotate-keys, pins) and `medallion backup ...` (take, verify,
restore)."""

from __future__ import annotations

import dataclasses
import functools
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from engine.cli.common import console, reported, settings_of
from engine.errors import EngineError, MaintenanceError
from engine.layout import Layout
from engine.maintenance.policy import Maintenance
from engine.tables.timetravel import version_as_of

if TYPE_CHECKING:
    from engine.config import Settings
    from engine.pipeline import TableDefinition


@click.group()
def maintain() -> None:
    """Compact, z-order and vacuum tables; pin versions that readers need."""


def _tables(layout: Layout, table: str | None) -> list[str]:
    from engine.status import list_tables

    tables = [table] if table else list(list_tables(layout))
    if not tables:
        raise MaintenanceError(f"no tables under {layout.root}; run a pipeline first")
    return tables


def _definition(settings: Settings, table: str, pipeline_name: str | None, instead: str) -> TableDefinition | None:
    """The table's declaration in `pipeline_name`, else in the pipeline its last commit names; None when
    neither is known or loadable (saying so, and what is done `instead`)."""
    from engine.entrypoints import load_pipeline
    from engine.tables.formats import TableFormats

    uri = Layout.at(settings.storage.root).location(table)
    name = pipeline_name or TableFormats(settings).at(uri).last_commit_value(uri, table, "pipeline")
    if name is None:
        return None
    try:
        return load_pipeline(name).tables.get(table)
    except EngineError as err:
        if pipeline_name is not None:
            raise
        console.print(f"{escape(table)}: pipeline `{escape(name)}` cannot be loaded ({escape(str(err))}); {instead}")
        return None


def _declared(settings: Settings, table: str, pipeline_name: str | None) -> Maintenance:
    """The table's maintenance declaration (see `_definition`); the defaults when it is unknown."""
    definition = _definition(settings, table, pipeline_name, "using the default maintenance")
    return definition.maintenance if definition is not None else Maintenance()


@maintain.command()
@click.argument("table", required=False)
@click.option("--pipeline", "pipeline_name", default=None,
              help="Pipeline declaring the tables' maintenance (default: the one named in each table's last commit).")
@click.option("--z-order", "z_order", default=None, help="Comma-separated columns to cluster by (overrides the declaration).")
@click.option("--target-file-mb", type=click.IntRange(min=1), default=None,
              help="Size of compacted files (default: the declaration, else storage.target_file_mb).")
@click.option("--reason", default="manual optimize", show_default=True, help="Recorded in each optimize commit.")
@click.pass_context
@reported
def optimize(ctx: click.Context, table: str | None, pipeline_name: str | None, z_order: str | None,
             target_file_mb: int | None, reason: str) -> None:
    """Compact TABLE's (default: every table's) small files and z-order them by the declared columns."""
    from engine.governance.access import authorize
    from engine.maintenance.optimize import optimize_table
    from engine.runtime import ray_session

    settings = settings_of(ctx)
    layout = Layout.at(settings.storage.root)
    tables = _tables(layout, table)
    authorize(settings.access, "manage", tables, "`medallion maintain optimize`")
    with ray_session(settings.ray):
        for name in tables:
            policy = _declared(settings, name, pipeline_name)
            if z_order is not None:
                policy = dataclasses.replace(policy, z_order=tuple(c.strip() for c in z_order.split(",") if c.strip()))
            if target_file_mb is not None:
                policy = dataclasses.replace(policy, target_file_mb=target_file_mb)
            done = optimize_table(layout.location(name), name, storage=settings.storage, policy=policy, reason=reason)
            how = (" within buckets" if done.bucketed else "") + (f", z-ordered by {', '.join(done.z_order)}"
                                                                   if done.z_order else "")
            if done.version is None:
                console.print(f"{escape(name)}: nothing to compact ({done.files_before} files)")
            else:
                console.print(f"{escape(name)}: {done.files_before} files -> {done.files_after}{escape(how)} "
                              f"(v{done.version})")


@maintain.command()
@click.argument("table", required=False)
@click.option("--retention-hours", "hours", type=click.IntRange(min=0), default=None,
              help="Delete files removed longer ago than this (default: the layer's maintenance.retention_hours).")
@click.option("--force", is_flag=True, help="Accept a retention below maintenance.min_retention_hours.")
@click.option("--dry-run", is_flag=True, help="List the files that would be deleted; delete nothing.")
@click.option("--reason", default="manual vacuum", show_default=True, help="Recorded in each vacuum commit.")
@click.pass_context
@reported
def vacuum(ctx: click.Context, table: str | None, hours: int | None, force: bool, dry_run: bool, reason: str) -> None:
    """Delete data files TABLE (default: every table) no longer references, older than the retention; the
    files of pinned versions are kept."""
    from engine.governance.access import authorize
    from engine.maintenance.vacuum import vacuum_table

    settings = settings_of(ctx)
    layout = Layout.at(settings.storage.root)
    tables = _tables(layout, table)
    authorize(settings.access, "manage", tables, "`medallion maintain vacuum`")
    for name in tables:
        done = vacuum_table(layout, name, settings=settings.maintenance, hours=hours, force=force, dry_run=dry_run,
                            reason=reason)
        kept = f"; kept pinned version(s) {', '.join(map(str, done.kept_versions))}" if done.kept_versions else ""
        verb = "would delete" if dry_run else "deleted"
        console.print(f"{escape(name)}: {verb} {len(done.files)} file(s) removed more than {done.retention_hours} h "
                      f"ago{kept}")
        for path in done.files if dry_run else []:
            console.print(f"  {escape(path)}")


@maintain.command("rotate-keys")
@click.argument("table", required=False)
@click.option("--pipeline", "pipeline_name", default=None,
              help="Pipeline declaring the tables (default: the one named in each table's last commit); its keys "
                   "bind the values of tables written only in the first encryption format.")
@click.option("--reason", default="key rotation", show_default=True, help="Recorded in each rewrite commit.")
@click.pass_context
@reported
def rotate_keys(ctx: click.Context, table: str | None, pipeline_name: str | None, reason: str) -> None:
    """Re-encrypt the encrypted columns of TABLE (default: every table) and its change log under the current
    column key, reading older values with `encryption.previous_keys`."""
    from engine.governance.access import authorize
    from engine.governance.secrets import column_keys
    from engine.kinds import key_columns
    from engine.maintenance.rotate import rotate_table
    from engine.run.outcome import new_run_id
    from engine.runtime import ray_on_demand

    settings = settings_of(ctx)
    layout = Layout.at(settings.storage.root)
    tables = _tables(layout, table)
    authorize(settings.access, "manage", tables, "`medallion maintain rotate-keys`")
    keys = column_keys(settings.encryption, "`medallion maintain rotate-keys`")
    run_id = new_run_id()
    with ray_on_demand(settings.ray) as need_ray:
        for name in tables:
            @functools.cache
            def declared(name: str = name) -> tuple[str, ...] | None:
                definition = _definition(settings, name, pipeline_name, "its key columns are unknown")
                return None if definition is None else key_columns(definition.kind)

            done = rotate_table(settings, name, keys, declared_keys=declared, run_id=run_id, reason=reason,
                                need_ray=need_ray)
            if done is None:
                if table is not None:
                    console.print(f"{escape(name)}: no encrypted columns")
                continue
            version = f" (v{done.version})" if done.version is not None else ""
            console.print(f"{escape(name)}: {done.values:,} value(s) re-encrypted{version}, "
                          f"{done.change_log_values:,} in its "
                          f"change log; every value is under key {escape(keys.current.key_id)}")


@maintain.command("pin")
@click.argument("table")
@click.option("--as-of", "as_of", default=None, help="Version or ISO time to pin (default: the latest version).")
@click.option("--who", required=True, help="The reader that needs the version (e.g. 'model churn v3').")
@click.option("--hours", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Lapse after this many hours (default: until unpinned).")
@click.pass_context
@reported
def pin_command(ctx: click.Context, table: str, as_of: str | None, who: str, hours: float | None) -> None:
    """Keep a version of TABLE readable through vacuums."""
    from engine.governance.access import authorize
    from engine.maintenance.pins import pin
    from engine.status import table_location

    settings = settings_of(ctx)
    authorize(settings.access, "read", [table], "pinning a version")
    layout = Layout.at(settings.storage.root)
    version = version_as_of(table_location(layout, table), table, as_of)
    until = datetime.now(UTC) + timedelta(hours=hours) if hours is not None else None
    made = pin(layout, table, version, who=who, until=until)
    console.print(f"pinned {escape(table)} v{version} for {escape(who)} as `{escape(made.id)}`"
                  + (f" until {until:%Y-%m-%d %H:%M} UTC" if until else ""))


@maintain.command("unpin")
@click.argument("pin_id")
@click.pass_context
@reported
def unpin_command(ctx: click.Context, pin_id: str) -> None:
    """Remove pin PIN_ID."""
    from engine.maintenance.pins import unpin

    removed = unpin(Layout.at(settings_of(ctx).storage.root), pin_id)
    console.print(f"unpinned {escape(removed.table)} v{removed.version} ({escape(removed.who)})")


@maintain.command("pins")
@click.argument("table", required=False)
@click.pass_context
@reported
def pins_command(ctx: click.Context, table: str | None) -> None:
    """Pinned versions (of TABLE, or of every table)."""
    from engine.maintenance.pins import list_pins

    layout = Layout.at(settings_of(ctx).storage.root)
    now = datetime.now(UTC)
    view = Table(title=f"pins under {escape(layout.root)}")
    for column in ("pin", "table", "version", "who", "until (UTC)", "active"):
        view.add_column(column)
    for item in list_pins(layout, table):
        view.add_row(escape(item.id), escape(item.table), str(item.version), escape(item.who),
                     item.until.strftime("%Y-%m-%d %H:%M") if item.until else "", "yes" if item.active(now) else "no")
    console.print(view)


@click.group(invoke_without_command=True)
@click.option("--to", "destination", default=None, help="Folder or URI to write the backup to (new or empty).")
@click.pass_context
@reported
def backup(ctx: click.Context, destination: str | None) -> None:
    """Back up every table's current version and the metadata under --root to --to DEST."""
    if ctx.invoked_subcommand is not None:
        return
    from engine.governance.access import authorize
    from engine.maintenance.backup import backup as take_backup
    from engine.runtime import ray_on_demand
    from engine.status import list_tables

    if destination is None:
        raise MaintenanceError("give --to DEST (a new folder or URI), or a subcommand: verify, restore")
    settings = settings_of(ctx)
    layout = Layout.at(settings.storage.root)
    authorize(settings.access, "read", list_tables(layout), "a backup")
    with ray_on_demand(settings.ray) as need_ray:
        manifest = take_backup(layout, destination, need_ray)
    console.print(f"backed up {len(manifest.tables)} tables and {len(manifest.files)} metadata files of "
                  f"{escape(layout.root)} to {escape(destination)}")


@backup.command("verify")
@click.argument("source")
@click.pass_context
@reported
def verify_command(ctx: click.Context, source: str) -> None:
    """Restore the backup at SOURCE into a scratch root and compare it with its manifest."""
    from engine.maintenance.backup import verify_backup
    from engine.runtime import ray_on_demand

    with ray_on_demand(settings_of(ctx).ray) as need_ray:
        problems = verify_backup(source, need_ray=need_ray)
    if problems:
        raise MaintenanceError(f"backup `{source}` failed verification ({len(problems)} problem(s)): "
                               + "; ".join(problems), path=source)
    console.print(f"backup {escape(source)} verified: every table's rows and content hash match its manifest")


@backup.command("restore")
@click.argument("source")
@click.pass_context
@reported
def restore_command(ctx: click.Context, source: str) -> None:
    """Copy the backup at SOURCE into --root, which must hold no table yet."""
    from engine.governance.access import authorize
    from engine.maintenance.backup import restore_backup

    settings = settings_of(ctx)
    authorize(settings.access, "manage", ["*"], "restoring a backup")
    root = Layout.at(settings.storage.root).root
    manifest = restore_backup(source, root)
    console.print(f"restored {len(manifest.tables)} tables of the backup taken {manifest.created_at} into "
                  f"{escape(root)}")
