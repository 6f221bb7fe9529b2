"""Outcomes of data-quality checks: what one check found in one run of one table."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Action = Literal["warn", "quarantine", "fail"]
"""What happens to a row that fails a check: counted (`warn`), moved to quarantine, or the table's commit
is aborted (`fail`)."""


@dataclass(frozen=True)
class CheckResult:
    """One check evaluated over the rows a run wrote to one table.

    Attributes:
        table: `<layer>.<name>`.
        check: the check's name, e.g. `quantity:greater_than(0)` or `known_product`.
        action: what failing rows caused.
        rows_checked: rows the check looked at.
        rows_failed: rows that failed it.
        threshold: the highest failure rate (0..1) the table declares acceptable, None when not declared.
        example: one offending row as JSON text, None when no row failed.
    """

    table: str
    check: str
    action: Action
    rows_checked: int
    rows_failed: int
    threshold: float | None = None
    example: str | None = None

    @property
    def failure_rate(self) -> float:
        """Failed rows over checked rows (0 when nothing was checked)."""
        return self.rows_failed / self.rows_checked if self.rows_checked else 0.0


def combine_results(results: list[CheckResult]) -> list[CheckResult]:
    """One result per (table, check): counts summed over batches, the first example kept."""
    combined: dict[tuple[str, str], CheckResult] = {}
    for result in results:
        key = (result.table, result.check)
        seen = combined.get(key)
        combined[key] = result if seen is None else replace(
            seen,
            rows_checked=seen.rows_checked + result.rows_checked,
            rows_failed=seen.rows_failed + result.rows_failed,
            example=seen.example or result.example,
        )
    return list(combined.values())
