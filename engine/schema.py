"""Schema evolution of derived tables: what changed between a table's schema and a run's output, and
whether the table's declared policy allows it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from engine.errors import SchemaEvolutionError

ChangeType = Literal["added", "dropped", "renamed", "widened", "retyped"]

_INTEGERS = [pa.int8(), pa.int16(), pa.int32(), pa.int64()]
_WIDER: dict[pa.DataType, set[pa.DataType]] = {
    **{small: set(_INTEGERS[i + 1:]) | {pa.float64()} for i, small in enumerate(_INTEGERS)},
    pa.float32(): {pa.float64()},
    pa.date32(): {pa.timestamp("us", tz="UTC")},
}


def is_widening(before: pa.DataType, after: pa.DataType) -> bool:
    """Whether every value of `before` is exactly representable in `after` (int8 -> int64, float32 ->
    float64, integers -> float64, date -> timestamp, and decimals gaining digits without losing scale)."""
    if pa.types.is_decimal(before) and pa.types.is_decimal(after):
        return after.scale >= before.scale and after.precision - after.scale >= before.precision - before.scale
    return after in _WIDER.get(before, set())


class SchemaEvolution(BaseModel):
    """The schema changes a table accepts. Added columns are always accepted.

    Attributes:
        widening: `allow` (the default) accepts a column type that holds every old value exactly;
            `fail` refuses any type change not listed in `retype`.
        drop: columns the table's output may stop carrying; they are removed from the table.
        rename: old name -> new name; existing values move to the new name.
        retype: columns whose type may change in any way (narrowing included); existing values are cast.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    widening: Literal["allow", "fail"] = "allow"
    drop: tuple[str, ...] = ()
    rename: dict[str, str] = {}
    retype: tuple[str, ...] = ()


@dataclass(frozen=True)
class SchemaChange:
    """One difference between a table's schema and a new output's."""

    column: str
    change: ChangeType
    before: str | None = None
    after: str | None = None

    def describe(self) -> str:
        """e.g. "`amount` retyped from double to int32"."""
        if self.change == "renamed":
            return f"`{self.column}` renamed to `{self.after}`"
        if self.change in ("widened", "retyped"):
            return f"`{self.column}` {self.change} from {self.before} to {self.after}"
        return f"`{self.column}` {self.change}" + (f" ({self.after or self.before})" if self.after or self.before else "")


def changes_between(
    table: str, current: pa.Schema, incoming: pa.Schema, evolution: SchemaEvolution
) -> list[SchemaChange]:
    """What `incoming` changes in the schema `current` of `table`, taking the declared renames into account.

    Raises:
        SchemaEvolutionError: a change the policy does not allow; the message names each column and change.
    """
    renamed = {old: new for old, new in evolution.rename.items() if old in current.names and new in incoming.names}
    found: list[SchemaChange] = []
    refused: list[str] = []
    for old in current:
        name = renamed.get(old.name, old.name)
        if old.name in renamed:
            found.append(SchemaChange(old.name, "renamed", old.name, name))
        if name not in incoming.names:
            found.append(SchemaChange(old.name, "dropped", str(old.type)))
            if old.name not in evolution.drop:
                refused.append(f"`{old.name}` ({old.type}) is no longer produced")
            continue
        new_type = incoming.field(name).type
        if new_type == old.type:
            continue
        widened = is_widening(old.type, new_type) and evolution.widening == "allow"
        found.append(SchemaChange(name, "widened" if widened else "retyped", str(old.type), str(new_type)))
        if not widened and old.name not in evolution.retype and name not in evolution.retype:
            refused.append(f"`{name}` changes type from {old.type} to {new_type}")
    known = {renamed.get(n, n) for n in current.names}
    found.extend(SchemaChange(f.name, "added", after=str(f.type)) for f in incoming if f.name not in known)
    if refused:
        raise SchemaEvolutionError(
            f"table `{table}`: " + "; ".join(refused) + ". Declare the migration on the table (`evolution=SchemaEvolution(drop=[...], "
            "rename={old: new}, retype=[...])`) or fix the function's output",
            table=table,
        )
    return found


def needs_rewrite(changes: Sequence[SchemaChange]) -> bool:
    """Whether existing rows must be rewritten (a column dropped, renamed or retyped) before new rows of
    an appended or merged table can be committed."""
    return any(c.change != "added" for c in changes)


def migrate(rows: pa.Table, changes: Sequence[SchemaChange], target: pa.Schema) -> pa.Table:
    """Existing `rows` moved to the new schema: renamed, dropped and cast; columns added by the change
    are left for the table's schema merge."""
    renames = {c.column: c.after for c in changes if c.change == "renamed" and c.after}
    dropped = {c.column for c in changes if c.change == "dropped"}
    rows = rows.rename_columns([renames.get(n, n) for n in rows.column_names])
    rows = rows.drop_columns([n for n in rows.column_names if n in dropped])
    kept = [f for f in target if f.name in rows.column_names]
    return rows.select([f.name for f in kept]).cast(pa.schema(kept))
