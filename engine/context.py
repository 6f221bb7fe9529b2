"""What a table function may know about the run that calls it: the settings, the run, the table, and the
versions of the inputs it was given. Most functions need none of it; one that reads something beside its input
Datasets (a registered model, a feature store over the same tables) uses it to read at those versions."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from engine.config import Settings
from engine.errors import PipelineDefinitionError


@dataclass(frozen=True)
class TableContext:
    """The run building a table.

    Attributes:
        settings: the run's settings (storage root, access, training, ...).
        run_id: the run's id.
        table: the table being built.
        input_versions: the version of every input and referenced table the run read (None: not built yet).
    """

    settings: Settings
    run_id: str
    table: str
    input_versions: Mapping[str, int | None]


_current: contextvars.ContextVar[TableContext | None] = contextvars.ContextVar("medallion_table_context",
                                                                              default=None)


def table_context() -> TableContext:
    """The context of the table function being called.

    Raises:
        PipelineDefinitionError: no run is calling a table function.
    """
    context = _current.get()
    if context is None:
        raise PipelineDefinitionError("table_context() is only available inside a table function called by a run")
    return context


@contextmanager
def building(context: TableContext) -> Iterator[None]:
    """Make `context` the one `table_context` returns in the block."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)
