"""`medallion lineage`: where a table version, a run or a feature view came from, and what used it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.tree import Tree

from engine.cli.common import console, reported, settings_of
from engine.errors import EngineError

if TYPE_CHECKING:
    from engine.lineage.graph import Node


@click.command()
@click.argument("target")
@click.option("--version", type=int, default=None, help="Version of the table (default: the latest built).")
@click.option("--upstream/--no-upstream", default=True, show_default=True, help="Show what it was built from.")
@click.option("--downstream/--no-downstream", default=True, show_default=True,
              help="Show the tables, feature views and MLflow runs that read it.")
@click.option("--key", default=None, metavar="COLUMN=VALUE",
              help="Narrow landing files to those holding rows with this value (e.g. customer_id=42).")
@click.option("--json", "as_json", is_flag=True, help="Print the lineage as JSON.")
@click.pass_context
@reported
def lineage(ctx: click.Context, target: str, version: int | None, upstream: bool, downstream: bool,
            key: str | None, as_json: bool) -> None:
    """Lineage of TARGET: a table (`silver.orders`), a feature view (`features.customer_stats`) or a run id."""
    from engine.governance.access import authorize
    from engine.lineage.graph import FEATURES_PREFIX, Lineage, mlflow_search
    from engine.training.tracking import configured_uri, existing_tracking_uri

    settings = settings_of(ctx)
    root = settings.storage.root
    narrow = _key(key)
    tracking = existing_tracking_uri(root, configured_uri(settings))  # a root nothing was tracked in has no runs
    graph = Lineage(root, mlflow_search(tracking) if tracking else None)
    trees: list[tuple[str, Node]] = []
    if target.startswith(FEATURES_PREFIX):
        authorize(settings.access, "read", [target], "`medallion lineage`")
        trees.append(("upstream", graph.feature_view(target.removeprefix(FEATURES_PREFIX), narrow)))
    elif "." in target:
        authorize(settings.access, "read", [target], "`medallion lineage`")
        version = graph.latest_version(target) if version is None else version
        if upstream:
            trees.append(("upstream", graph.upstream(target, version, narrow)))
        if downstream:
            trees.append(("downstream", graph.downstream(target, version)))
    else:
        trees += [("upstream", node) for node in graph.run(target)]
    if as_json:
        console.print_json(json.dumps([{"direction": d, **n.as_dict()} for d, n in trees]))
        return
    for direction, node in trees:
        console.print(_tree(Tree(f"[bold]{direction}[/bold] of {escape(node.label())}"), node))


def _tree(tree: Tree, node: Node) -> Tree:
    for child in node.children:
        _tree(tree.add(escape(child.label())), child)
    return tree


def _key(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    column, sep, value = text.partition("=")
    if not sep or not column.strip():
        raise EngineError(f"--key `{text}` is not COLUMN=VALUE")
    return column.strip(), value.strip()
