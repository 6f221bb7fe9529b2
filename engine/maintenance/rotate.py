"""Key rotation: the encrypted columns of a table and of its change log rewritten so that every value is in
the current format under the current column key (`engine/governance/encryption.py`).

Values under another key, or of the first format, are decrypted with the key their id names (the current
one, `encryption.previous_keys`, or the first format's derivation of a configured secret) and encrypted again
with the current key, bound to their table, column and row; values already under it are kept as they are.
A table holding none is left alone. Otherwise the table's properties are set first (the current key id, and
the key columns the values are bound to, which tables written only in the first format do not record yet),
then the rows are rewritten in one commit through the table's store (`TableStore.rewrite`: a large Delta table
in Ray tasks, a group of files each; an Iceberg table in this process) carrying `medallion.operation` = `rotate-keys`. The run
lease of the pipeline that writes the table is held meanwhile, so no run of it commits between the read and
the rewrite.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from engine.config import Settings
from engine.errors import MaintenanceError
from engine.governance.actor import audit_fields
from engine.governance.encryption import (
    ColumnKeys,
    encrypted_columns,
    encryption_properties,
    rotate_columns,
    row_key_columns,
    stale_values,
)
from engine.layout import Layout
from engine.lease import RunLease
from engine.tables.formats import DeltaStore, TableFormats, TableStore

OPERATION = "rotate-keys"


@dataclass(frozen=True)
class Rotated:
    """What a key rotation did to one table.

    Attributes:
        table: the table's name.
        values: values re-encrypted in the table.
        version: the table's version after the rewrite, None when it held no value to re-encrypt.
        change_log_values: values re-encrypted in the table's change log.
    """

    table: str
    values: int
    version: int | None
    change_log_values: int


def rotate_table(settings: Settings, table: str, keys: ColumnKeys, *,
                 declared_keys: Callable[[], Sequence[str] | None], run_id: str, reason: str,
                 need_ray: Callable[[], None]) -> Rotated | None:
    """Re-encrypt every value of `table`'s encrypted columns, and of its change log, that is not under the
    current key (see the module doc); None when the table records no encrypted column.

    Args:
        settings: the storage root and the run lease settings.
        table: `<layer>.<name>`.
        keys: the current key and those that read the stored values.
        declared_keys: gives the table's declared key columns (None when unknown), which bind the values of a
            table that records none (written only in the first format); called only then.
        run_id: holds the lease and is recorded in the commits.
        reason: recorded in the commits.
        need_ray: makes Ray available, for a table rewritten in tasks.

    Raises:
        TableNotFound: there is no such table.
        MaintenanceError: the table holds first-format values, records no key columns and none are declared.
        GovernanceError: a value is under a key `keys` lacks (nothing was rewritten), or fails authentication.
        LeaseHeld: a run of the table's pipeline is under way.
    """
    layout = Layout.at(settings.storage.root)
    uri = layout.location(table)
    store = TableFormats(settings).at(uri)
    if not encrypted_columns(store.table_properties(uri, table)):
        return None
    pipeline = store.last_commit_value(uri, table, "pipeline")
    metadata = audit_fields(OPERATION, reason) | {"run_id": run_id, "table": table} | (
        {"pipeline": pipeline} if pipeline else {})
    with _holding_lease(layout, pipeline, settings, run_id):
        stores = [(store, uri), (DeltaStore(), layout.changes(table))]
        plans = [_plan(store, uri, table, keys, declared_keys) for store, uri in stores]
        done = [_rewrite(store, uri, table, keys, plan, metadata, settings, need_ray) if plan else (0, None)
                for (store, uri), plan in zip(stores, plans)]
    (values, version), (logged, _) = done
    return Rotated(table, values, version, logged)


def _plan(store: TableStore, uri: str, table: str, keys: ColumnKeys,
          declared_keys: Callable[[], Sequence[str] | None]) -> tuple[list[str], Sequence[str], int] | None:
    """The encrypted columns of the table stored at `uri` (the table or its change log, whose values are
    bound to `table`), the key columns that bind them, and how many values are not under the current key; None
    when none is (or there is no such table). Reads the encrypted columns only.

    Raises:
        GovernanceError: a value is under a key `keys` lacks, or of no known format.
        MaintenanceError: the key columns are neither recorded nor declared.
    """
    if not store.table_exists(uri):
        return None
    properties = store.table_properties(uri, table)
    names = set(store.schema(uri, table).names)
    columns = [c for c in encrypted_columns(properties) if c in names]
    stale = stale_values(store.read_columns(uri, table, columns), keys, table) if columns else 0
    if not stale:
        return None
    recorded = row_key_columns(properties)
    bound = recorded if recorded is not None else declared_keys()
    if bound is None:
        raise MaintenanceError(f"table `{table}` holds encrypted values of the first format and records no key "
                               "columns to bind them to; name the pipeline declaring it with --pipeline", table=table)
    return columns, bound, stale


def _rewrite(store: TableStore, uri: str, table: str, keys: ColumnKeys, plan: tuple[list[str], Sequence[str], int],
             metadata: dict[str, Any], settings: Settings, need_ray: Callable[[], None]) -> tuple[int, int]:
    """Record the current key id and the key columns, then rewrite the rows with the `plan`'s columns
    re-encrypted; the values re-encrypted and the version committed."""
    columns, bound, stale = plan
    store.set_table_properties(uri, table, encryption_properties({c: keys.current.key_id for c in columns}, bound),
                               metadata)

    def rotated(rows: pa.Table) -> pa.Table:
        return rotate_columns(rows, columns, keys, table, bound)[0]

    version = store.rewrite(uri, table, rotated, metadata=metadata, storage=settings.storage, need_ray=need_ray)
    return stale, version


@contextlib.contextmanager
def _holding_lease(layout: Layout, pipeline: str | None, settings: Settings, run_id: str) -> Iterator[None]:
    """Hold `pipeline`'s run lease on the root for the duration (nothing to hold when the table names none)."""
    if pipeline is None:
        yield
        return
    lease = RunLease(layout, pipeline, timeout_s=settings.run.lease_timeout_s,
                     heartbeat_s=settings.run.lease_heartbeat_s)
    lease.acquire(run_id)
    try:
        yield
    finally:
        lease.release()
