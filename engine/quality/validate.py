"""Row-level validation of one Arrow batch, inside the Ray write tasks.

Rows failing a `quarantine` check get the names of the checks they failed appended to `_rejected_reason`
(the writer routes them to quarantine); `warn` and `fail` checks are counted, with one example row each.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import duckdb
import pandera.polars as pap
import polars as pl
import pyarrow as pa
from pandera.errors import SchemaError, SchemaErrors

from engine.columns import REJECTED_REASON
from engine.quality.checks import Quality
from engine.quality.results import Action, CheckResult

_ROW = "__medallion_row"


@dataclass(frozen=True)
class _Failures:
    """Rows (by position among the checked rows) that failed one check."""

    check: str
    action: Action
    threshold: float | None
    rows: pl.Series


def validate_batch(
    table: pa.Table, quality: Quality, table_name: str, reference_keys: Mapping[str, pa.Array]
) -> tuple[pa.Table, list[CheckResult]]:
    """Run every row-level check of `quality` on the accepted rows of `table`.

    Returns the table with `_rejected_reason` set on rows failing a `quarantine` check, and one result per
    check. Rows already rejected by the table function are not checked again.
    """
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    if REJECTED_REASON not in frame.columns:
        frame = frame.with_columns(pl.lit(None, pl.String).alias(REJECTED_REASON))
    frame = frame.with_row_index(_ROW)
    accepted = frame.filter(pl.col(REJECTED_REASON).is_null())
    checked = accepted.drop(REJECTED_REASON)
    failures = (
        _contract_failures(checked, quality)
        + _expectation_failures(checked, quality)
        + _reference_failures(checked, quality, reference_keys)
    )
    results = [_result(table_name, f, checked) for f in failures]
    quarantined = [f for f in failures if f.action == "quarantine" and f.rows.len()]
    if quarantined:
        reasons = (
            pl.concat([pl.DataFrame({_ROW: f.rows, "check": [f.check] * f.rows.len()}) for f in quarantined])
            .group_by(_ROW, maintain_order=True)
            .agg(pl.col("check").str.join("; ").alias("__checks"))
        )
        frame = frame.join(reasons, on=_ROW, how="left").with_columns(
            pl.coalesce(REJECTED_REASON, pl.lit("failed checks: ") + pl.col("__checks")).alias(REJECTED_REASON)
        ).drop("__checks")
    return frame.drop(_ROW).to_arrow(), results


def _result(table_name: str, failures: _Failures, checked: pl.DataFrame) -> CheckResult:
    example = None
    if failures.rows.len():
        row = checked.filter(pl.col(_ROW) == failures.rows[0]).drop(_ROW).row(0, named=True)
        example = json.dumps(row, default=str)
    return CheckResult(
        table=table_name,
        check=failures.check,
        action=failures.action,
        rows_checked=checked.height,
        rows_failed=failures.rows.n_unique(),
        threshold=failures.threshold,
        example=example,
    )


def _contract_failures(checked: pl.DataFrame, quality: Quality) -> list[_Failures]:
    if quality.contract is None:
        return []
    schema: pap.DataFrameSchema = quality.contract.to_schema()
    data = checked.drop(_ROW)
    try:
        schema.validate(data, lazy=True)
        cases = None
    except SchemaErrors as err:
        cases = err.failure_cases
    except SchemaError as err:
        cases = err.failure_cases if isinstance(err.failure_cases, pl.DataFrame) else None
        if cases is None:
            return [_Failures(f"contract:{err.reason_code}", "fail", None, checked[_ROW])]
    failures = []
    for name, column in schema.columns.items():
        metadata = column.metadata or {}
        action: Action = metadata.get("action", quality.default_action)
        threshold = metadata.get("threshold")
        for check in _check_names(column):
            rows = _failing_rows(cases, checked, name, check)
            failures.append(_Failures(f"{name}:{check}", action, threshold, rows))
    failures += _schema_level_failures(cases, checked)
    return failures


def _check_names(column: pap.Column) -> list[str]:
    names = [check.error or check.name for check in column.checks]
    if not column.nullable:
        names.insert(0, "not_nullable")
    if column.unique:
        names.append("field_uniqueness")
    return names


def _failing_rows(cases: pl.DataFrame | None, checked: pl.DataFrame, column: str, check: str) -> pl.Series:
    if cases is None:
        return pl.Series(_ROW, [], pl.UInt32)
    positions = cases.filter(
        (pl.col("column") == column) & (pl.col("check") == check) & pl.col("index").is_not_null()
    )["index"].cast(pl.UInt32)
    return checked[_ROW].gather(positions.unique())


def _schema_level_failures(cases: pl.DataFrame | None, checked: pl.DataFrame) -> list[_Failures]:
    """Missing columns and wrong types: every row fails and the table's commit is aborted."""
    if cases is None:
        return []
    table_level = cases.filter(pl.col("index").is_null())
    return [
        _Failures(f"{row['column'] or 'table'}:{row['check']}", "fail", None, checked[_ROW])
        for row in table_level.unique(subset=["column", "check"], maintain_order=True).iter_rows(named=True)
    ]


def _expectation_failures(checked: pl.DataFrame, quality: Quality) -> list[_Failures]:
    """Evaluate every expectation in one DuckDB query over the batch (zero-copy from Arrow)."""
    if not quality.expectations:
        return []
    outcomes = [f"({e.predicate}) AS \"{i}\"" for i, e in enumerate(quality.expectations)]
    with duckdb.connect() as db:
        db.execute("SET TimeZone = 'UTC'")
        db.register("batch", checked.to_arrow())
        try:
            verdicts = db.sql(f"SELECT {_ROW}, {', '.join(outcomes)} FROM batch").pl()
        except duckdb.Error as err:
            names = ", ".join(f"`{e.name}`" for e in quality.expectations)
            raise ValueError(f"expectations {names} cannot be evaluated: {err}") from None
    return [
        _Failures(e.name, e.action, e.threshold, verdicts.filter(pl.col(str(i)).not_())[_ROW])
        for i, e in enumerate(quality.expectations)
    ]


def _reference_failures(
    checked: pl.DataFrame, quality: Quality, reference_keys: Mapping[str, pa.Array]
) -> list[_Failures]:
    failures = []
    for reference in quality.references:
        keys = pl.Series(reference_keys[reference.name])
        column = pl.col(reference.column)
        failed = checked.filter(column.is_not_null() & ~column.is_in(keys.implode()))[_ROW]
        failures.append(_Failures(reference.name, reference.action, reference.threshold, failed))
    return failures
