"""Write kinds: how a table's new rows are applied to the table."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from engine.errors import PipelineDefinitionError


class _Kind(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    layout_fields: ClassVar[frozenset[str]] = frozenset()
    """Fields that say how the table's files are laid out, not what it holds: changing one is no change of the
    table's definition (nothing is rebuilt)."""

    def meaning(self) -> dict[str, Any]:
        """The fields that say what the table holds."""
        return self.model_dump(mode="json", exclude=set(self.layout_fields))


class Append(_Kind):
    """Add the rows to the table."""

    kind: Literal["append"] = "append"


class Overwrite(_Kind):
    """Replace the table's contents with the rows."""

    kind: Literal["overwrite"] = "overwrite"


class Merge(_Kind):
    """Upsert the rows by key: the latest change per key wins, older changes never overwrite newer ones.

    Attributes:
        keys: columns that identify a row.
        sequence_by: column that orders changes of one key (e.g. `updated_at`); a change applies only
            when its value is at least the stored one. Without it, the last row seen wins.
        delete_when: SQL predicate over the incoming rows that marks a delete (e.g. `op = 'd'`).
        except_columns: incoming columns used only to steer the merge, not stored (e.g. `op`).
        buckets: how many hash buckets of the keys the table's files are split into (a merge rewrites only the
            buckets its changes touch, one Ray task each). None (the default) sizes them from the table: one
            per `storage.target_file_mb` of the first changes, doubled as often as needed once the table's
            buckets outgrow twice that size. Setting it re-buckets the table at its next merge (Delta tables).
    """

    kind: Literal["merge"] = "merge"
    keys: list[str] = Field(min_length=1)
    sequence_by: str | None = None
    delete_when: str | None = None
    except_columns: list[str] = []
    buckets: int | None = Field(default=None, ge=1, le=99999)

    layout_fields: ClassVar[frozenset[str]] = frozenset({"buckets"})

    @model_validator(mode="after")
    def _columns_do_not_overlap(self) -> Merge:
        if self.sequence_by in self.keys:
            raise ValueError(f"sequence_by `{self.sequence_by}` cannot also be a key")
        stored = [c for c in self.except_columns if c in self.keys or c == self.sequence_by]
        if stored:
            raise ValueError(f"except_columns {stored} name a key or sequence_by column, which must be stored")
        return self


class SCD2(_Kind):
    """Keep the history of each key (slowly changing dimension, type 2) from a feed of changes.

    Each version of a key is a row with `valid_from` (the `sequence_by` value of the change that opened
    it), `valid_to` (the one that closed it, null while current) and `is_current`. A change to a tracked
    column opens a version; a change to untracked columns only updates the open version in place; a
    delete closes the current version; a key that comes back after a delete opens a new one. Every change
    is kept beside the table, so late changes rewrite the key's history exactly and replayed changes
    produce nothing new.

    Attributes:
        keys: columns that identify an entity.
        sequence_by: column that orders changes of one key; it becomes `valid_from` / `valid_to`.
        tracked_columns: columns whose changes open a version; None tracks every stored column.
        delete_when: SQL predicate over the incoming rows that marks a delete (e.g. `op = 'd'`).
        except_columns: incoming columns used only to steer the changes, not stored (e.g. `op`).
    """

    kind: Literal["scd2"] = "scd2"
    keys: list[str] = Field(min_length=1)
    sequence_by: str
    tracked_columns: list[str] | None = None
    delete_when: str | None = None
    except_columns: list[str] = []

    @model_validator(mode="after")
    def _columns_are_consistent(self) -> SCD2:
        if self.sequence_by in self.keys:
            raise ValueError(f"sequence_by `{self.sequence_by}` cannot also be a key")
        steering = [c for c in self.except_columns if c in self.keys or c == self.sequence_by]
        untrackable = [c for c in self.tracked_columns or [] if c in self.keys or c in self.except_columns
                       or c in SCD2_COLUMNS]
        if steering:
            raise ValueError(f"except_columns {steering} name a key or sequence_by column, which must be stored")
        if untrackable:
            raise ValueError(f"tracked_columns {untrackable} name a key, an except column or a history column")
        return self


class RecomputeKeys(_Kind):
    """Recompute only the entities whose input rows changed since the table was last built, and replace
    their rows in one commit; the first build, `--force` and `--full-refresh` compute everything.

    The function must compute an entity's rows from that entity's input rows alone (a per-customer daily
    aggregate, a per-order join), since it is given only the input rows of the affected entities. An input
    without every key column (a rate or calendar lookup) is given whole, and a change to it affects every key:
    the table is then recomputed entirely, so the result always equals a full rebuild.

    Attributes:
        keys: entity columns, present in the output and in at least one input (e.g. `customer_id`).
        time_column: the output's time partition column (e.g. `date`), which `medallion backfill` ranges over.
    """

    kind: Literal["recompute_keys"] = "recompute_keys"
    keys: list[str] = Field(min_length=1)
    time_column: str | None = None

    def unkeyed_inputs(self, table: str, columns: Mapping[str, Collection[str]]) -> list[str]:
        """The inputs, among those whose `columns` are known, that lack a key column.

        Raises:
            PipelineDefinitionError: every one of them lacks one, so no change could be traced to a key.
        """
        missing = {name: [k for k in self.keys if k not in names] for name, names in columns.items()}
        unkeyed = [name for name, lacking in missing.items() if lacking]
        if unkeyed and len(unkeyed) == len(columns):
            lacks = "; ".join(f"input `{name}` lacks {', '.join(f'`{k}`' for k in missing[name])}" for name in unkeyed)
            raise PipelineDefinitionError(
                f"table `{table}` recomputes by keys {self.keys}, but no input holds them ({lacks}); name the "
                "entity columns in `RecomputeKeys(keys=...)`, or add them to an input", table=table)
        return unkeyed


SCD2_COLUMNS = ("valid_from", "valid_to", "is_current")
"""The history columns an `SCD2` table adds to the stored columns."""

ChangeKind = Merge | SCD2
"""Kinds applied from a feed of changes, staged first and then applied by key."""

AnyKind = Append | Overwrite | Merge | SCD2 | RecomputeKeys
"""The type of a write kind."""

WriteKind = Annotated[AnyKind, Field(discriminator="kind")]
"""Any write kind; parse one from configuration with `parse_kind`."""

_KIND_ADAPTER: TypeAdapter[AnyKind] = TypeAdapter(WriteKind)


def parse_kind(value: dict[str, object]) -> AnyKind:
    """A write kind from its dictionary form, e.g. `{"kind": "merge", "keys": ["id"]}`."""
    return _KIND_ADAPTER.validate_python(value)


def key_columns(kind: AnyKind) -> tuple[str, ...]:
    """The columns that identify a row (`Merge`), an entity (`SCD2`, `RecomputeKeys`); none for `Append` and
    `Overwrite`."""
    return tuple(kind.keys) if isinstance(kind, Merge | SCD2 | RecomputeKeys) else ()
