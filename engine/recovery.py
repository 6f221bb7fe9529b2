"""Undoing writes: a table, or every table a run wrote, restored to an earlier version as a new commit."""

from __future__ import annotations

from dataclasses import dataclass

from deltalake import DeltaTable

from engine.errors import EngineError
from engine.governance.actor import audit_fields
from engine.layout import META, STAGING, Layout
from engine.storage import delta_tables_under
from engine.tables import delta, progress


@dataclass(frozen=True)
class Restored:
    """One table put back.

    Attributes:
        path: the table's folder.
        restored_to: the version whose state the table has again (-1: emptied, it did not exist before).
        version: the commit that did it.
    """

    path: str
    restored_to: int
    version: int


def restore_table(uri: str, version: int, *, reason: str, run_id: str | None = None) -> Restored:
    """Give the table at `uri` the state of `version` again, in a new commit that records it
    (`medallion.restored_to`), so checkpoints and consumed versions of the undone commits stop counting:
    in the commit infos, and in the progress the commits carry (`engine.tables.progress`), which the
    restore commit sets back to its values at `version`. Version -1 empties the table.

    Raises:
        EngineError: there is no such table or version, the version's data files are no longer all on disk
            (an erasure deleted those holding its subject, a vacuum those out of retention), or the table is
            to be emptied but its log no longer holds every commit (so not every landing file or input it
            consumed can be known).
    """
    if not delta.table_exists(uri):
        raise EngineError(f"no Delta table at `{uri}` to restore", path=uri)
    table = DeltaTable(uri)
    if not -1 <= version < table.version():
        raise EngineError(f"`{uri}` is at version {table.version()}; restore to a version from -1 to "
                          f"{table.version() - 1}", path=uri)
    check_restorable(uri, version)
    if version == -1 and not progress.history_complete(uri):
        raise EngineError(f"`{uri}` cannot be emptied by a restore: its log no longer starts at version 0, so "
                          "not every landing file or input version its commits consumed is known; delete the "
                          "table to rebuild it", path=uri)
    undone = [{key: delta.commit_info_value(commit, key) for key in progress.PROGRESS_KEYS}
              for commit in delta.effective_history(uri, uri) if commit["version"] > version]
    metadata = {"run_id": run_id, delta.RESTORED_TO_KEY: version} | audit_fields("restore", reason)
    properties = delta.commit_metadata(metadata, resets=progress.resets(uri, version, undone))
    if version == -1:
        table.create_write_transaction([], "overwrite", table.schema(), commit_properties=properties)
    else:
        table.restore(version, commit_properties=properties)
    return Restored(uri, version, DeltaTable(uri).version())


def check_restorable(uri: str, version: int) -> None:
    """Refuse a restore to `version` when data files of that version are gone: the table would name files
    that no reader can open, and an erased subject's rows would be asked back.

    Raises:
        EngineError: naming the table, the version and the newest erasure, the versions to choose from.
    """
    if version == -1 or delta.all_on_disk(uri, DeltaTable(uri, version=version).file_uris()):
        return
    erasures = [c["version"] for c in delta.history(uri, uri) if delta.commit_info_value(c, "operation") == "erase"]
    gone = (f"the erasure at version {max(erasures)} deleted those that held its subject, or a vacuum others"
            if erasures else "a vacuum deleted them")
    raise EngineError(f"`{uri}` cannot be restored to version {version}: some of its data files are gone ({gone}); "
                      "restore to a later version (`medallion history TABLE` lists them) or rebuild the table with "
                      "`medallion run PIPELINE --full-refresh`", path=uri)


def tables_under(layout: Layout) -> list[str]:
    """Every Delta table of a root: layer tables, quarantines and change logs, not `_meta`."""
    return delta_tables_under(layout.root, skip=(META, STAGING, "landing"))


def restore_before_run(layout: Layout, run_id: str, *, reason: str) -> list[Restored]:
    """Restore every table the run `run_id` committed to to its version before the run's first commit.

    Raises:
        EngineError: no table holds a commit of that run, or one of them cannot be restored (nothing is then
            restored).
    """
    targets = {}
    for uri in tables_under(layout):
        versions = [c["version"] for c in delta.effective_history(uri, uri)
                    if delta.commit_info_value(c, "run_id") == run_id]
        if versions:
            targets[uri] = min(versions) - 1
    for uri, version in targets.items():
        check_restorable(uri, version)
    restored = [restore_table(uri, version, reason=reason) for uri, version in targets.items()]
    if not restored:
        raise EngineError(f"no table under {layout.root} holds a commit of run `{run_id}`; "
                          "`medallion history TABLE` lists the runs of a table")
    return restored
