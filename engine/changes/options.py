"""`--change-kind`: the user's word on whether a definition change is breaking, for one table or for all."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import click

from engine.changes.classify import CHANGE_CATEGORIES, ChangeCategory

ChangeKindOption = ChangeCategory | Mapping[str, ChangeCategory] | None


def _parse(_: click.Context, __: click.Parameter, values: tuple[str, ...]) -> ChangeKindOption:
    for_all = [v for v in values if "=" not in v]
    by_table = dict(v.split("=", 1) for v in values if "=" in v)
    for kind in [*for_all, *by_table.values()]:
        if kind not in CHANGE_CATEGORIES:
            raise click.BadParameter(f"`{kind}` is not a change kind; use {' or '.join(CHANGE_CATEGORIES)}, "
                                     "or TABLE=KIND")
    if for_all and (by_table or len(set(for_all)) > 1):
        raise click.BadParameter("give either one KIND for every changed table or TABLE=KIND per table")
    if for_all:
        return cast(ChangeCategory, for_all[0])
    return cast(dict[str, ChangeCategory], by_table) or None


def change_kind_option(function: Any) -> Any:
    """The `--change-kind` option, parsed into one kind or a kind per table."""
    return click.option(
        "--change-kind", "change_kind", multiple=True, callback=_parse, metavar="[TABLE=]KIND",
        help="Treat definition changes as `breaking` (rebuild the table and everything downstream), "
             "`non-breaking` (rebuild the table only) or `forward-only` (rebuild nothing: the new definition applies "
             "to new rows), for every changed table or as TABLE=KIND (repeatable).")(function)
