"""The ingestion checkpoint of a bronze table: which landing files its commits took in, up to which byte, and
the shape of what they held. It rides in the same commits as the rows (`engine/tables/progress.py`)."""

from __future__ import annotations

from collections.abc import Iterable

from engine.ingest.sources import FileSource, LandingFile
from engine.tables import delta, progress
from engine.tables.formats import DeltaStore, TableStore
from engine.tables.progress import FILES_KEY

TYPES_KEY = "field_types"


def known_shape(uri: str, table: str, store: TableStore) -> tuple[list[str], dict[str, str]]:
    """Source columns of an ingested table and the JSON value types recorded by its latest commit."""
    if not store.table_exists(uri):
        return [], {}
    schema = store.schema(uri, table)
    columns = [c for c in schema.names if not c.startswith("_")]
    for commit in store.effective_history(uri, table):
        types = store.commit_info_value(commit, TYPES_KEY)
        if types is not None:
            return columns, dict(types)
    return columns, {}


def ingested_files(uri: str, table: str, names: Iterable[str], store: TableStore | None = None) -> dict[str, int]:
    """The ingestion checkpoint of a table (a Delta table unless `store` says otherwise) for the landing files
    `names`: the code (`progress.file_code`) of the fingerprint each ingested one had, by name (a file whose
    commit a restore undid counts as not ingested)."""
    return {name: code for name, (code, _) in ingestion_checkpoint(uri, table, names, store).items()}


def ingestion_checkpoint(
    uri: str, table: str, names: Iterable[str], store: TableStore | None = None
) -> dict[str, tuple[int, int | None]]:
    """For each of the landing files `names` the table ingested: the code of its fingerprint and the byte
    offset its ingestion ended at (None when a checkpoint that outlived its commit infos predates recording
    it). Read from the commit infos while the table's history is complete, else from the progress its commits
    carry."""
    store = store or DeltaStore()
    names = list(names)
    if not store.table_exists(uri):
        return {}
    if not store.history_complete(uri):
        carried = delta.open_table(uri, table)
        ends = progress.carried_ends(carried, names)
        return {name: (code, ends.get(name)) for name, code in progress.carried_files(carried, names).items()}
    seen: dict[str, tuple[int, int | None]] = {}
    for commit in store.effective_history(uri, table):
        for fingerprint in store.commit_info_value(commit, FILES_KEY) or []:
            seen.setdefault(fingerprint[0], (progress.file_code(fingerprint), progress.file_end(fingerprint)))
    return {name: seen[name] for name in names if name in seen}


def every_ingested_file(uri: str, table: str, store: TableStore) -> set[str]:
    """Names of every landing file the table's commits took in (that no restore undid), as far as its log holds
    its commit infos."""
    return {fingerprint[0] for commit in store.effective_history(uri, table)
            for fingerprint in store.commit_info_value(commit, FILES_KEY) or []}


def files_ingested_by(uri: str, table: str, run_id: str, store: TableStore) -> list[str]:
    """Names of the landing files the commits of run `run_id` ingested into the table."""
    return [fingerprint[0] for commit in store.history(uri, table)
            if store.commit_info_value(commit, "run_id") == run_id
            for fingerprint in store.commit_info_value(commit, FILES_KEY) or []]


def files_to_ingest(
    landed: Iterable[LandingFile], checkpoint: dict[str, tuple[int, int | None]], source: FileSource
) -> tuple[list[LandingFile], list[LandingFile]]:
    """Files to ingest (never ingested, or `append-only` files grown since, starting where their ingestion
    ended), and files ingested before that changed otherwise since (size or modification time)."""
    new, changed = [], []
    for file in landed:
        if file.name not in checkpoint:
            new.append(file)
            continue
        code, end = checkpoint[file.name]
        if code == progress.file_code(file.fingerprint()):
            continue
        if source.growth == "append-only" and end is not None and file.size >= end:
            new.append(file.resumed_at(end))
        else:
            changed.append(file)
    return new, changed
