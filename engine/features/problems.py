"""The feature server's error document, `{"error": {"code": ..., "message": ..., "details": ...}}`: a refused
request's status, code, message and details, repeating at most `ECHO_LIMIT` characters of any value the caller
sent (`shown`)."""

from __future__ import annotations

import json
from typing import Any

ECHO_LIMIT = 200
"""Characters of a value the caller sent that an error document repeats; longer ones are cut."""
ECHO_ITEMS = 50
"""Items of a list or object in an error document's details; the rest are counted."""


def shown(value: Any, limit: int = ECHO_LIMIT) -> str:
    """`value` as an error document may repeat it: its text, cut after `limit` characters with an ellipsis and
    its length (`aaa… (512000 characters)`)."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _bounded(value: Any) -> Any:
    """`value` (details of an error document) with every string `shown` and at most `ECHO_ITEMS` items per
    list or object."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        rest = [f"… {len(items) - ECHO_ITEMS} more"] if len(items) > ECHO_ITEMS else []
        return [_bounded(item) for item in items[:ECHO_ITEMS]] + rest
    if isinstance(value, dict):
        kept = {shown(key): _bounded(item) for key, item in list(value.items())[:ECHO_ITEMS]}
        return kept | ({"…": f"{len(value) - ECHO_ITEMS} more"} if len(value) > ECHO_ITEMS else {})
    return value


class RequestProblem(Exception):
    """A request the server refuses: HTTP status, a stable code, a message and details, bounded however much
    of the request they repeat (messages quote values with `shown`)."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(shown(message, 4 * ECHO_LIMIT))
        self.status = status
        self.code = code
        self.details = _bounded(details)

    def body(self) -> bytes:
        """The JSON error document."""
        return json.dumps({"error": {"code": self.code, "message": str(self), "details": self.details}}).encode()
