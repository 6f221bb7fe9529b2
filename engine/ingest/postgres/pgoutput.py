"""Decoding a batch of `pgoutput` (protocol version 1) messages into bronze rows, column by column.

Each change becomes one row: the new values of the source's columns as PostgreSQL prints them (the text form),
`_op` (`c` insert, `u` update, `d` delete, `t` truncate), `_lsn` and `_commit_time` of the transaction's commit,
`_position` (ordering every change of the source: the commit's LSN, then the change's place in its transaction)
and `_before` (the old values the server sent, as JSON, when the table's replica identity sends them). A delete
carries the old key (or the whole old row) in the source's columns. The server decodes and filters; this module
reads the bytes in the task that fetched them.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import pyarrow as pa

from engine.errors import IngestError

OP = "_op"
LSN = "_lsn"
POSITION = "_position"
COMMIT_TIME = "_commit_time"
BEFORE = "_before"
UNCHANGED = "_unchanged"
"""Columns whose unchanged large (TOASTed) value the server did not send with an update: `docs/sources.md`."""

CHANGE_COLUMNS = (OP, LSN, POSITION, COMMIT_TIME, BEFORE, UNCHANGED)

_POSTGRES_EPOCH_US = 946_684_800_000_000
"""Microseconds from the Unix epoch to PostgreSQL's (2000-01-01)."""


def format_lsn(lsn: int) -> str:
    """An LSN as PostgreSQL prints it (`16/B374D848`)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """An LSN printed by PostgreSQL, as a number."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def position(lsn: int, index: int) -> str:
    """The `_position` of the `index`th change of the transaction committed at `lsn` (0 for a snapshot row)."""
    return f"{lsn:016X}{index:08X}"


@dataclass(frozen=True)
class Relation:
    """A table's shape as a Relation message describes it."""

    schema: str
    name: str
    columns: tuple[str, ...]
    type_oids: tuple[int, ...]
    type_modifiers: tuple[int, ...]
    key: tuple[str, ...]


