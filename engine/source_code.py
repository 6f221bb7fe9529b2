"""Code and declaration values as canonical text, so that formatting, comments and docstrings do not count.

A function's code is `ast.unparse` of its syntax tree without docstrings and decorators, followed through its
globals and closure to the project's functions, classes and constants it uses (not to installed packages).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import sys
import sysconfig
import textwrap
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

_LIBRARY_FOLDERS = tuple(Path(p).resolve() for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                                                     sysconfig.get_paths()["stdlib"]})
_SIMPLE = (str, int, float, bool, bytes, type(None))
_TREES: dict[int, tuple[Any, tuple[ast.AST, str] | None]] = {}
"""Parsed syntax trees and their text by object id, with the object (kept alive, so its id is not reused)."""
_DECLARED: dict[int, tuple[Any, str]] = {}
"""`declared_code` by function id, with the function (kept alive, so its id is not reused)."""
_PARSING = threading.RLock()
"""Held while Python parses: `ast.parse` in two threads at once fails or builds a wrong tree in Python 3.11
(`SystemError: AST constructor recursion depth mismatch`), and a run builds tables in threads."""


def code_text(function: Callable[..., Any]) -> str:
    """The canonical code of `function` and of the project's functions, classes and constants it reaches."""
    seen: dict[str, str] = {}
    with _PARSING:
        _collect(function, seen)
    return "\n\n".join(seen[name] for name in sorted(seen))


def declared_code(function: Callable[..., Any]) -> str:
    """`code_text(function)` as first read in this process: a table's code, which a run reads before it calls any
    table function."""
    with _PARSING:
        cached = _DECLARED.get(id(function))
        if cached is None or cached[0] is not function:
            cached = _DECLARED[id(function)] = (function, code_text(function))
        return cached[1]


def _collect(obj: Any, seen: dict[str, str]) -> None:
    target = inspect.unwrap(obj) if callable(obj) else obj
    name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"
    if name in seen or not _in_project(target):
        return
    parsed = _syntax_tree(target)
    if parsed is None:
        code = getattr(target, "__code__", None)
        if code is not None:  # defined where its source cannot be read (exec'd text): its bytecode stands in
            seen[name] = f"{name} = {_bytecode(code)}"
        return
    tree, seen[name] = parsed
    for referenced, value in _references(target, tree):
        if isinstance(value, (types.FunctionType, type)):
            _collect(value, seen)
        elif _is_constant(value):
            seen.setdefault(f"{name}:{referenced}", f"{referenced} = {canonical(value)}")


def _references(target: Any, tree: ast.AST) -> Iterator[tuple[str, Any]]:
    """The global and closure names `tree` reads, with their values; `module.attribute` through project modules.
    Of module globals only immutable constants count (a module-level list or dict is state, not code); a
    closure's lists and dicts are the arguments of the function that made it, so they count."""
    scope: dict[str, Any] = {name: value for name, value in (
        getattr(target, "__globals__", None) or vars(sys.modules.get(target.__module__, sys))).items()
        if not _is_constant(value) or _is_constant(value, mutable=False)}
    closure = getattr(target, "__closure__", None) or ()
    free = getattr(getattr(target, "__code__", None), "co_freevars", ())
    for variable, cell in zip(free, closure, strict=False):
        try:
            scope[variable] = cell.cell_contents
        except ValueError:
            continue
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = scope.get(node.value.id)
            if isinstance(module, types.ModuleType) and _in_project(module) and hasattr(module, node.attr):
                yield f"{node.value.id}.{node.attr}", getattr(module, node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in scope:
            yield node.id, scope[node.id]


def _syntax_tree(target: Any) -> tuple[ast.AST, str] | None:
    """The syntax tree of `target`'s source without docstrings and decorators, and its text, made once per object
    (the tables of a pipeline share their helpers); None when its source cannot be read."""
    cached = _TREES.get(id(target))
    if cached is not None and cached[0] is target:
        return cached[1]
    tree = _parse(target)
    parsed = None if tree is None else (tree, ast.unparse(tree))
    _TREES[id(target)] = (target, parsed)
    return parsed


def _parse(target: Any) -> ast.AST | None:
    try:
        tree = parse(textwrap.dedent(inspect.getsource(target)))
    except (OSError, TypeError, SyntaxError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            node.decorator_list = []
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def parse(source: str) -> ast.Module:
    """`ast.parse` of `source`, one thread at a time."""
    with _PARSING:
        return ast.parse(source)


def _bytecode(code: types.CodeType) -> str:
    """The instructions, names and constants of `code` and of the code nested in it, without line numbers."""
    constants = [_bytecode(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
    return json.dumps([code.co_code.hex(), list(code.co_names), constants])


def _in_project(obj: Any) -> bool:
    """Whether `obj` is defined in a source file outside the interpreter's and the installed packages' folders."""
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:
        return False
    if not path:
        return isinstance(obj, types.FunctionType)
    resolved = Path(path).resolve()
    return not any(resolved.is_relative_to(folder) for folder in _LIBRARY_FOLDERS)


def _is_constant(value: Any, *, mutable: bool = True) -> bool:
    """Whether `value` is plain data: simple values in tuples and frozensets, or (`mutable`) lists, sets, dicts."""
    if isinstance(value, _SIMPLE):
        return True
    if isinstance(value, (tuple, frozenset)) or (mutable and isinstance(value, (list, set))):
        return all(_is_constant(item, mutable=mutable) for item in value)
    if mutable and isinstance(value, dict):
        return all(_is_constant(k, mutable=mutable) and _is_constant(v, mutable=mutable) for k, v in value.items())
    return False


def canonical(value: Any) -> str:
    """A stable text for declaration values: pydantic models and dataclasses by their fields, classes (a pandera
    contract) and functions by their code."""
    return json.dumps(_plain(value), sort_keys=True, default=str)


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (type, types.FunctionType)):
        return code_text(value) if _in_project(value) else f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    return value
