"""Pins: table versions that readers still need (a model's training set, a feature materialization in
progress), kept by vacuum. One JSON file per pin under `<root>/_meta/pins/`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import pyarrow.fs as pafs

from engine.errors import MaintenanceError
from engine.layout import Layout
from engine.storage import filesystem_of


@dataclass(frozen=True)
class Pin:
    """One version of one table that vacuum must keep readable.

    Attributes:
        id: the pin's id (its file name without `.json`).
        table: `<layer>.<name>` (or `quarantine.<layer>.<name>`).
        version: the pinned version.
        who: the reader that needs it (e.g. `model churn v3`, `feast materialization`).
        until: when the pin lapses; None: until it is removed.
        created_at: when it was made.
    """

    id: str
    table: str
    version: int
    who: str
    until: datetime | None
    created_at: datetime

    def active(self, now: datetime) -> bool:
        """Whether the pin still holds at `now`."""
        return self.until is None or self.until > now


def pin(layout: Layout, table: str, version: int, *, who: str, until: datetime | None = None) -> Pin:
    """Keep `version` of `table` readable through vacuums until `until` (or until `unpin`)."""
    return pin_versions(layout, {table: version}, who=who, until=until)[0]


def pin_versions(layout: Layout, versions: Mapping[str, int], *, who: str, until: datetime | None = None) -> list[Pin]:
    """Pin every table's version of `versions` for the reader `who`."""
    created = datetime.now(UTC)
    made = [Pin(uuid.uuid4().hex[:12], table, int(version), who, until, created) for table, version in versions.items()]
    filesystem, folder = filesystem_of(layout.pins())
    filesystem.create_dir(folder, recursive=True)
    for item in made:
        record = asdict(item) | {"until": item.until.isoformat() if item.until else None,
                                 "created_at": item.created_at.isoformat()}
        with filesystem.open_output_stream(f"{folder}/{item.id}.json") as sink:
            sink.write(json.dumps(record, sort_keys=True).encode())
    return made


@contextmanager
def pinned(layout: Layout, table: str, version: int, *, who: str, hours: float = 24.0) -> Iterator[Pin]:
    """Pin `version` of `table` while the block reads it; the pin lapses after `hours` should the reader die
    before removing it."""
    made = pin(layout, table, version, who=who, until=datetime.now(UTC) + timedelta(hours=hours))
    try:
        yield made
    finally:
        unpin(layout, made.id)


def unpin(layout: Layout, pin_id: str) -> Pin:
    """Remove the pin `pin_id`; returns it.

    Raises:
        MaintenanceError: there is no such pin.
    """
    found = [p for p in list_pins(layout) if p.id == pin_id]
    if not found:
        raise MaintenanceError(f"no pin `{pin_id}` under {layout.pins()}; `medallion maintain pins` lists them",
                               path=layout.pins())
    filesystem, folder = filesystem_of(layout.pins())
    filesystem.delete_file(f"{folder}/{pin_id}.json")
    return found[0]


def list_pins(layout: Layout, table: str | None = None, *, active_at: datetime | None = None) -> list[Pin]:
    """The pins (of `table` only, when given; only those holding at `active_at`, when given), oldest first."""
    filesystem, folder = filesystem_of(layout.pins())
    infos = filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    found = []
    for info in infos:
        if info.type != pafs.FileType.File or not info.base_name.endswith(".json"):
            continue
        with filesystem.open_input_stream(info.path) as source:
            record = json.loads(source.read())
        until = datetime.fromisoformat(record["until"]) if record["until"] else None
        found.append(Pin(record["id"], record["table"], int(record["version"]), record["who"], until,
                         datetime.fromisoformat(record["created_at"])))
    return sorted((p for p in found if (table is None or p.table == table)
                   and (active_at is None or p.active(active_at))), key=lambda p: (p.created_at, p.id))
