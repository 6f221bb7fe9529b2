"""Connections to a PostgreSQL source, and its publication and replication slot.

The connection string is read from the environment variable the source names, registered as a secret (no log
record shows it or its password), and never put in an error: errors say what failed in the server's words, with
the URL credentials removed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from engine.errors import SourceError
from engine.ingest.postgres.pgoutput import format_lsn, parse_lsn
from engine.ingest.postgres.source import PostgresSource
from engine.redact import hide, redact_text

PLUGIN = "pgoutput"


@dataclass(frozen=True)
class SlotState:
    """Where a replication slot stands.

    Attributes:
        confirmed: the position up to which its changes were taken in (the slot keeps what follows).
        current: the server's current WAL position.
        wal_status: `reserved`, `extended`, `unreserved` or `lost` (the WAL it needs was removed).
    """

    confirmed: int
    current: int
    wal_status: str

    @property
    def lag_bytes(self) -> int:
        """WAL bytes the slot holds back."""
        return max(0, self.current - self.confirmed)


def connection_string(source: PostgresSource) -> str:
    """The source's connection string, registered as a secret.

    Raises:
        SourceError: the environment variable is not set.
    """
    dsn = os.environ.get(source.dsn_env)
    if not dsn:
        raise SourceError(f"source `{source.qualified}`: the environment variable {source.dsn_env} holding its "
                          "connection string is not set; export it where the run (and its Ray workers) start")
    hide(dsn)
    if "://" not in dsn:
        try:
            hide(conninfo_to_dict(dsn).get("password"))  # type: ignore[arg-type]
        except psycopg.ProgrammingError:
            pass
    return dsn


def failure(source: PostgresSource, doing: str, error: Exception) -> SourceError:
    """A source error for `error`, raised while `doing`, in the server's words without any credential."""
    words = redact_text(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    return SourceError(f"source `{source.qualified}`: {doing} failed: {words}")


@contextmanager
def connect(source: PostgresSource, *, replication: bool = False) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the source's database in UTC (a replication connection with `replication`),
    closed on exit.

    Raises:
        SourceError: the server cannot be reached or refuses the connection.
    """
    dsn = connection_string(source)
    try:
        connection = psycopg.connect(dsn, autocommit=True, replication="database" if replication else None,
                                     options="-c TimeZone=UTC -c DateStyle=ISO", connect_timeout=30)
    except psycopg.Error as error:
        raise failure(source, "connecting to its database", error) from None
    try:
        yield connection
    finally:
        connection.close()


def slot_state(connection: psycopg.Connection, source: PostgresSource) -> SlotState | None:
    """The state of the source's slot; None when there is none.

    Raises:
        SourceError: a slot of that name decodes with another plugin or in another database.
    """
    row = connection.execute(
        "SELECT plugin, database = current_database(), confirmed_flush_lsn::text, coalesce(wal_status, ''), "
        "pg_current_wal_lsn()::text FROM pg_replication_slots WHERE slot_name = %s", (source.slot_name,)).fetchone()
    if row is None:
        return None
    plugin, same_database, confirmed, wal_status, current = row
    if plugin != PLUGIN or not same_database:
        raise SourceError(f"source `{source.qualified}`: replication slot `{source.slot_name}` belongs to something "
                          f"else (plugin {plugin}, another database or a physical slot); name another with slot=")
    return SlotState(parse_lsn(confirmed or "0/0"), parse_lsn(current), wal_status)


def check_server(connection: psycopg.Connection, source: PostgresSource) -> tuple[str, ...]:
    """The table's primary key columns, once the server is checked fit for change data capture.

    Raises:
        SourceError: `wal_level` is not `logical`, the table does not exist or has no primary key.
    """
    level = connection.execute("SHOW wal_level").fetchone()
    if level is None or level[0] != "logical":
        raise SourceError(f"source `{source.qualified}`: the server's wal_level is {level[0] if level else '?'}; "
                          "change data capture needs `ALTER SYSTEM SET wal_level = logical` and a restart "
                          "(docs/sources.md)")
    row = connection.execute("SELECT to_regclass(%s)::oid", (_quoted(source),)).fetchone()
    if row is None or row[0] is None:
        raise SourceError(f"source `{source.qualified}`: no such table in the database")
    keys = connection.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = %s AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)", (row[0],)).fetchall()
    if not keys:
        raise SourceError(f"source `{source.qualified}`: the table has no primary key; change data capture needs "
                          "one to identify the rows an update or delete changes (docs/sources.md)")
    return tuple(k[0] for k in keys)


def ensure_publication(connection: psycopg.Connection, source: PostgresSource) -> None:
    """Create the source's publication of its table unless it exists.

    Raises:
        SourceError: it cannot be created (the connection's role does not own the table, say).
    """
    if connection.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (source.publication_name,)).fetchone():
        return
    try:
        connection.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}.{}").format(
            sql.Identifier(source.publication_name), sql.Identifier(source.schema_name),
            sql.Identifier(source.table_name)))
    except psycopg.Error as error:
        raise failure(source, f"creating publication `{source.publication_name}`", error) from None


def create_slot(replication: psycopg.Connection, source: PostgresSource) -> tuple[int, str]:
    """Create the source's slot on a replication connection, exporting its snapshot: the slot's consistent
    point and the snapshot's name, valid while `replication` stays open and idle.

    Raises:
        SourceError: the slot cannot be created (no free slot, no REPLICATION privilege, say).
    """
    command = f"CREATE_REPLICATION_SLOT {source.slot_name} LOGICAL {PLUGIN} (SNAPSHOT 'export')"
    result = replication.pgconn.exec_(command.encode())
    if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
        message = result.error_message.decode(errors="replace").strip()
        raise SourceError(f"source `{source.qualified}`: creating replication slot `{source.slot_name}` failed: "
                          f"{redact_text(message)}")
    consistent, snapshot = (result.get_value(0, column) for column in (1, 2))
    assert consistent is not None and snapshot is not None
    return parse_lsn(consistent.decode()), snapshot.decode()


def drop_slot(connection: psycopg.Connection, source: PostgresSource) -> None:
    """Drop the source's slot if there is one."""
    connection.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                       (source.slot_name,))


def advance_slot(connection: psycopg.Connection, source: PostgresSource, lsn: int) -> None:
    """Let the slot release the WAL up to `lsn` (changes committed before it were taken in); a slot already
    past it stays where it is."""
    state = slot_state(connection, source)
    if state is not None and state.confirmed < lsn:
        connection.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (source.slot_name, format_lsn(lsn)))


def _quoted(source: PostgresSource) -> str:
    return f'"{source.schema_name}"."{source.table_name}"'
