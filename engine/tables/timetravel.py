"""Time travel: "as of" a version number or a point in time, resolved to a table version."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from engine.errors import EngineError

if TYPE_CHECKING:
    from engine.tables.formats import TableStore

AsOf = int | datetime


def parse_as_of(text: str) -> AsOf:
    """A version number (`12`) or an ISO-8601 time (`2026-11-26T10:00:00Z`; without a zone: UTC).

    Raises:
        EngineError: the text is neither.
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise EngineError(f"as of `{text}`: give a version number or an ISO-8601 time such as "
                          "`2026-11-26T10:00:00Z`") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def version_as_of(uri: str, table: str, as_of: AsOf | str | None, store: TableStore | None = None) -> int:
    """The version of the table at `uri` (in `store`, Delta by default) that was current as of `as_of`: that
    version when it is a number, the newest version committed at or before it when it is a time, the latest
    when None.

    Raises:
        TableNotFound: there is no table, or no such version.
        EngineError: the table had no commit yet at that time.
    """
    store = store or _delta()
    if isinstance(as_of, str):
        as_of = parse_as_of(as_of)
    if as_of is None or isinstance(as_of, int):
        return store.version(uri, table, as_of)
    version = version_at(uri, table, as_of, store)
    if version is None:
        first = min(store.history(uri, table), key=lambda c: c["version"])
        created = datetime.fromtimestamp(first.get("timestamp", 0) / 1000, UTC)
        raise EngineError(f"table `{table}` did not exist yet at {as_of.isoformat()}; its oldest version "
                          f"{first['version']} was committed at {created.isoformat()}", table=table, path=uri)
    return version


def version_at(uri: str, table: str, moment: datetime, store: TableStore | None = None) -> int | None:
    """The newest version of the table at `uri` (in `store`, Delta by default) committed at or before `moment`
    (a time without a zone is UTC), None when the table had no commit yet then."""
    limit = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000
    before = [c["version"] for c in (store or _delta()).history(uri, table) if c.get("timestamp", 0) <= limit]
    return max(before) if before else None


def _delta() -> TableStore:
    from engine.tables.formats import DeltaStore

    return DeltaStore()
