"""How a table's definition changed: which parts, a short diff, and whether the change is breaking.

A change is *breaking* when the table's rows or their meaning may change: it is rebuilt, and so is every table
downstream. It is *non-breaking* when it only adds columns: the table is rebuilt, and a downstream table only
when its code names one of the columns added. The kind is expected from the definitions (a change to anything
but the code is breaking; a code change is non-breaking when the new code only inserts into the old, such as a
new `with_columns` call or a new expression in a list) and then checked on the rebuilt rows
(`engine.changes.verify`): a change expected non-breaking that altered an existing column's values counts as
breaking. A user's `--change-kind` overrides both, and can also say *forward-only*: nothing is rebuilt, the new
definition applies to the rows the next runs write (existing rows change only by a declared schema migration).
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass
from typing import Literal

from engine.changes.fingerprint import CODE_PART, DefinitionParts
from engine.source_code import parse

ChangeCategory = Literal["breaking", "non-breaking", "forward-only"]
CHANGE_CATEGORIES: tuple[ChangeCategory, ...] = ("breaking", "non-breaking", "forward-only")
_DIFF_LINES = 12


@dataclass(frozen=True)
class DefinitionChange:
    """A table's definition compared with the one its rows were built by.

    Attributes:
        parts: the parts that changed (`code`, `kind`, `checks`, ...), empty when the earlier definition was not
            kept (then the change is breaking).
        kind: `breaking` or `non-breaking`, as expected from the definitions, or as the user said (also
            `forward-only`).
        diff: up to a dozen lines of unified diff of the changed parts.
        overridden: the user chose `kind`.
    """

    parts: tuple[str, ...]
    kind: ChangeCategory
    diff: tuple[str, ...] = ()
    overridden: bool = False

    def describe(self) -> str:
        """`definition changed (code, kind): breaking`."""
        what = f" ({', '.join(self.parts)})" if self.parts else ""
        return f"definition changed{what}: {self.kind}{' (as told)' if self.overridden else ''}"


def compare(before: DefinitionParts | None, after: DefinitionParts, override: ChangeCategory | None = None
            ) -> DefinitionChange:
    """The change from `before` (None: not kept) to `after`, of kind `override` when given."""
    if before is None:
        return DefinitionChange((), override or "breaking", (), override is not None)
    names = sorted(set(before.parts) | set(after.parts))
    changed = tuple(n for n in names if before.parts.get(n) != after.parts.get(n))
    expected: ChangeCategory = "non-breaking" if changed == (CODE_PART,) and _only_inserts(
        before.parts[CODE_PART], after.parts[CODE_PART]) else "breaking"
    return DefinitionChange(changed, override or expected, _diff(before, after, changed), override is not None)


def _diff(before: DefinitionParts, after: DefinitionParts, changed: tuple[str, ...]) -> tuple[str, ...]:
    lines: list[str] = []
    for name in changed:
        old, new = before.parts.get(name, "").splitlines(), after.parts.get(name, "").splitlines()
        lines += [f"{name}:", *(line for line in difflib.unified_diff(old, new, n=0, lineterm="")
                                if not line.startswith(("---", "+++", "@@")))]
    return tuple(lines[:_DIFF_LINES]) + ((f"... {len(lines) - _DIFF_LINES} more line(s)",)
                                         if len(lines) > _DIFF_LINES else ())


def _only_inserts(old_code: str, new_code: str) -> bool:
    """Whether the new code's syntax tree is the old one with nodes inserted into lists only (statements,
    arguments, list items) or the old expression as the receiver of new method calls."""
    try:
        return _contains(parse(new_code), parse(old_code))
    except SyntaxError:
        return False


def _contains(new: ast.AST, old: ast.AST) -> bool:
    if type(new) is not type(old):
        return _wraps(new, old)
    for name, old_value in ast.iter_fields(old):
        new_value = getattr(new, name, None)
        if isinstance(old_value, list):
            if not isinstance(new_value, list) or not _subsequence(new_value, old_value):
                return False
        elif isinstance(old_value, ast.AST):
            if not isinstance(new_value, ast.AST) or not _contains(new_value, old_value):
                return False
        elif old_value != new_value:
            return False
    return True


def _wraps(new: ast.AST, old: ast.AST) -> bool:
    """`old.with_columns(...)`-style: the new expression calls a method on the old one."""
    while isinstance(new, ast.Call) and isinstance(new.func, ast.Attribute):
        new = new.func.value
        if type(new) is type(old) and _contains(new, old):
            return True
    return False


def _subsequence(new: list[object], old: list[object]) -> bool:
    position = 0
    for item in old:
        while position < len(new) and not _matches(new[position], item):
            position += 1
        if position == len(new):
            return False
        position += 1
    return True


def _matches(new: object, old: object) -> bool:
    if isinstance(old, ast.AST) and isinstance(new, ast.AST):
        return _contains(new, old)
    return new == old
