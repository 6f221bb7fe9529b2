"""Write kinds: how a table's new rows are applied to the table."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


class _Kind(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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
    """

    kind: Literal["merge"] = "merge"
    keys: list[str] = Field(min_length=1)
    sequence_by: str | None = None
    delete_when: str | None = None
    except_columns: list[str] = []

    @model_validator(mode="after")
    def _columns_do_not_overlap(self) -> Merge:
        if self.sequence_by in self.keys:
            raise ValueError(f"sequence_by `{self.sequence_by}` cannot also be a key")
        stored = [c for c in self.except_columns if c in self.keys or c == self.sequence_by]
        if stored:
            raise ValueError(f"except_columns {stored} name a key or sequence_by column, which must be stored")
        return self


WriteKind = Annotated[Append | Overwrite | Merge, Field(discriminator="kind")]
"""Any write kind; parse one from configuration with `parse_kind`."""

_KIND_ADAPTER: TypeAdapter[Append | Overwrite | Merge] = TypeAdapter(WriteKind)


def parse_kind(value: dict[str, object]) -> Append | Overwrite | Merge:
    """A write kind from its dictionary form, e.g. `{"kind": "merge", "keys": ["id"]}`."""
    return _KIND_ADAPTER.validate_python(value)
