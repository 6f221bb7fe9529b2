"""Column encryption: every value sealed with AES-256-GCM-SIV and bound to its table, column and row.

A stored value is `0x02 (format) || key id (4 bytes) || nonce (12) || ciphertext || tag (16)`: the value's
UTF-8 bytes encrypted with AES-256-GCM-SIV (RFC 8452, `cryptography`'s AEAD) under the 32-byte column key and
a random nonce. The associated data, authenticated but not stored, is
`0x02 || key id || table length (2 bytes) || table || column length (2 bytes) || column || row key`: the row
key is the row's key columns as bytes (`keyhash.key_bytes` of the columns recorded in the table property
`medallion.encryptionRowKey`, the table's declared keys), empty for a table without keys, whose values are
bound to their table and column only. A value altered, or moved to another row, column or table, fails
authentication; nothing is ever returned for it. The key id is the first 4 bytes of
HMAC-SHA256(key, "medallion column key id"); it picks the key among the current and previous ones, so keys
rotate (`medallion maintain rotate-keys`). Values of the first format (`0x01`, `encryption_legacy.py`) are
still read.

The batch API is Arrow in, Arrow out, with 64-bit offsets (large_binary, large_string); the AEAD runs once
per value, in a list comprehension (`benchmarks/encryption.py` measures it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from engine.errors import GovernanceError
from engine.governance.encryption_legacy import LEGACY_FORMAT, LegacyKey, open_legacy
from engine.keyhash import key_bytes

FORMAT = 0x02
KEY_BYTES = 32
KEY_ID_BYTES = 4
NONCE_BYTES = 12
TAG_BYTES = 16
HEAD_BYTES = 1 + KEY_ID_BYTES
HEADER_BYTES = HEAD_BYTES + NONCE_BYTES
ENCRYPTED_PROPERTY = "medallion.encryptedColumns"
ROW_KEY_PROPERTY = "medallion.encryptionRowKey"
KEY_VARIABLES = "MEDALLION_ENCRYPTION_KEY (or MEDALLION__ENCRYPTION__KEY), or `encryption.key_file`"
GENERATE_KEY = "python -c \"import secrets; print(secrets.token_hex(32))\""
_KEY_ID_INFO = b"medallion column key id"

Open = Callable[[bytes, bytes, bytes], bytes]
"""An AEAD's decrypt: nonce, ciphertext and tag, associated data -> plaintext; raises `InvalidTag`."""


@dataclass(frozen=True)
class ColumnKey:
    """A 32-byte column-encryption key.

    Attributes:
        key_id: 8 hex digits of HMAC-SHA256(key, "medallion column key id"): names the key in every stored
            value and in messages without revealing it.
        material: the key bytes; never shown by `repr`.
    """

    key_id: str
    material: bytes = field(repr=False)

    @classmethod
    def from_bytes(cls, material: bytes) -> ColumnKey:
        """The key of 32 bytes of key material, with its key id."""
        if len(material) != KEY_BYTES:
            raise GovernanceError(f"a column-encryption key is {KEY_BYTES} bytes, not {len(material)}; generate one "
                                  f"with `{GENERATE_KEY}`")
        return cls(hmac.new(material, _KEY_ID_INFO, hashlib.sha256).hexdigest()[:2 * KEY_ID_BYTES], material)

    @classmethod
    def parse(cls, text: str, source: str) -> ColumnKey:
        """The key written as 64 hex digits or as the base64 of 32 bytes.

        Raises:
            GovernanceError: `text` is neither; the message names `source`, never the text.
        """
        material = key_material(text)
        if material is None:
            raise GovernanceError(f"the column-encryption key in {source} is not {KEY_BYTES} bytes written as 64 hex "
                                  f"digits or as base64; generate one with `{GENERATE_KEY}` (a secret of the first "
                                  "format goes under `encryption.previous_keys`)")
        return cls.from_bytes(material)

    @property
    def header(self) -> bytes:
        """The first 5 bytes of every value this key encrypts: the format and the key id."""
        return bytes([FORMAT]) + bytes.fromhex(self.key_id)


