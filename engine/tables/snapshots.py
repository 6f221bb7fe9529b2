"""What a run learns of its Delta tables, kept while it lasts: a table it reads at one version is opened once,
and a table found to exist is not looked for again.

Each open of a Delta table lists its log and reads its checkpoint and newest commits, and each check that a table
exists lists its log too: on object storage each is a request or more, and a build asks about each of its tables
and inputs several times (whether it exists, its latest version, then its rows and its row count at that version).
While `kept()` is entered, the snapshot that finds a table's latest version is kept under that version, and reads
at that version take it instead of opening the table again; a table seen to exist is known to. A version's
contents never change and a run deletes no table, so these are the answers the storage would give; they are
dropped when the last `kept()` block ends, so a table deleted and built again later (version 0 again) is never
answered from an old snapshot. Kept snapshots are only read, never written through.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from deltalake import DeltaTable

_lock = threading.Lock()
_kept: dict[tuple[str, int], DeltaTable] = {}
_existing: set[str] = set()
_depth = 0


@contextmanager
def kept() -> Iterator[None]:
    """Keep the snapshots `remember` is given for the block (blocks may nest, and run in several threads)."""
    global _depth
    with _lock:
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _kept.clear()
                _existing.clear()


def remember(uri: str, opened: DeltaTable) -> None:
    """Keep `opened`, the table at `uri`, under its version while a `kept()` block lasts."""
    with _lock:
        if _depth:
            _kept[(uri, opened.version())] = opened
            _existing.add(uri)


def remember_exists(uri: str) -> None:
    """Know that a table exists at `uri` while a `kept()` block lasts."""
    with _lock:
        if _depth:
            _existing.add(uri)


def known_to_exist(uri: str) -> bool:
    """Whether a table was seen at `uri` in the `kept()` block."""
    with _lock:
        return uri in _existing


def at_version(uri: str, version: int) -> DeltaTable | None:
    """The kept snapshot of the table at `uri` at `version`, None when none is kept."""
    with _lock:
        return _kept.get((uri, version))
