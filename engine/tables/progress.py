"""Progress a Delta table's commits record, kept so that it survives log cleanup.

Commit infos record what each commit consumed: `medallion.files` (the landing files an ingestion commit
took in), `medallion.input_versions` (the input versions a derived table was built from) and
`medallion.schema_version`. deltalake deletes commit files older than `delta.logRetentionDuration` (30 days
by default) once a later checkpoint covers them: after a commit that writes a checkpoint (every
`delta.checkpointInterval`, 100 commits) unless `delta.enableExpiredLogCleanup` is false, and whenever
`DeltaTable.cleanup_metadata()` is called, whatever that property says. Checkpoints keep no commit info, so
the history then loses its beginning.

The same progress therefore rides in every commit that records it as Delta application transactions (`txn`
actions, which every checkpoint carries; written without `lastUpdated`, so
`delta.setTransactionRetentionDuration` never expires them):

- `medallion.landing/<file name>`: a code of the landing file's size and modification time, 0 when a restore
  undid its ingestion;
- `medallion.landing-end/<file name>`: the byte offset its ingestion ended at plus one (an `append-only` file
  grows from there), absent in checkpoints written before it was recorded;
- `medallion.input/<table>`: the input version consumed plus one, 0 for none;
- `medallion.schema`: the schema version;
- `medallion.source/<slot>`: the WAL position a database source's ingestion reached, plus one.

While the log still starts at version 0 the commit infos are read (one pass over the history); once it does
not, the transactions of the files and inputs in question (one lookup each).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.transaction import Transaction

from engine.storage import filesystem_of

FILES_KEY = "files"
INPUTS_KEY = "input_versions"
SCHEMA_KEY = "schema_version"
SOURCE_KEY = "source_position"
"""A database source's position: `{"slot": <replication slot>, "lsn": <WAL position reached>}`."""

LANDING_APP = "medallion.landing/"
LANDING_END_APP = "medallion.landing-end/"
INPUT_APP = "medallion.input/"
SCHEMA_APP = "medallion.schema"
SOURCE_APP = "medallion.source/"
PROGRESS_KEYS = (FILES_KEY, INPUTS_KEY, SCHEMA_KEY, SOURCE_KEY)


def file_code(fingerprint: list[Any]) -> int:
    """A landing file's fingerprint ([name, size, modification time, end]) as a positive 56-bit number: equal for
    equal sizes and times, different otherwise (but with odds of 2^-56)."""
    digest = hashlib.sha256(f"{fingerprint[1]}:{fingerprint[2]}".encode()).digest()
    return int.from_bytes(digest[:7], "big") or 1


def transactions(values: Mapping[str, Any]) -> list[Transaction]:
    """The application transactions carrying the progress that commit metadata `values` records."""
    carried = [Transaction(LANDING_APP + fingerprint[0], file_code(fingerprint))
               for fingerprint in values.get(FILES_KEY) or []]
    carried += [Transaction(LANDING_END_APP + fingerprint[0], int(fingerprint[3]) + 1)
                for fingerprint in values.get(FILES_KEY) or [] if len(fingerprint) > 3]
    carried += [Transaction(INPUT_APP + table, 0 if version is None else version + 1)
                for table, version in (values.get(INPUTS_KEY) or {}).items()]
    if values.get(SCHEMA_KEY) is not None:
        carried.append(Transaction(SCHEMA_APP, int(values[SCHEMA_KEY])))
    if values.get(SOURCE_KEY) is not None:
        carried.append(Transaction(SOURCE_APP + values[SOURCE_KEY]["slot"], int(values[SOURCE_KEY]["lsn"]) + 1))
    return carried


def without_progress(values: Mapping[str, Any]) -> dict[str, Any]:
    """Commit metadata without the progress it records: for a schema-only commit made before a data commit,
    which must not claim the data commit's progress should the writer die in between."""
    return {k: v for k, v in values.items() if k not in PROGRESS_KEYS}


def history_complete(uri: str) -> bool:
    """Whether the Delta log at `uri` still holds its first commit (so no commit info was cleaned up)."""
    filesystem, path = filesystem_of(f"{uri}/_delta_log/{0:020d}.json")
    return filesystem.get_file_info(path).type == pafs.FileType.File


def carried_files(table: DeltaTable, names: Iterable[str]) -> dict[str, int]:
    """The code of each of `names` the table holds as ingested."""
    codes = {name: table.transaction_version(LANDING_APP + name) for name in names}
    return {name: code for name, code in codes.items() if code}


def file_end(fingerprint: list[Any]) -> int:
    """The byte offset the ingestion a fingerprint records ended at: its size when it predates recording it."""
    return int(fingerprint[3] if len(fingerprint) > 3 else fingerprint[1])


def carried_ends(table: DeltaTable, names: Iterable[str]) -> dict[str, int]:
    """The byte offset the ingestion of each of `names` ended at, for the files whose checkpoint records it."""
    ends = {name: table.transaction_version(LANDING_END_APP + name) for name in names}
    return {name: end - 1 for name, end in ends.items() if end}


def carried_inputs(table: DeltaTable, inputs: Iterable[str]) -> dict[str, int | None] | None:
    """The version of each of `inputs` the table was last built from (None: the input did not exist or a
    full refresh emptied the table); None when the table records no consumed input."""
    versions = {name: table.transaction_version(INPUT_APP + name) for name in inputs}
    if all(version is None for version in versions.values()):
        return None
    return {name: version - 1 if version else None for name, version in versions.items()}


def carried_schema_version(table: DeltaTable) -> int | None:
    """The schema version the table's commits last recorded."""
    return table.transaction_version(SCHEMA_APP)


def carried_source_position(table: DeltaTable, slot: str) -> int | None:
    """The WAL position the table's ingestion from replication slot `slot` reached."""
    carried = table.transaction_version(SOURCE_APP + slot)
    return carried - 1 if carried else None


def resets(uri: str, version: int, undone: Iterable[Mapping[str, Any]]) -> list[Transaction]:
    """Transactions giving the progress that the `undone` commits' metadata recorded its value at `version`
    again (none when -1), for a restore to `version`."""
    before = DeltaTable(uri, version=version) if version >= 0 else None
    apps = {t.app_id for values in undone for t in transactions(values)}
    return [Transaction(app, (before.transaction_version(app) if before is not None else None) or 0)
            for app in sorted(apps)]