@dataclass(frozen=True)
class ColumnKeys:
    """The keys of column encryption.

    Attributes:
        current: encrypts; decrypts the values it wrote.
        previous: decrypt the values they wrote, picked by key id.
        legacy: the first format's derivations of every configured secret, for values of that format.
    """

    current: ColumnKey
    previous: tuple[ColumnKey, ...] = ()
    legacy: tuple[LegacyKey, ...] = ()


def key_material(text: str) -> bytes | None:
    """The 32 bytes `text` writes as 64 hex digits or as (standard or URL-safe, padded or not) base64; None
    otherwise."""
    text = text.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text)
        except ValueError:
            return None
    try:
        padded = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
        material = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return material if len(material) == KEY_BYTES else None


def encrypt(values: pa.Array | pa.ChunkedArray, key: ColumnKey, table: str, column: str,
            row_key: pa.Array | None = None) -> pa.Array:
    """`values` (as text) encrypted with `key` and bound to `table`, `column` and each row's `row_key` bytes
    (None: a table without keys), as large_binary, nulls kept null; a fresh random nonce per value, so equal
    values give different ciphertexts."""
    plain = _large(_large(values, pa.large_string()), pa.large_binary()).to_pylist()
    seal, head = AESGCMSIV(key.material).encrypt, key.header
    prefix = head + _names(table, column)
    pool = os.urandom(NONCE_BYTES * len(plain))
    nonces = (pool[start:start + NONCE_BYTES] for start in range(0, len(pool), NONCE_BYTES))
    rows = _row_bytes(row_key, len(plain))
    stored = [None if value is None else head + nonce + seal(nonce, value, prefix + row)
              for value, nonce, row in zip(plain, nonces, rows)]
    return pa.array(stored, pa.large_binary())


def decrypt(values: pa.Array | pa.ChunkedArray, keys: ColumnKeys, table: str, column: str,
            row_key: pa.Array | None = None) -> pa.Array:
    """The plaintext (large_string) of values `encrypt` stored for `table`, `column` and each row's `row_key`
    bytes (None: a table without keys), nulls kept null.

    Raises:
        GovernanceError: a value is not in a known format, was encrypted with a key `keys` lacks (the message
            names its key id and the current one), or fails authentication: altered, corrupt, or moved from
            another row, column or table (the message counts the rows).
    """
    array = _large(values, pa.large_binary())
    sealed, legacy = _openers(keys, _heads(array), table, column)
    stored, rows = array.to_pylist(), _row_bytes(row_key, len(array))
    try:
        if len(sealed) == 1 and not legacy:
            ((open_with, prefix),) = sealed.values()
            plain = [None if value is None else open_with(value[HEAD_BYTES:HEADER_BYTES], value[HEADER_BYTES:],
                                                          prefix + row) for value, row in zip(stored, rows)]
        else:
            plain = [None if value is None else _open(sealed, legacy, value, row) for value, row in zip(stored, rows)]
    except InvalidTag:
        failing = sum(1 for value, row in zip(stored, rows)
                      if value is not None and not _opens(sealed, legacy, value, row))
        raise GovernanceError(f"{failing} rows of column `{column}` of table `{table}` fail authentication: they "
                              "were altered or corrupted, or moved from another row, column or table",
                              table=table) from None
    return pa.array(plain, pa.large_binary()).cast(pa.large_string())


def rotate(values: pa.Array | pa.ChunkedArray, keys: ColumnKeys, table: str, column: str,
           row_key: pa.Array | None = None) -> tuple[pa.Array, int]:
    """`values` (large_binary) with every value not in the current format under the current key decrypted
    and encrypted again with it, and how many were.

    Raises:
        GovernanceError: as `decrypt`, for the values it re-encrypts.
    """
    stored = _large(values, pa.large_binary())
    stale = _stale(stored, keys.current)
    count = pc.sum(stale).as_py() or 0
    if not count:
        return stored, 0
    bound = None if row_key is None else row_key.filter(stale)
    fresh = encrypt(decrypt(stored.filter(stale), keys, table, column, bound), keys.current, table, column, bound)
    return pc.replace_with_mask(stored, stale, fresh), count