@dataclass
class DecodedBatch:
    """The rows of a batch of messages, the shapes the table had in it, and where it ended.

    Attributes:
        columns: the source's columns, by name, one value (or None) per row.
        relations: every shape the table was described with, in order.
        end_lsn: the end of the last transaction decoded (None when no transaction was).
        truncates: how many TRUNCATE events the batch holds.
    """

    columns: dict[str, list[str | None]] = field(default_factory=dict)
    engine: dict[str, list[object]] = field(default_factory=lambda: {name: [] for name in CHANGE_COLUMNS})
    relations: list[Relation] = field(default_factory=list)
    end_lsn: int | None = None
    truncates: int = 0
    rows: int = 0

    def table(self, ordered: list[str]) -> pa.Table:
        """The rows as an Arrow table: the source's columns in `ordered` order (then any other seen), all
        strings, then the change columns."""
        names = ordered + [c for c in self.columns if c not in ordered]
        arrays = {name: pa.array(self.columns.get(name, [None] * self.rows), pa.string()) for name in names}
        arrays |= {OP: pa.array(self.engine[OP], pa.string()), LSN: pa.array(self.engine[LSN], pa.string()),
                   POSITION: pa.array(self.engine[POSITION], pa.string()),
                   COMMIT_TIME: pa.array(self.engine[COMMIT_TIME], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                   BEFORE: pa.array(self.engine[BEFORE], pa.string()),
                   UNCHANGED: pa.array(self.engine[UNCHANGED], pa.string())}
        return pa.table(arrays)


class _Reader:
    """A cursor over one message's bytes."""

    __slots__ = ("data", "at")

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 1

    def int8(self) -> int:
        self.at += 1
        return self.data[self.at - 1]

    def int16(self) -> int:
        (value,) = struct.unpack_from(">h", self.data, self.at)
        self.at += 2
        return int(value)

    def int32(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.at)
        self.at += 4
        return int(value)

    def int64(self) -> int:
        (value,) = struct.unpack_from(">q", self.data, self.at)
        self.at += 8
        return int(value)

    def string(self) -> str:
        end = self.data.index(0, self.at)
        text = self.data[self.at:end].decode()
        self.at = end + 1
        return text

    def tuple_data(self) -> list[tuple[str, str | None]]:
        """(kind, value) per column: `n` null, `u` unchanged TOAST value (not sent), `t` text."""
        values: list[tuple[str, str | None]] = []
        for _ in range(self.int16()):
            kind = chr(self.int8())
            if kind == "t":
                length = self.int32()
                values.append((kind, self.data[self.at:self.at + length].decode()))
                self.at += length
            elif kind in ("n", "u"):
                values.append((kind, None))
            else:
                raise IngestError(f"pgoutput: unsupported column value kind `{kind}` (binary mode is not used)")
        return values


class Decoder:
    """Decodes the messages of one table's publication, in order, into a `DecodedBatch`."""

    def __init__(self, schema: str, table: str) -> None:
        self.schema, self.table = schema, table
        self.batch = DecodedBatch()
        self._relations: dict[int, Relation] = {}
        self._commit_lsn = 0
        self._commit_time = 0
        self._index = 0

    def feed(self, message: bytes) -> None:
        """Decode one message."""
        reader = _Reader(message)
        kind = chr(message[0])
        if kind == "B":
            self._commit_lsn, time, _ = reader.int64(), reader.int64(), reader.int32()
            self._commit_time, self._index = time + _POSTGRES_EPOCH_US, 0
        elif kind == "C":
            reader.int8()
            reader.int64()
            self.batch.end_lsn = reader.int64()
        elif kind == "R":
            self._relation(reader)
        elif kind in ("I", "U", "D"):
            relation = self._relations.get(reader.int32())
            if relation is not None and (relation.schema, relation.name) == (self.schema, self.table):
                self._change(kind, relation, reader)
        elif kind == "T":
            count, _ = reader.int32(), reader.int8()
            ids = [reader.int32() for _ in range(count)]
            if any((r.schema, r.name) == (self.schema, self.table) for i in ids if (r := self._relations.get(i))):
                self.batch.truncates += 1
                self._row("t", {}, None)
        # Origin, Type and logical Message messages carry nothing bronze keeps.

    def _relation(self, reader: _Reader) -> None:
        relation_id, schema, name = reader.int32(), reader.string(), reader.string()
        reader.int8()
        columns, oids, modifiers, key = [], [], [], []
        for _ in range(reader.int16()):
            flags, column, oid, modifier = reader.int8(), reader.string(), reader.int32(), reader.int32()
            columns.append(column)
            oids.append(oid)
            modifiers.append(modifier)
            if flags & 1:
                key.append(column)
        relation = Relation(schema, name, tuple(columns), tuple(oids), tuple(modifiers), tuple(key))
        self._relations[relation_id] = relation
        if (schema, name) == (self.schema, self.table):
            self.batch.relations.append(relation)

    def _change(self, kind: str, relation: Relation, reader: _Reader) -> None:
        before: dict[str, tuple[str, str | None]] | None = None
        marker = chr(reader.int8())
        if kind != "I" and marker in ("K", "O"):
            old = dict(zip(relation.columns, reader.tuple_data(), strict=True))
            # An old key (`K`) holds the key columns only; an old row (`O`, REPLICA IDENTITY FULL) every column.
            before = {c: old[c] for c in relation.key} if marker == "K" else old
            if kind == "U":
                marker = chr(reader.int8())
        if kind == "D":
            assert before is not None
            self._row("d", {c: v for c, (_, v) in before.items()}, before)
            return
        if marker != "N":
            raise IngestError(f"pgoutput: table `{self.schema}.{self.table}`: unexpected tuple marker `{marker}`")
        values: dict[str, str | None] = {}
        unchanged = []
        for column, (value_kind, value) in zip(relation.columns, reader.tuple_data(), strict=True):
            if value_kind == "u":  # a large value the update did not change: known only from an old row
                kept = (before or {}).get(column, ("u", None))
                if kept[0] == "u":
                    unchanged.append(column)
                value = kept[1]
            values[column] = value
        self._row("c" if kind == "I" else "u", values, before, unchanged)

    def _row(self, op: str, values: dict[str, str | None], before: dict[str, tuple[str, str | None]] | None,
             unchanged: list[str] | tuple[str, ...] = ()) -> None:
        batch = self.batch
        for column, value in values.items():
            if column not in batch.columns:
                batch.columns[column] = [None] * batch.rows
            batch.columns[column].append(value)
        for column, kept in batch.columns.items():
            if column not in values:
                kept.append(None)
        engine = batch.engine
        engine[OP].append(op)
        engine[LSN].append(format_lsn(self._commit_lsn))
        engine[POSITION].append(position(self._commit_lsn, self._index))
        engine[COMMIT_TIME].append(self._commit_time)
        engine[BEFORE].append(None if before is None else json.dumps(
            {c: v for c, (k, v) in before.items() if k != "u"}, separators=(",", ":")))
        engine[UNCHANGED].append(",".join(unchanged) or None)
        batch.rows += 1
        self._index += 1
