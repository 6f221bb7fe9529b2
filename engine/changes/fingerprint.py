"""What a table's declaration says about its rows, as canonical text per part, and its fingerprint.

The parts are what decides a table's rows: its function's code (with the module-level helpers and constants of
the project it uses, found through the function's globals and closure), its write kind and keys, its checks and
contract, its personal-data handling, its source's options, its incremental mode and schema evolution. Code is
canonical as `ast.unparse` of its syntax tree without docstrings and decorators, so formatting and comments do
not count. Description, owner, tags, column docs, freshness, maintenance and Ray options do not decide rows and
are left out.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.source_code import canonical, parse

if TYPE_CHECKING:
    from engine.pipeline import TableDefinition

CODE_PART = "code"


@dataclass(frozen=True)
class DefinitionParts:
    """A table's declaration as canonical text per part (`code`, `kind`, `checks`, `pii`, `source`, `incremental`,
    `evolution`), and its fingerprint."""

    table: str
    parts: Mapping[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """16 hex digits over every part: equal declarations, equal fingerprints."""
        return digest(json.dumps(dict(sorted(self.parts.items()))))

    def names(self) -> frozenset[str]:
        """The string constants of the code: the column names it can read."""
        return string_constants(self.parts.get(CODE_PART, ""))

    def to_json(self) -> dict[str, Any]:
        """The parts as stored beside the table's commits, to show what changed later."""
        return {"table": self.table, "fingerprint": self.fingerprint, "parts": dict(self.parts)}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> DefinitionParts:
        """The parts `to_json` stored."""
        return cls(str(document["table"]), dict(document["parts"]))


@functools.lru_cache(maxsize=1024)
def string_constants(code: str) -> frozenset[str]:
    """The string constants of `code`, parsed once per text (a long-lived driver assesses every table at each
    micro-batch)."""
    return frozenset(node.value for node in ast.walk(parse(code))
                     if isinstance(node, ast.Constant) and isinstance(node.value, str))


def definition_parts(definition: TableDefinition) -> DefinitionParts:
    """The canonical parts of `definition`."""
    parts = {
        "kind": canonical(definition.kind.meaning()),
        "checks": canonical(definition.quality),
        "pii": canonical(dict(definition.pii)),
        "incremental": canonical(definition.incremental),
        "evolution": canonical(definition.evolution),
    }
    if definition.function is not None:
        parts[CODE_PART] = definition.code
    if definition.source is not None:
        parts["source"] = canonical(definition.source)
    return DefinitionParts(definition.name, parts)


def digest(text: str) -> str:
    """16 hex digits of the SHA-256 of `text`."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
