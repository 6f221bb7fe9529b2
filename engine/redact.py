"""Secrets kept out of logs and error messages.

`redact_url` is how the engine shows any URL it logs or puts in an error: without credentials, query string or
fragment, and, for URLs that may carry a token in their path (the alert webhook, the OpenLineage endpoint),
without the path. `hide` registers the secret values the engine is configured with (settings of type
`SecretStr`, keys read from files); once something is hidden, or the logging is configured
(`engine.logs.configure`), every log record of every logger is made with those values and the credentials of
any URL replaced, whoever logs it (a library logging its own configuration at DEBUG, say). `describe_error`
says what went wrong with a connection in words that cannot hold its URL.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

REDACTED = "<redacted>"
MIN_SECRET = 4
"""Shorter values are not replaced in log records: they would garble every message and protect little."""

_TOKEN_USER = 16
"""A URL's user name this long, without a password, is taken for a token and hidden."""
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/]*@")
_hidden: tuple[str, ...] = ()
"""The registered secret values, longest first (so a value containing another is replaced whole)."""
_lock = threading.Lock()


def redact_url(url: str, *, secret_path: bool = False) -> str:
    """`url` fit for a log or an error message: credentials, query string and fragment removed, and with
    `secret_path` the path too (`https://hooks.slack.com/<redacted>`). A string that is not a URL (no `://`:
    `auto`, `host:port`, a local path) comes back as it is (as `<redacted>` with `secret_path`); one that cannot
    be parsed, or has an `@` past its authority (a password with an unencoded `#`, `?` or `/`), as its scheme
    only."""
    if "://" not in url:
        return REDACTED if secret_path else url
    scheme, _, rest = url.partition("://")
    if not _SCHEME.fullmatch(scheme):
        return REDACTED
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:  # an unclosed IPv6 bracket, a password with an unencoded `#`, `?` or `/` before `@`
        return f"{scheme}://{REDACTED}"
    if rest.count("@") > parts.netloc.count("@"):  # an `@` past the authority: credentials may hide there too
        return f"{scheme}://{REDACTED}"
    path = f"/{REDACTED}" if secret_path and parts.path not in ("", "/") else parts.path
    return f"{scheme}://{parts.netloc.rpartition('@')[2]}{path}"


def hide(value: str | None, *, secret_path: bool = False) -> None:
    """Register a secret so that no log record shows it: a URL's credentials, query and fragment (and its path
    with `secret_path`), or the whole of any other value. A URL's host is not hidden: messages may name it."""
    global _hidden
    if not value:
        return
    parts = _url_secrets(value, secret_path) if "://" in value else [value]
    fresh = {part for part in parts if len(part) >= MIN_SECRET} - set(_hidden)
    if not fresh:
        return
    with _lock:
        _hidden = tuple(sorted(set(_hidden) | fresh, key=len, reverse=True))
    protect_logs()


def _url_secrets(url: str, secret_path: bool) -> list[str]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    userinfo = parts.netloc.rpartition("@")[0]
    raw_userinfo = url.partition("://")[2].rpartition("@")[0]  # what precedes the last `@`, were it mis-encoded
    # A user name alone (`postgres://root@host`) is no secret, and hiding it would garble every message that
    # names that word; a long one is taken for a token (`https://<token>@host`).
    secrets = [value for value in (userinfo, raw_userinfo) if ":" in value or len(value) >= _TOKEN_USER]
    secrets += [userinfo.partition(":")[2], parts.query, parts.fragment]
    if secret_path and parts.path not in ("", "/"):
        secrets.append(parts.path)
    return secrets


def redact_text(text: str) -> str:
    """`text` with every hidden value replaced and the credentials of every URL in it removed."""
    for secret in _hidden:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "://" in text and "@" in text:
        text = _USERINFO.sub(r"\1", text)
    return text


def describe_error(error: object) -> str:
    """A failed call in words that cannot contain its URL: the HTTP status, `timed out`, the operating
    system's message (`Connection refused`) found along the error's causes, else the error's type."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(status, int):
        return f"HTTP {status}"
    seen: set[int] = set()
    current: Any = error
    while isinstance(current, BaseException) and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TimeoutError):
            return "timed out"
        if isinstance(current, OSError) and current.strerror:
            return str(current.strerror)
        current = current.__cause__ or current.__context__ or next(
            (arg for arg in current.args if isinstance(arg, BaseException)), None)
    return type(error).__name__ if isinstance(error, BaseException) else "connection failed"


def protect_logs() -> None:
    """Make every log record from now on with hidden values and URL credentials replaced in its message and
    exception text (a record factory, so that every handler, a test's log capture included, sees it so)."""
    current = logging.getLogRecordFactory()
    if not getattr(current, "redacting", False):
        logging.setLogRecordFactory(_redacting(current))


def _redacting(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        _redact_record(record)
        return record

    factory.redacting = True  # type: ignore[attr-defined]
    return factory


def _redact_record(record: logging.LogRecord) -> None:
    """Rewrite `record`'s message (and exception text) when it shows a hidden value or URL credentials."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record is reported by the handler that formats it
        return
    redacted = redact_text(message)
    if redacted != message:
        record.msg, record.args = redacted, None
    if record.exc_info and record.exc_info[0] is not None:
        text = logging.Formatter().formatException(record.exc_info)
        cleaned = redact_text(text)
        if cleaned != text:
            record.exc_text = cleaned
