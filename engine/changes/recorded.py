"""What a table's commits record of the definition that built it, and the stored definitions to compare with.

Every commit of a derived table records `medallion.built_by`:

- `fingerprint`: of the definition that built it (`DefinitionParts.fingerprint`);
- `epoch`: names the table's rows' meaning: a new one at each breaking rebuild, carried over otherwise, so a
  downstream table sees that an input changed meaning since it was built, even runs later;
- `inputs`: the epoch of each input the table was built from;
- `rebuilt` (on a rebuild's commits only): `change` (`breaking` or `non-breaking`), `added` (columns it
  added) and `before` (the version it was rebuilt from).

The definitions themselves (their canonical parts) lie in `<root>/_meta/definitions/<table>/<fingerprint>.json`,
written before the commit that records them, so that what changed can be shown later.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.changes.fingerprint import DefinitionParts
from engine.layout import Layout
from engine.storage import create_only, read_bytes
from engine.tables.formats import TableStore

DEFINITION_KEY = "built_by"


@dataclass(frozen=True)
class Rebuilt:
    """A rebuild a commit recorded: its change kind, the columns it added and the version it started from."""

    change: str
    before: int | None
    added: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecordedDefinition:
    """The definition a table's newest commit records (see the module docstring), and that commit's version."""

    fingerprint: str
    epoch: str
    inputs: Mapping[str, str] = field(default_factory=dict)
    rebuilt: Rebuilt | None = None
    version: int | None = None

    def to_metadata(self) -> dict[str, Any]:
        """The commit metadata value."""
        value: dict[str, Any] = {"fingerprint": self.fingerprint, "epoch": self.epoch, "inputs": dict(self.inputs)}
        if self.rebuilt is not None:
            value["rebuilt"] = {"change": self.rebuilt.change, "before": self.rebuilt.before,
                                "added": list(self.rebuilt.added)}
        return value


def recorded_definition(uri: str, table: str, store: TableStore) -> RecordedDefinition | None:
    """The definition the newest commit that records one holds, None when none does (never built, or built
    before definitions were recorded)."""
    if not store.table_exists(uri):
        return None
    for commit in store.effective_history(uri, table):
        value = store.commit_info_value(commit, DEFINITION_KEY)
        if isinstance(value, Mapping) and "fingerprint" in value:
            rebuilt = value.get("rebuilt")
            return RecordedDefinition(
                str(value["fingerprint"]), str(value.get("epoch") or value["fingerprint"]),
                {str(k): str(v) for k, v in (value.get("inputs") or {}).items()},
                Rebuilt(str(rebuilt["change"]), rebuilt.get("before"), tuple(rebuilt.get("added") or ()))
                if isinstance(rebuilt, Mapping) else None, int(commit["version"]))
    return None


def save_parts(layout: Layout, parts: DefinitionParts) -> None:
    """Keep `parts` under the root (once per fingerprint), for later comparisons."""
    create_only(_path(layout, parts.table, parts.fingerprint),
                json.dumps(parts.to_json(), indent=1, sort_keys=True).encode())


def load_parts(layout: Layout, table: str, fingerprint: str) -> DefinitionParts | None:
    """The parts saved for `fingerprint`, None when they were not kept."""
    data = read_bytes(_path(layout, table, fingerprint))
    return None if data is None else DefinitionParts.from_json(json.loads(data))


def _path(layout: Layout, table: str, fingerprint: str) -> str:
    return f"{layout.definitions(table)}/{fingerprint}.json"