def row_keys(rows: pa.Table, table: str, key_columns: Sequence[str]) -> pa.Array | None:
    """The row key bytes of every row of `table` (`keyhash.key_bytes`), None for a table without keys.

    Raises:
        GovernanceError: `rows` lack a key column.
    """
    if not key_columns:
        return None
    missing = [c for c in key_columns if c not in rows.column_names]
    if missing:
        raise GovernanceError(f"table `{table}` binds its encrypted values to its key columns "
                              f"{', '.join(f'`{c}`' for c in key_columns)}, and its rows lack "
                              f"{', '.join(f'`{c}`' for c in missing)}; keep the key columns in the rows", table=table)
    return key_bytes(rows, key_columns)


def decrypt_columns(rows: pa.Table, columns: Iterable[str], keys: ColumnKeys, table: str,
                    key_columns: Sequence[str] = ()) -> pa.Table:
    """`rows` of `table` with each of the encrypted `columns` it has decrypted to text, bound to the rows'
    `key_columns` (see `row_key_columns`)."""
    row_key = row_keys(rows, table, key_columns)
    for column in columns:
        if column in rows.column_names:
            index = rows.column_names.index(column)
            rows = rows.set_column(index, pa.field(column, pa.large_string()),
                                   decrypt(rows.column(index), keys, table, column, row_key))
    return rows


def rotate_columns(rows: pa.Table, columns: Iterable[str], keys: ColumnKeys, table: str,
                   key_columns: Sequence[str] = ()) -> tuple[pa.Table, int]:
    """`rows` of `table` with the values of its encrypted `columns` not under the current key re-encrypted with
    it (see `rotate`), and how many were."""
    row_key = row_keys(rows, table, key_columns)
    total = 0
    for column in columns:
        if column in rows.column_names:
            index = rows.column_names.index(column)
            rotated, count = rotate(rows.column(index), keys, table, column, row_key)
            rows = rows.set_column(index, rows.schema.field(index).with_type(pa.large_binary()), rotated)
            total += count
    return rows, total


def stale_values(rows: pa.Table, keys: ColumnKeys, table: str) -> int:
    """How many values of `rows` (encrypted columns of `table`) are not in the current format under the current
    key.

    Raises:
        GovernanceError: one of them is of no known format, or under a key `keys` lacks.
    """
    total = 0
    for column, values in zip(rows.column_names, rows.columns):
        stored = _large(values, pa.large_binary())
        stale = stored.filter(_stale(stored, keys.current))
        _openers(keys, _heads(stale), table, column)
        total += len(stale)
    return total


def encryption_properties(columns: Mapping[str, str], key_columns: Sequence[str]) -> dict[str, str]:
    """The table properties that record the encrypted `columns` (`column:key id`, comma-separated, in
    `medallion.encryptedColumns`) and the key columns their values are bound to (`medallion.encryptionRowKey`,
    empty for a table without keys)."""
    return {ENCRYPTED_PROPERTY: ",".join(f"{column}:{key_id}" for column, key_id in columns.items()),
            ROW_KEY_PROPERTY: ",".join(key_columns)}


def encrypted_columns(configuration: Mapping[str, str]) -> dict[str, str]:
    """The encrypted columns a table's properties record, with the id of the key that last wrote them."""
    recorded = configuration.get(ENCRYPTED_PROPERTY) or ""
    return dict(item.split(":", 1) for item in recorded.split(",") if ":" in item)


