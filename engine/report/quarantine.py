"""A table's quarantine as the report shows it: its rows counted by rejection reason, with one example row per
reason, read column by column from the quarantine's Delta table."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.compute as pc

from engine.columns import REJECTED_REASON, RUN_ID
from engine.layout import Layout
from engine.tables import delta
from engine.tables.formats import DeltaStore

MAX_REASONS = 8
MAX_VALUE_CHARS = 120
NO_REASON = "(no reason recorded)"
COUNT = "count_all"


@dataclass(frozen=True)
class QuarantineReason:
    """One rejection reason: how many rows of the quarantine carry it and one of them.

    Attributes:
        example: the example row's columns (reason and run id left out) as text.
        run_id: the run that rejected the example row, when recorded.
    """

    reason: str
    rows: int
    example: dict[str, str]
    run_id: str | None


@dataclass(frozen=True)
class Quarantine:
    """The rows of a table's quarantine by reason, most frequent first, at most `MAX_REASONS` of them."""

    rows: int
    reasons: tuple[QuarantineReason, ...]
    more_reasons: int

    @property
    def more_rows(self) -> int:
        """Rows whose reason is not among `reasons`."""
        return self.rows - sum(r.rows for r in self.reasons)


def read_quarantine(layout: Layout, table: str, max_reasons: int = MAX_REASONS,
                    examples: bool = True) -> Quarantine | None:
    """The quarantine of `table` (`<layer>.<name>`), None when it has none or it holds no row. Only the reason
    column is read whole; each shown reason's example is the first row found with it (no example row unless
    `examples`: for a reader without the grant to read the quarantine)."""
    uri, name = layout.quarantine(table), f"quarantine.{table}"
    if not delta.table_exists(uri) or REJECTED_REASON not in DeltaStore.schema(uri, name).names:
        return None
    reasons = DeltaStore.read_columns(uri, name, [REJECTED_REASON])
    if reasons.num_rows == 0:
        return None
    counts = (reasons.group_by(REJECTED_REASON).aggregate([([], "count_all")])
              .sort_by([(COUNT, "descending"), (REJECTED_REASON, "ascending")]))
    shown = counts.slice(0, max_reasons)
    dataset = delta.rows_dataset(uri, name)
    found = []
    for reason, rows in zip(shown[REJECTED_REASON].to_pylist(), shown[COUNT].to_pylist(), strict=True):
        matching = pc.field(REJECTED_REASON).is_null() if reason is None else pc.field(REJECTED_REASON) == reason
        example = dataset.head(1, filter=matching).to_pylist() if examples else []
        row = example[0] if example else {}
        found.append(QuarantineReason(
            reason=NO_REASON if reason is None else reason, rows=rows,
            example={column: _text(value) for column, value in row.items() if column not in (REJECTED_REASON, RUN_ID)},
            run_id=row.get(RUN_ID)))
    return Quarantine(rows=reasons.num_rows, reasons=tuple(found), more_reasons=counts.num_rows - shown.num_rows)


def _text(value: object) -> str:
    """A value of an example row as short text: binary (an encrypted column) by its size only."""
    if value is None:
        return "null"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    text = str(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"

