"""`medallion access`: who may do what, and the same roles as object-store policies."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from engine.cli.common import console, reported, settings_of
from engine.errors import GovernanceError
from engine.governance.access import ACTIONS
from engine.layout import Layout


@click.group()
def access() -> None:
    """Roles and permissions (`access` settings)."""


@access.command("show")
@click.option("--actor", default=None, help="Whose roles to show (default: the current actor).")
@click.pass_context
@reported
def show_command(ctx: click.Context, actor: str | None) -> None:
    """The actor's roles and what each lets it read, write and manage."""
    from engine.governance.access import patterns, principal

    settings = settings_of(ctx).access
    who = principal(settings, actor)
    state = "enforced" if settings.enforce else "not enforced (access.enforce is false: everything is allowed)"
    roles = escape(', '.join(who.roles)) or 'none'
    console.print(f"actor `{escape(who.actor)}`, roles: {roles}; access control {state}")
    view = Table()
    for column in ("role", *ACTIONS):
        view.add_column(column)
    for role in who.roles:
        view.add_row(escape(role), *(escape(", ".join(patterns(settings.roles[role], action))) or "-"
                                   for action in ACTIONS))
    console.print(view)


@access.command("check")
@click.argument("action", type=click.Choice(ACTIONS))
@click.argument("resources", nargs=-1, required=True)
@click.pass_context
@reported
def check_command(ctx: click.Context, action: str, resources: tuple[str, ...]) -> None:
    """Exit 0 when the current actor may ACTION every one of RESOURCES (tables, `quarantine.<table>`,
    `landing.<folder>`, `features.<view>`), else name what is refused and exit 1."""
    from engine.governance.access import authorize

    authorize(settings_of(ctx).access, action, resources, "`medallion access check`")  # type: ignore[arg-type]
    console.print(f"allowed: {action} {escape(', '.join(resources))}")


@access.command("policy")
@click.option("--format", "kind", type=click.Choice(["iam", "bucket"]), default="iam", show_default=True,
              help="One IAM identity policy per role, or one bucket policy for every role.")
@click.option("--principal", "principals", multiple=True, metavar="ROLE=ARN",
              help="The IAM principal acting in ROLE (repeatable; required for --format bucket).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the documents into this folder instead of printing them.")
@click.pass_context
@reported
def policy_command(ctx: click.Context, kind: str, principals: tuple[str, ...], out: Path | None) -> None:
    """Render the roles as S3 policy documents for the `s3://` root (--root)."""
    from engine.governance.policies import bucket_policy, identity_policies, render

    settings = settings_of(ctx)
    root = Layout.at(settings.storage.root).root
    if kind == "iam":
        documents = {f"{role}.json": document for role, document in identity_policies(settings.access, root).items()}
    else:
        documents = {"bucket-policy.json": bucket_policy(settings.access, root, _principals(principals))}
    for name, document in documents.items():
        if out is None:
            console.print(f"# {escape(name)}")
            console.print_json(data=document)
        else:
            out.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(render(document))
            console.print(f"wrote {escape(str(out / name))}")


def _principals(given: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for item in given:
        role, sep, arn = item.partition("=")
        if not sep or not role or not arn:
            raise GovernanceError(f"--principal `{item}` is not ROLE=ARN")
        pairs[role.strip()] = arn.strip()
    return pairs