def row_key_columns(configuration: Mapping[str, str]) -> tuple[str, ...] | None:
    """The key columns a table's properties record its encrypted values to be bound to; None when they record
    none (a table written only in the first format)."""
    recorded = configuration.get(ROW_KEY_PROPERTY)
    return None if recorded is None else tuple(c for c in recorded.split(",") if c)


def _openers(keys: ColumnKeys, heads: list[bytes], table: str, column: str) -> tuple[
        dict[bytes, tuple[Open, bytes]], dict[bytes, LegacyKey]]:
    """What opens the values of each of `heads` (format and key id): the AEAD's decrypt and the start of the
    associated data for the current format, the key for the first.

    Raises:
        GovernanceError: a head is of no known format, or names a key `keys` lacks.
    """
    current = {key.header: key for key in (keys.current, *keys.previous)}
    first = {key.header: key for key in keys.legacy}
    sealed = {head: (AESGCMSIV(current[head].material).decrypt, head + _names(table, column))
              for head in heads if head in current}
    legacy = {head: first[head] for head in heads if head in first}
    unknown = [head for head in heads if head not in sealed and head not in legacy]
    if any(len(head) < HEAD_BYTES or head[0] not in (FORMAT, LEGACY_FORMAT) for head in unknown):
        raise GovernanceError(f"column `{column}` of table `{table}` holds values that are not column-encrypted "
                              "(unknown format); is it declared `encrypt`?", table=table)
    if unknown:
        named = ", ".join(sorted(head[1:].hex() + ("" if head[0] == FORMAT else " (first format)")
                                 for head in unknown))
        raise GovernanceError(
            f"column `{column}` of table `{table}` holds values encrypted with key {named}, neither the current "
            f"key {keys.current.key_id} nor a previous one; set {KEY_VARIABLES} to the key they were written "
            "with, or list it in `encryption.previous_keys`", table=table)
    return sealed, legacy


def _heads(stored: pa.Array) -> list[bytes]:
    """The distinct first 5 bytes (format and key id) of the values of `stored` (large_binary)."""
    return pc.unique(pc.binary_slice(stored.drop_null(), 0, HEAD_BYTES)).to_pylist()


def _open(sealed: dict[bytes, tuple[Open, bytes]], legacy: dict[bytes, LegacyKey], value: bytes,
          row: bytes) -> bytes:
    """The plaintext of one value of any known head; raises `InvalidTag`."""
    head = value[:HEAD_BYTES]
    if head in legacy:
        return open_legacy(legacy[head], value)
    open_with, prefix = sealed[head]
    return open_with(value[HEAD_BYTES:HEADER_BYTES], value[HEADER_BYTES:], prefix + row)


def _opens(sealed: dict[bytes, tuple[Open, bytes]], legacy: dict[bytes, LegacyKey], value: bytes,
           row: bytes) -> bool:
    try:
        _open(sealed, legacy, value, row)
    except InvalidTag:
        return False
    return True


def _stale(stored: pa.Array, key: ColumnKey) -> pa.Array:
    """Which `stored` values are not in the current format under `key` (nulls are not)."""
    current = pa.scalar(key.header, pa.large_binary())
    return pc.fill_null(pc.not_equal(pc.binary_slice(stored, 0, HEAD_BYTES), current), False)


def _row_bytes(row_key: pa.Array | None, count: int) -> list[bytes]:
    """The row key bytes of `count` rows, empty ones for a table without keys."""
    return [b""] * count if row_key is None else row_key.to_pylist()


def _names(table: str, column: str) -> bytes:
    """The table and column names in the associated data, each after its length."""
    return b"".join(struct.pack(">H", len(name)) + name for name in (table.encode(), column.encode()))


def _large(values: pa.Array | pa.ChunkedArray, data_type: pa.DataType) -> pa.Array:
    """`values` cast to `data_type` (a large type: 64-bit offsets) as one array."""
    cast = values.cast(data_type)
    return cast.combine_chunks() if isinstance(cast, pa.ChunkedArray) else cast
