"""A table as the engine works on it: its name, where it and its companions live, and the store of its format."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from deltalake.transaction import Transaction

from engine.layout import Layout
from engine.tables.formats import DeltaStore, TableFormats, TableStore


@dataclass(frozen=True)
class TableHandle:
    """One layer table of a root, resolved once: its layout, the store of its declared format, its locations.

    Attributes:
        name: `<layer>.<name>`.
        layout: the storage root's layout.
        store: the table's store (Delta or Iceberg); its quarantine and change log are always Delta.
    """

    name: str
    layout: Layout
    store: TableStore

    @classmethod
    def of(cls, formats: TableFormats, table: str) -> TableHandle:
        """The handle of `table` in the format `formats` declares or finds for it.

        Raises:
            TableFormatError: the location holds a table of another format than the declared one.
        """
        return cls(table, formats.layout, formats.for_table(table))

    @property
    def uri(self) -> str:
        """Where the table lives."""
        return self.layout.table(self.name)

    @property
    def quarantine(self) -> str:
        """Where the table's rejected rows live (a Delta table)."""
        return self.layout.quarantine(self.name)

    @property
    def changes(self) -> str:
        """Where the table's change log lives (a Delta table; `Merge` deletes and `SCD2` history)."""
        return self.layout.changes(self.name)

    def exists(self) -> bool:
        """Whether the table has been created."""
        return self.store.table_exists(self.uri)

    def latest_version(self) -> int | None:
        """The table's current version, None before its first commit."""
        return self.store.latest_version(self.uri)

    def schema(self) -> pa.Schema:
        """The table's current schema."""
        return self.store.schema(self.uri, self.name)

    def transaction(self, application: str) -> Transaction:
        """The marker of the next commit of `application` to the table: the commit is refused when another one
        of the same application committed after it was read."""
        return self.store.next_transaction(self.uri, application)

    def quarantine_transaction(self, application: str) -> Transaction:
        """The marker of the next commit of `application` to the table's quarantine."""
        return DeltaStore().next_transaction(self.quarantine, application)
