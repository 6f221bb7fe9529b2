"""A plan as the command line shows it: one row per table, then the diffs of changed definitions."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.changes.plan import TablePlan

_STYLE = {"ingest": "cyan", "build": "green", "rebuild": "yellow", "nothing": "dim"}


def print_plan(console: Console, pipeline: str, plans: Sequence[TablePlan]) -> None:
    """Print what the next run of `pipeline` does to each table, and how changed definitions changed."""
    shown = Table(title=f"plan of `{escape(pipeline)}`", title_justify="left")
    for column in ("table", "action", "why", "rows to read"):
        shown.add_column(column, justify="right" if column == "rows to read" else "left")
    for plan in plans:
        rows = "" if plan.rows_to_read is None or plan.action == "nothing" else \
            f"{plan.rows_to_read:,}" + (" + new" if plan.more_rows else "")
        action = plan.action + (f" ({plan.change_category})" if plan.action == "rebuild" and plan.change_category
                                else "")
        shown.add_row(escape(plan.table), f"[{_STYLE[plan.action]}]{action}[/]",
                      escape("; ".join(plan.reasons)), rows)
    console.print(shown)
    for plan in plans:
        if plan.diff:
            console.print(f"[bold]{escape(plan.table)}[/bold] definition, as built -> now:")
            for line in plan.diff:
                style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim"
                console.print(f"  [{style}]{escape(line)}[/]", soft_wrap=True)
    work = [p for p in plans if p.action != "nothing"]
    console.print(f"{len(work)} of {len(plans)} table(s) to run" if work else "nothing to do")
