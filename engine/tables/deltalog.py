"""Scrubbing a Delta log: file statistics of data files that held erased or personal values, and keeping
personal columns out of the statistics of the files to come.

Delta commit files keep the `stats` (min/max per column) of every file ever added, also after the file is
removed, and checkpoints copy them. Statistics are optional in the Delta protocol (readers only lose data
skipping), so they are removed from the add actions concerned, each commit file rewritten through a
temporary file and a rename. Checkpoints are not edited: a new checkpoint of the latest version is written
(its add actions are the live files only, its remove actions carry no statistics) and older ones deleted.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
from deltalake import DeltaTable

from engine.governance import encryption
from engine.storage import filesystem_of
from engine.tables.delta import commit_metadata, table_exists
from engine.tables.files import OPEN_MAX, STATS_PROPERTY

LOG = "_delta_log"
COMMIT = re.compile(r"^\d{20}\.json$")
CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint(\.\d+\.\d+)?(\.[0-9a-f-]+)?\.parquet$")


def _log_files(uri: str) -> tuple[pafs.FileSystem, list[str]]:
    filesystem, base = filesystem_of(f"{uri}/{LOG}")
    infos = filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return filesystem, sorted(i.path for i in infos if i.type == pafs.FileType.File)


def _commits(uri: str) -> tuple[pafs.FileSystem, list[str]]:
    filesystem, files = _log_files(uri)
    return filesystem, [f for f in files if COMMIT.match(f.rsplit("/", 1)[-1])]


def logged_paths(uri: str) -> set[str]:
    """Every data file path an add action of a commit file names, live or removed since."""
    filesystem, commits = _commits(uri)
    paths = set()
    for commit in commits:
        with filesystem.open_input_stream(commit) as stream:
            for line in stream.read().decode().splitlines():
                if line.strip():
                    action = json.loads(line)
                    if "add" in action:
                        paths.add(action["add"]["path"])
    return paths


def strip_stats(uri: str, paths: Collection[str] | None = None, columns: Collection[str] | None = None) -> int:
    """Remove statistics from the add actions of `paths` (every add action when None) in every commit file:
    all of them, or only the min/max of `columns` (text bounds become ones that say nothing, since readers
    that prune by statistics drop a file whose column has no bounds). Returns how many commit files were
    rewritten."""
    filesystem, commits = _commits(uri)
    rewritten = 0
    for commit in commits:
        with filesystem.open_input_stream(commit) as stream:
            lines = stream.read().decode().splitlines()
        changed = False
        for index, line in enumerate(lines):
            if '"add"' not in line:
                continue
            action = json.loads(line)
            add = action.get("add")
            if not add or add.get("stats") is None or (paths is not None and add["path"] not in paths):
                continue
            add["stats"] = _without(add["stats"], columns)
            if add["stats"] is None:
                del add["stats"]
            lines[index] = json.dumps(action, separators=(",", ":"))
            changed = True
        if changed:
            _replace(filesystem, commit, ("\n".join(lines) + "\n").encode())
            rewritten += 1
    return rewritten


def _without(stats: str, columns: Collection[str] | None) -> str | None:
    if columns is None:
        return None
    parsed = json.loads(stats)
    for bound, blank in (("minValues", ""), ("maxValues", OPEN_MAX)):
        for column in columns:
            value = parsed.get(bound, {}).pop(column, None)
            if isinstance(value, str):
                parsed[bound][column] = blank
    return json.dumps(parsed, separators=(",", ":"))


def _replace(filesystem: pafs.FileSystem, path: str, content: bytes) -> None:
    temporary = f"{path.rsplit('/', 1)[0]}/.{uuid.uuid4().hex}.scrub.tmp"
    with filesystem.open_output_stream(temporary) as stream:
        stream.write(content)
    filesystem.move(temporary, path)


def refresh_checkpoints(uri: str) -> bool:
    """When the table has checkpoints, write one of the latest version and delete the older ones; True
    when it had any."""
    filesystem, files = _log_files(uri)
    older = [f for f in files if CHECKPOINT.match(f.rsplit("/", 1)[-1])]
    if not older:
        return False
    table = DeltaTable(uri)
    table.create_checkpoint()
    latest = f"{table.version():020d}"
    for path in older:
        if not path.rsplit("/", 1)[-1].startswith(latest):
            filesystem.delete_file(path)
    return True


def delete_data_files(uri: str, paths: Collection[str]) -> int:
    """Delete data files of the table (relative paths) that exist; returns how many were deleted."""
    deleted = 0
    for path in paths:
        filesystem, location = filesystem_of(f"{uri}/{unquote(path)}")
        if filesystem.get_file_info(location).type == pafs.FileType.File:
            filesystem.delete_file(location)
            deleted += 1
    return deleted


def delta_tables(folder: str) -> list[str]:
    """Delta tables at or below `folder` (a folder holding `_delta_log`)."""
    filesystem, base = filesystem_of(folder)
    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    prefix = folder[: len(folder) - len(base)]
    return sorted(prefix + i.path.rsplit("/", 1)[0] for i in infos
                  if i.type == pafs.FileType.Directory and i.path.endswith(f"/{LOG}"))


def stats_columns(schema: pa.Schema, personal: Iterable[str]) -> str:
    """The value of `delta.dataSkippingStatsColumns` that keeps every column but `personal` in statistics."""
    excluded = set(personal)
    return ",".join(name for name in schema.names if name not in excluded)


def keep_out_of_stats(uri: str, personal: Collection[str], metadata: dict[str, Any],
                      encrypted: Mapping[str, str] | None = None, key_columns: Sequence[str] = ()) -> bool:
    """Make the table at `uri` leave `personal` columns out of the statistics of the files it gets from now
    on (`delta.dataSkippingStatsColumns`), and strip their min/max from the files already logged; record the
    `encrypted` columns (column: key id) and the `key_columns` their values are bound to
    (`encryption.encryption_properties`), all in one commit carrying `metadata`. Does nothing when the table is
    missing or already set; True when it set it."""
    if not table_exists(uri):
        return False
    table = DeltaTable(uri)
    schema = pa.schema(table.schema().to_arrow())
    present = [c for c in personal if c in schema.names]
    current = table.metadata().configuration
    wanted = {STATS_PROPERTY: stats_columns(schema, present)}
    recorded = {c: key_id for c, key_id in (encrypted or {}).items() if c in schema.names}
    if recorded or encryption.ENCRYPTED_PROPERTY in current:
        wanted |= encryption.encryption_properties(recorded, key_columns)
    changed = {name: value for name, value in wanted.items() if current.get(name) != value}
    if not present or not changed:
        return False
    table.alter.set_table_properties(changed, raise_if_not_exists=False,
                                     commit_properties=commit_metadata(metadata))
    if STATS_PROPERTY in changed:
        strip_stats(uri, columns=present)
        refresh_checkpoints(uri)
    return True
