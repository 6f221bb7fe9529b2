"""The audit trail: who changed which table, when, to which version and why, from the Delta histories of the
tables under a root and the run records."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import UTC, datetime

from engine.layout import META, Layout
from engine.runlog import read_records
from engine.tables import delta
from engine.tables.deltalog import delta_tables

BOOKKEEPING = f"{META}/"
"""Tables under `<root>/_meta` other than the feature-store state are the engine's own records."""


@dataclass(frozen=True)
class AuditEntry:
    """One audited operation on one table.

    Attributes:
        at: when (UTC).
        table: the table (`silver.orders`, `quarantine.silver.orders`, `changes.gold.dim_customer`, ...).
        version: the version committed, None when nothing was committed.
        operation: `run`, `backfill`, `erase`, `restore`, `maintenance`, ... or the Delta operation of a
            commit the engine did not stamp.
        actor: who, when known.
        reason: why, when known.
        run_id: the run that did it, when known.
        source: `commit` (the table's Delta history) or `run record` (no commit of that run on the table).
    """

    at: datetime
    table: str
    version: int | None
    operation: str
    actor: str | None
    reason: str | None
    run_id: str | None
    source: str


def audit_trail(root: str, table: str | None = None, since: datetime | None = None) -> list[AuditEntry]:
    """Every audited operation under `root`, oldest first; only on tables matching `table` (a name or a
    glob) and at or after `since` when given."""
    layout = Layout.at(root)
    entries = []
    for uri in delta_tables(layout.root):
        relative = uri.removeprefix(layout.root + "/")
        if relative.startswith(BOOKKEEPING) and not relative.startswith(f"{META}/features/state/"):
            continue
        name = table_name(relative)
        for commit in delta.history(uri, name):
            entries.append(AuditEntry(
                at=datetime.fromtimestamp(commit["timestamp"] / 1000, UTC), table=name, version=commit["version"],
                operation=str(delta.commit_info_value(commit, "operation") or commit.get("operation", "")),
                actor=delta.commit_info_value(commit, "actor"), reason=delta.commit_info_value(commit, "reason"),
                run_id=delta.commit_info_value(commit, "run_id"), source="commit"))
    committed = {(e.run_id, e.table) for e in entries}
    records = read_records(layout.runs())
    for row in records.iter_rows(named=True) if records.height else ():
        if (row["run_id"], row["table"]) in committed:
            continue
        entries.append(AuditEntry(at=row["finished_at"], table=row["table"], version=row["output_version"],
                                  operation=row.get("operation") or "run", actor=row.get("actor"),
                                  reason=row.get("reason"), run_id=row["run_id"], source="run record"))
    chosen = [e for e in entries if (table is None or fnmatch.fnmatchcase(e.table, table))
              and (since is None or e.at >= since)]
    return sorted(chosen, key=lambda e: (e.at, e.table))


def table_name(relative: str) -> str:
    """The audit name of a table folder relative to the root: `silver/orders` -> `silver.orders`,
    `_changes/gold/x` -> `changes.gold.x`, `_meta/features/state/.../view` -> `features.view`."""
    if relative.startswith(f"{META}/features/state/"):
        return "features." + relative.rsplit("/", 1)[-1]
    return ".".join(relative.removeprefix("_").split("/"))

