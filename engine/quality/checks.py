"""Declarations of data-quality checks: a pandera contract, SQL expectations, references, unique keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import PipelineDefinitionError
from engine.quality.results import Action

ACTIONS: tuple[Action, ...] = ("warn", "quarantine", "fail")


def _check_action(action: str, what: str) -> None:
    if action not in ACTIONS:
        raise PipelineDefinitionError(f"{what}: action `{action}` is not one of {', '.join(ACTIONS)}")


@dataclass(frozen=True)
class Expect:
    """A row-level expectation: every row should satisfy a SQL predicate over its columns.

    A row where the predicate is false fails; like a SQL CHECK constraint, a NULL result passes, so write
    `x IS NOT NULL AND ...` to require a value.

    Attributes:
        name: the check's name in metrics, alerts and quarantine reasons.
        predicate: SQL boolean expression, e.g. `quantity > 0 AND unit_price >= 0`.
        action: `warn`, `quarantine` or `fail`.
        threshold: highest acceptable failure rate (0..1); above it an alert is raised.
    """

    name: str
    predicate: str
    action: Action = "quarantine"
    threshold: float | None = None

    def __post_init__(self) -> None:
        _check_action(self.action, f"expectation `{self.name}`")


@dataclass(frozen=True)
class References:
    """Every non-null value of `column` must exist as `key` in the latest version of table `table`.

    Attributes:
        column: the referring column of this table.
        table: the referenced table, `<layer>.<name>`; it must be an upstream table or already exist.
        key: the referenced column; defaults to `column`.
        action: `warn`, `quarantine` or `fail`.
        threshold: highest acceptable failure rate (0..1).
    """

    column: str
    table: str
    key: str | None = None
    action: Action = "quarantine"
    threshold: float | None = None

    def __post_init__(self) -> None:
        _check_action(self.action, f"reference `{self.column}` -> `{self.table}`")

    @property
    def name(self) -> str:
        """`<column>->` `<table>.<key>`."""
        return f"{self.column}->{self.table}.{self.key or self.column}"


@dataclass(frozen=True)
class Quality:
    """Every check of one table.

    Attributes:
        contract: a `pandera.polars.DataFrameModel`: column types, nullability and value checks, run on
            every batch of accepted rows. A column's checks take the action in its Field metadata
            (`metadata={"action": "fail", "threshold": 0.01}`), else `default_action`. A missing column
            or a wrong type fails the table.
        expectations: SQL expectations.
        references: values that must exist in another table.
        unique: columns whose combined values must be unique over the whole table written (checked
            before the commit; action `fail` or `warn`).
        unique_action: action of the `unique` check.
        default_action: action of contract checks that declare none.
        conserves_rows: every input row is accounted for: rows in = rows written + quarantined +
            duplicates dropped; the runner fails the table otherwise.
    """

    contract: Any = None
    expectations: tuple[Expect, ...] = ()
    references: tuple[References, ...] = ()
    unique: tuple[str, ...] = ()
    unique_action: Action = "fail"
    default_action: Action = "quarantine"
    conserves_rows: bool = False

    def __post_init__(self) -> None:
        _check_action(self.default_action, "quality default")
        if self.unique_action == "quarantine":
            raise PipelineDefinitionError("the `unique` check supports the actions `warn` and `fail`")
        names = [e.name for e in self.expectations] + [r.name for r in self.references]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise PipelineDefinitionError(f"check names must be unique; repeated: {', '.join(duplicated)}")
