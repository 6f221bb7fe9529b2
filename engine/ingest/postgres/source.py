"""The declaration of a PostgreSQL table feeding a bronze table (`docs/sources.md`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from engine.errors import PipelineDefinitionError

DatabaseDriftPolicy = Literal["evolve", "rescue", "fail"]
"""What a change of the source table's columns does: `evolve` widens the bronze table, `rescue` moves the new
columns' values into `_rescued_data`, `fail` stops the table's ingestion."""

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_SLOT = re.compile(r"^[a-z0-9_]{1,63}$")


@dataclass(frozen=True)
class PostgresSource:
    """A PostgreSQL table read into bronze: first a consistent snapshot, then its changes from the write-ahead log.

    Attributes:
        table: the table, `schema.table` or `table` (schema `public`).
        dsn_env: the environment variable holding the connection string (libpq keywords or a `postgresql://` URI);
            it is read in the driver and in the reading tasks, and never written anywhere.
        slot: the logical replication slot that keeps the changes not yet ingested (default
            `medallion_<schema>_<table>`).
        publication: the publication of the table the slot decodes (default the slot's name); created with the
            slot when missing.
        batch_changes: the most changes a run (or a `--watch` cycle) takes in one commit; a transaction is never
            split, so a larger one is taken whole.
        snapshot_rows_per_task: rows of the first snapshot each parallel reading task takes (by key range).
        on_drift: what a change of the source table's columns does (`DatabaseDriftPolicy`).
        release_wal_bytes: WAL of other tables' changes the slot may hold back before a run with nothing for this
            table commits its new position anyway (an empty commit), so that the slot releases that WAL.
    """

    table: str
    dsn_env: str
    slot: str | None = None
    publication: str | None = None
    batch_changes: int = 100_000
    snapshot_rows_per_task: int = 500_000
    on_drift: DatabaseDriftPolicy = "evolve"
    release_wal_bytes: int = 64 * 2**20

    def __post_init__(self) -> None:
        parts = self.table.split(".")
        if len(parts) > 2 or not all(_IDENTIFIER.match(p) for p in parts):
            raise PipelineDefinitionError(f"source table `{self.table}`: give `schema.table` or `table`, each an "
                                          "unquoted identifier", path=self.table)
        for name, value in (("slot", self.slot_name), ("publication", self.publication_name)):
            if not _SLOT.match(value):
                raise PipelineDefinitionError(f"source `{self.table}`: {name} `{value}` must be 1 to 63 lower-case "
                                              "letters, digits or underscores", path=self.table)
        if self.on_drift not in get_args(DatabaseDriftPolicy):
            raise PipelineDefinitionError(f"source `{self.table}`: unknown on_drift `{self.on_drift}`; choose one "
                                          f"of {', '.join(get_args(DatabaseDriftPolicy))}", path=self.table)
        if min(self.batch_changes, self.snapshot_rows_per_task, self.release_wal_bytes) < 1:
            raise PipelineDefinitionError(f"source `{self.table}`: batch_changes, snapshot_rows_per_task and "
                                          "release_wal_bytes must be positive", path=self.table)

    @property
    def schema_name(self) -> str:
        """The table's schema."""
        return self.table.split(".")[0] if "." in self.table else "public"

    @property
    def table_name(self) -> str:
        """The table's name within its schema."""
        return self.table.split(".")[-1]

    @property
    def qualified(self) -> str:
        """`schema.table`, the name the source's rows carry in `_source_file`."""
        return f"{self.schema_name}.{self.table_name}"

    @property
    def slot_name(self) -> str:
        """The replication slot's name."""
        return self.slot or f"medallion_{self.schema_name}_{self.table_name}".lower()

    @property
    def publication_name(self) -> str:
        """The publication's name."""
        return self.publication or self.slot_name
