"""Finding the landing files of a source: listed once per run, sorted by name."""

from __future__ import annotations

import fnmatch

import pyarrow.fs as pafs

from engine.errors import IngestError
from engine.ingest.sources import FileSource, LandingFile
from engine.storage import filesystem_of


def discover(folder: str, source: FileSource) -> list[LandingFile]:
    """The files of `source` under `folder`, sorted by name. A missing folder has no files.

    Files and folders whose name starts with `.` or `_` (markers, temporary uploads) are left out.
    """
    folder = folder.rstrip("/")
    filesystem, base = filesystem_of(folder)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError as err:
        raise IngestError(f"cannot list landing folder `{folder}`: {err}", path=folder) from err
    files = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        relative = info.path[len(base):].lstrip("/")
        hidden = any(part.startswith((".", "_")) for part in relative.split("/"))
        if hidden or not fnmatch.fnmatch(relative.rsplit("/", 1)[-1], source.pattern):
            continue
        files.append(LandingFile(relative, f"{folder}/{relative}", info.size, info.mtime_ns or 0))
    return sorted(files)
