"""What a derived table was last built from: the input versions and schema version its commits record, read
from the commit infos while the history is complete, else from the progress the commits carry."""

from __future__ import annotations

from collections.abc import Iterable

from engine.tables import delta, progress
from engine.tables.formats import DeltaStore, TableStore
from engine.tables.progress import INPUTS_KEY, SCHEMA_KEY


def consumed_versions(
    uri: str, table: str, inputs: Iterable[str], store: TableStore | None = None
) -> dict[str, int | None] | None:
    """The versions of `inputs` a derived table was last built from (a Delta table unless `store` says
    otherwise), None for an input it did not read (absent then, or emptied by a full refresh); None when it
    was never built. From the newest commit info that records them, else (once the history is incomplete)
    from the progress its commits carry."""
    store = store or DeltaStore()
    if not store.table_exists(uri):
        return None
    recorded = store.last_commit_value(uri, table, INPUTS_KEY)
    if recorded is not None or store.history_complete(uri):
        return recorded
    return progress.carried_inputs(delta.open_table(uri, table), inputs)


def schema_version_of(uri: str, table: str, store: TableStore) -> int:
    """The schema version the table's commits last recorded, 0 when none did."""
    if not store.table_exists(uri):
        return 0
    recorded = store.last_commit_value(uri, table, SCHEMA_KEY)
    if recorded is None and not store.history_complete(uri):
        recorded = progress.carried_schema_version(delta.open_table(uri, table))
    return int(recorded or 0)
