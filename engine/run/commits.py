"""Committing staged files: each commit carries the marker read before the work began, and staged files of a
commit that lost to another writer's are deleted."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import ray.data
from deltalake.transaction import Transaction

from engine.columns import REJECTED_REASON
from engine.errors import CommitConflict
from engine.pipeline import TableDefinition
from engine.run.scope import RunScope
from engine.tables import delta
from engine.tables.files import DataFile, discard_files
from engine.tables.quarantine import unrecorded
from engine.tables.staging import StagedFiles

log = logging.getLogger("engine.runner")

ATTEMPT_KEY = "attempt"


def attempt(input_versions: dict[str, int | None], table_version: int | None) -> str:
    """Identifies one piece of work on a table: its input versions and the table version it starts from."""
    work = {"inputs": input_versions, "table_version": table_version}
    return hashlib.sha256(json.dumps(work, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def discarded_on_conflict(folder: str, files: Iterable[DataFile]) -> Iterator[None]:
    """Delete the staged `files` when their commit loses to another writer's."""
    try:
        yield
    except CommitConflict:
        discard_files(folder, files)
        raise


def commit_quarantine(scope: RunScope, definition: TableDefinition, staged: StagedFiles, metadata: dict[str, Any],
                      transaction: Transaction) -> None:
    """Append the rejected rows the quarantine does not record yet, unless an earlier attempt at the same work
    (same input versions, same table version) already did and then died before committing the table. The
    commit carries `transaction`, read before the work began, so a concurrent run's quarantining of the same
    rows wins or loses whole."""
    uri = scope.layout.quarantine(definition.name)
    if delta.last_commit_value(uri, definition.name, ATTEMPT_KEY) == metadata[ATTEMPT_KEY]:
        log.info("table `%s`: rejected rows of this work were already quarantined", definition.name)
        discard_files(uri, staged.quarantine)
        return
    rejected = unrecorded(uri, staged.quarantine, scope.settings.storage, metadata["run_id"],
                          frozenset(definition.pii))
    with discarded_on_conflict(uri, rejected):
        delta.commit_files(uri, rejected, mode="append", metadata=metadata, transaction=transaction)


def schema_of(dataset: ray.data.Dataset) -> pa.Schema | None:
    """The Arrow schema of a dataset's accepted rows, None when it cannot be known."""
    schema = dataset.schema()
    base = getattr(schema, "base_schema", None)
    if not isinstance(base, pa.Schema):
        return None
    return base.remove(base.get_field_index(REJECTED_REASON)) if REJECTED_REASON in base.names else base
