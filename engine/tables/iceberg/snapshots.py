"""Snapshots as engine versions, and what the engine records in them: commit metadata and batch markers.

A version is a snapshot's sequence number minus one, so the first snapshot is version 0, like Delta's first
commit. Commit metadata goes into the snapshot summary as `medallion.<key>` = JSON text. A batch's marker
(application id, version) is kept in the table properties (`medallion.txn.<app id>`, so it survives snapshot
expiry) and in the snapshot summary.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from deltalake.transaction import Transaction

from engine.errors import TableNotFound
from engine.tables.delta import METADATA_PREFIX

if TYPE_CHECKING:
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot

MARKER_PREFIX = METADATA_PREFIX + "txn."
APP_ID_KEY = METADATA_PREFIX + "app_id"
APP_VERSION_KEY = METADATA_PREFIX + "app_version"


def version_of(snapshot: Snapshot) -> int:
    """The engine version of a snapshot: its sequence number minus one."""
    return (snapshot.sequence_number or 0) - 1


def snapshot_of(table: Table, name: str, version: int) -> Snapshot:
    """The snapshot of engine version `version`.

    Raises:
        TableNotFound: the table has no such version.
    """
    for snapshot in table.snapshots():
        if version_of(snapshot) == version:
            return snapshot
    latest = table.current_snapshot()
    raise TableNotFound(f"table `{name}` has no version {version} (latest is "
                        f"{None if latest is None else version_of(latest)})", table=name, path=table.location())


def snapshot_properties(values: dict[str, Any], transaction: Transaction | None = None) -> dict[str, str]:
    """Snapshot summary properties carrying `values` as `medallion.<key>` JSON text, and the marker."""
    properties = {METADATA_PREFIX + k: json.dumps(v, sort_keys=True, default=str) for k, v in values.items()}
    if transaction is not None:
        properties |= {APP_ID_KEY: transaction.app_id, APP_VERSION_KEY: str(transaction.version)}
    return properties


def decode(value: str) -> Any:
    """A snapshot summary value: the JSON it holds, or the text itself when it is not JSON."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def committed_batch(table: Table, app_id: str) -> int | None:
    """The last batch of `app_id` the table's marker records, None when there is none."""
    value = table.metadata.properties.get(MARKER_PREFIX + app_id)
    return None if value is None else int(value)
