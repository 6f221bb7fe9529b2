"""The boundary between the engine and a table's own code: a table function is called, and whatever it
raises, here or in a Ray task, becomes one `TableFailed` that names the table, the function and the
user's original exception."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import ray.data
import ray.exceptions

from engine.errors import EngineError, TableFailed
from engine.pipeline import TableDefinition


def call_table_function(definition: TableDefinition, inputs: list[ray.data.Dataset]) -> ray.data.Dataset:
    """The table function called on its inputs; it must return a Ray Dataset."""
    assert definition.function is not None
    function = definition.function
    output = guarded(definition, lambda: function(*inputs))
    if not isinstance(output, ray.data.Dataset):
        raise TableFailed(
            f"table `{definition.name}`: `{function.__module__}.{function.__qualname__}` returned "
            f"{type(output).__name__}; a table function must return a ray.data.Dataset",
            table=definition.name,
        )
    return output


def guarded(definition: TableDefinition, action: Callable[[], Any]) -> Any:
    """Run `action`; any error that is not the engine's own, or that was raised in a Ray task, becomes a
    `TableFailed` naming the table."""
    try:
        return action()
    except Exception as err:
        if isinstance(err, EngineError) and not isinstance(err, ray.exceptions.RayTaskError):
            raise
        where = ""
        if definition.function is not None:
            where = f" in `{definition.function.__module__}.{definition.function.__qualname__}`"
        raise TableFailed(
            f"table `{definition.name}` failed{where}: {describe(root_cause(err))}; "
            "the table keeps its previous version; fix the cause and run again",
            table=definition.name,
        ) from err


def root_cause(err: BaseException) -> BaseException:
    """The exception that started it all; a Ray task error is kept whole, as it carries the remote trace."""
    seen = {id(err)}
    while not isinstance(err, ray.exceptions.RayTaskError):
        cause = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        if cause is None or id(cause) in seen:
            return err
        seen.add(id(cause))
        err = cause
    return err


_RAISED_LINE = re.compile(r"^([A-Za-z_][\w.]*): (.+)$")


def describe(err: BaseException) -> str:
    """`Type: message` of an exception; for one raised in a Ray task, of the user's original exception."""
    text = str(err).strip()
    if isinstance(err, ray.exceptions.RayTaskError):
        original = text.split("The above exception was the direct cause", 1)[0]
        raised = [m for m in map(_RAISED_LINE.match, original.splitlines()) if m]
        if raised:
            return raised[-1].group(0)
    lines = [line for line in text.splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else repr(err)}"
