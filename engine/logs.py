"""Log output of the `medallion` command: the human format (default) or one JSON object per line, with the
run, pipeline and table a record belongs to.

The runner sets that context around each table (`log_context`); a filter copies it onto every record logged
meanwhile in the driver process, whatever the logger, also from threads the table's work started (Ray Data's
executor), which see the context of the innermost block open in the process. Records carry their message,
context and `extra=` fields only: settings hold their secrets as pydantic `SecretStr`, which renders as
`**********`, so a message or an `extra=` value made from them shows no secret; and `configure` has every
record, whoever logs it, made with the configured secrets and any URL's credentials replaced (`engine.redact`).

The command shows its own records only: those of libraries (and Python warnings, which become records of
`py.warnings`) are dropped below ERROR unless `configure` is asked to show them (`--verbose`).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import sysconfig
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from engine import redact

HUMAN = "human"
JSON = "json"
FORMATS = (HUMAN, JSON)
HUMAN_FORMAT = "%(levelname)s %(name)s: %(message)s"

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("medallion_log_context", default=None)
_process_context: list[dict[str, str]] = []
"""Contexts of the `log_context` blocks open in the process, innermost last, for records of other threads."""
_format = HUMAN
_LIBRARY_DIRS = tuple(sorted({sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}))

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


@contextlib.contextmanager
def log_context(**values: str | None) -> Iterator[None]:
    """Attach `values` (run_id, pipeline, table, ...) to every record logged in the block."""
    context = (_context.get() or {}) | {k: v for k, v in values.items() if v is not None}
    token = _context.set(context)
    _process_context.append(context)
    try:
        yield
    finally:
        _context.reset(token)
        with contextlib.suppress(ValueError):
            _process_context.remove(context)


def current_context() -> dict[str, str]:
    """The context set by the enclosing `log_context` blocks (in another thread: the innermost open in the
    process)."""
    context = _context.get()
    if context is None and _process_context:
        context = _process_context[-1]
    return dict(context or {})


class ContextFilter(logging.Filter):
    """Copies the current `log_context` onto a record, unless the record already carries the field."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in current_context().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class LibraryFilter(logging.Filter):
    """Drops the records below ERROR made by code of the Python installation (libraries, the standard library,
    Python warnings), except the engine's own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.levelno >= logging.ERROR or record.name == "engine" or record.name.startswith("engine.")
                or not record.pathname.startswith(_LIBRARY_DIRS))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO-8601 UTC), level, logger, message, the context fields and any
    `extra=` values (rendered with `str` when not JSON values), and the exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in document:
                document[key] = value
        if record.exc_info and not record.exc_text:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, default=str, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record is emitted (a progress display or a test runner may
    have replaced it since the handler was installed), in the format it was made with: `ray.init` sets the
    formatter of every handler of the `ray` logger, which would turn JSON lines back into text."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        super().setFormatter(formatter)
        self.addFilter(ContextFilter())
        self._medallion = True

    def setFormatter(self, fmt: logging.Formatter | None) -> None:  # noqa: N802 (logging's name)
        pass

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure(log_format: str = HUMAN, level: int | str = logging.WARNING, libraries: bool = False) -> logging.Handler:
    """Send log records at `level` and above to stderr in `log_format` (`human` or `json`), Python warnings
    included; those of libraries only at ERROR and above unless `libraries` (`LibraryFilter`).

    Replaces the handler a previous call installed and leaves other handlers (a test runner's) alone. In the
    JSON format, the console handlers libraries gave their own non-propagating loggers (Ray's `ray` and
    `ray.data`) are swapped for JSON ones with the same level and filters, so that every line on stderr is
    JSON; the human format puts them back. Records are made redacted from then on (`redact.protect_logs`).
    """
    global _format
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not `{log_format}`")
    _format = log_format
    redact.protect_logs()
    handler = _StderrHandler(JsonFormatter() if log_format == JSON else logging.Formatter(HUMAN_FORMAT))
    if not libraries:
        handler.addFilter(LibraryFilter())
    logging.captureWarnings(True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_medallion", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    _restore_console_handlers()
    if log_format == JSON:
        _swap_console_handlers()
    return handler


_swapped: list[tuple[logging.Logger, logging.Handler, logging.Handler]] = []


def _is_console(handler: logging.Handler) -> bool:
    if getattr(handler, "_medallion", False) or isinstance(handler, logging.FileHandler):
        return False
    if not isinstance(handler, logging.StreamHandler):
        return False
    stream = getattr(handler, "stream", None)
    return stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__) or type(handler).__name__ in (
        "PlainRayHandler", "_StderrHandler")


def _swap_console_handlers() -> None:
    for logger in [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]:
        for old in [h for h in logger.handlers if _is_console(h)]:
            new = _StderrHandler(JsonFormatter())
            new.setLevel(old.level)
            for extra_filter in old.filters:
                new.addFilter(extra_filter)
            logger.removeHandler(old)
            logger.addHandler(new)
            _swapped.append((logger, old, new))


def _restore_console_handlers() -> None:
    while _swapped:
        logger, old, new = _swapped.pop()
        logger.removeHandler(new)
        if old not in logger.handlers:
            logger.addHandler(old)


def json_logs() -> bool:
    """True when `configure` chose the JSON format (Ray worker output is then not forwarded to stderr)."""
    return _format == JSON
