"""Column encryption: AES-256-CTR then HMAC-SHA256, whole Arrow columns at a time.

A stored value is `0x01 || key id (4 bytes) || nonce (12) || tag (16) || ciphertext`. The ciphertext is the
value's UTF-8 bytes XOR the AES-256-CTR keystream of counter blocks `nonce || big-endian uint32 block index`;
the tag is the first 16 bytes of HMAC-SHA256(MAC key, nonce || ciphertext) (encrypt-then-MAC). The keystream
of a whole batch comes from one AES-ECB call over counter blocks built with numpy, the XOR and the byte
layout are numpy, the HMACs run inside DuckDB (as `pii.tokenize`): no Python code runs per value.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from engine.errors import GovernanceError

FORMAT = 0x01
KEY_ID_BYTES = 4
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = 1 + KEY_ID_BYTES + NONCE_BYTES + TAG_BYTES
ENCRYPTED_PROPERTY = "medallion.encryptedColumns"
KEY_VARIABLES = "MEDALLION_ENCRYPTION_KEY (or MEDALLION__ENCRYPTION__KEY), or `encryption.key_file`"
_AES = 16
_HMAC_BLOCK = 64


@dataclass(frozen=True)
class ColumnKey:
    """The column-encryption key.

    Attributes:
        key_id: 8 hex digits of HMAC-SHA256(MAC key, "medallion column key"): names the key in every stored
            value and in messages without revealing it.
        aes_key: the AES-256 key (HKDF-SHA256 of the secret); never shown by `repr`.
        mac_key: the HMAC-SHA256 key (HKDF-SHA256 of the secret, another `info`); never shown by `repr`.
    """

    key_id: str
    aes_key: bytes = field(repr=False)
    mac_key: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, secret: str) -> ColumnKey:
        """The AES and MAC keys derived from `secret` with HKDF-SHA256, and their key id."""
        aes_key, mac_key = (HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret.encode())
                            for info in (b"medallion column encryption", b"medallion column authentication"))
        key_id = hmac.new(mac_key, b"medallion column key", hashlib.sha256).hexdigest()[:2 * KEY_ID_BYTES]
        return cls(key_id, aes_key, mac_key)


def encrypt(values: pa.Array | pa.ChunkedArray, key: ColumnKey) -> pa.BinaryArray:
    """`values` (as text) encrypted and authenticated with `key`, nulls kept null; a fresh random nonce per
    value, so equal values give different ciphertexts."""
    text = _combined(pc.cast(values, pa.string()))
    present = pc.drop_null(text)
    data, offsets = _buffers(present)
    lengths = np.diff(offsets)
    nonces = np.frombuffer(os.urandom(NONCE_BYTES * len(present)), np.uint8).reshape(-1, NONCE_BYTES)
    ciphertext = data ^ _keystream(key, nonces, offsets)
    tags = _tags(key, nonces, ciphertext, lengths)
    header = np.concatenate([np.full((len(present), 1), FORMAT, np.uint8),
                             np.tile(np.frombuffer(bytes.fromhex(key.key_id), np.uint8), (len(present), 1)),
                             nonces, tags], axis=1)
    stored = _binary(*_pack([(header.ravel(), np.full(len(present), HEADER_BYTES)), (ciphertext, lengths)]))
    return _scatter(stored, text)


def decrypt(values: pa.Array | pa.ChunkedArray, key: ColumnKey, table: str, column: str) -> pa.StringArray:
    """The plaintext of values `encrypt` stored, nulls kept null.

    Raises:
        GovernanceError: a value is not in the stored format, was encrypted with another key (the message
            names the stored key id and the given one), or fails authentication (altered or corrupt).
    """
    stored = _combined(pc.cast(values, pa.binary()))
    present = pc.drop_null(stored)
    data, offsets = _buffers(present)
    lengths = np.diff(offsets) - HEADER_BYTES
    if (lengths < 0).any() or (data[offsets[:-1]] != FORMAT).any():
        raise GovernanceError(f"column `{column}` of table `{table}` holds values that are not column-encrypted "
                              "(unknown format); is it declared `encrypt`?", table=table)
    header = data[offsets[:-1, None] + np.arange(HEADER_BYTES)]
    key_ids = np.ascontiguousarray(header[:, 1:1 + KEY_ID_BYTES]).view(">u4").ravel()
    if (key_ids != int(key.key_id, 16)).any():
        stored_ids = ", ".join(f"{key_id:08x}" for key_id in np.unique(key_ids))
        raise GovernanceError(
            f"column `{column}` of table `{table}` was encrypted with key {stored_ids}, not "
            f"with the given key {key.key_id}; set {KEY_VARIABLES} to the key it was written with", table=table)
    nonces = header[:, 1 + KEY_ID_BYTES:1 + KEY_ID_BYTES + NONCE_BYTES]
    ciphertext = data[_positions(offsets[:-1] + HEADER_BYTES, lengths)]
    bad = (_tags(key, nonces, ciphertext, lengths) != header[:, HEADER_BYTES - TAG_BYTES:]).any(axis=1)
    if bad.any():
        raise GovernanceError(f"{int(bad.sum())} rows of column `{column}` of table `{table}` fail authentication: "
                              "they were altered or corrupted after encryption", table=table)
    plain_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    plain = _binary(ciphertext ^ _keystream(key, nonces, plain_offsets), plain_offsets).cast(pa.string())
    return _scatter(plain, stored)


def decrypt_columns(rows: pa.Table, columns: Iterable[str], key: ColumnKey, table: str) -> pa.Table:
    """`rows` with each of the encrypted `columns` it has decrypted to text."""
    for column in columns:
        if column in rows.column_names:
            index = rows.column_names.index(column)
            rows = rows.set_column(index, pa.field(column, pa.string()),
                                   decrypt(rows.column(index), key, table, column))
    return rows


def describe(columns: Mapping[str, str]) -> str:
    """The value of the `medallion.encryptedColumns` table property: `column:key id`, comma-separated."""
    return ",".join(f"{column}:{key_id}" for column, key_id in columns.items())


def encrypted_columns(configuration: Mapping[str, str]) -> dict[str, str]:
    """The encrypted columns a table's properties record, with the id of the key that last wrote them."""
    recorded = configuration.get(ENCRYPTED_PROPERTY) or ""
    return dict(item.split(":", 1) for item in recorded.split(",") if ":" in item)


def _combined(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _buffers(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The value bytes and the offsets (from 0) of a string or binary array without nulls."""
    if len(values) == 0:
        return np.empty(0, np.uint8), np.zeros(1, np.int64)
    _, offset_buffer, data_buffer = values.buffers()
    offsets = np.frombuffer(offset_buffer, np.int32)[values.offset:values.offset + len(values) + 1].astype(np.int64)
    data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
    return data[offsets[0]:offsets[-1]], offsets - offsets[0]


def _positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indexes `start, start + 1, ..., start + length - 1` of every run, concatenated."""
    ends = np.cumsum(lengths)
    return np.arange(int(ends[-1]) if len(ends) else 0) + np.repeat(starts - (ends - lengths), lengths)


def _keystream(key: ColumnKey, nonces: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The AES-256-CTR keystream bytes of values at `offsets`, each with its nonce, concatenated."""
    lengths = np.diff(offsets)
    blocks = -(-lengths // _AES)
    counters = np.empty((int(blocks.sum()), _AES), np.uint8)
    counters[:, :NONCE_BYTES] = np.repeat(nonces, blocks, axis=0)
    first = np.cumsum(blocks) - blocks
    index = np.arange(len(counters)) - np.repeat(first, blocks)
    counters[:, NONCE_BYTES:] = index.astype(">u4").view(np.uint8).reshape(-1, 4)
    stream = Cipher(algorithms.AES(key.aes_key), modes.ECB()).encryptor().update(counters.tobytes())
    return np.frombuffer(stream, np.uint8)[_positions(first * _AES, lengths)]


def _tags(key: ColumnKey, nonces: np.ndarray, ciphertext: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The first 16 bytes of HMAC-SHA256(MAC key, nonce || ciphertext) of every value, one row each."""
    if len(lengths) == 0:
        return np.empty((0, TAG_BYTES), np.uint8)
    messages = _binary(*_pack([(nonces.ravel(), np.full(len(lengths), NONCE_BYTES)), (ciphertext, lengths)]))
    padded = key.mac_key.ljust(_HMAC_BLOCK, b"\0")
    inner, outer = bytes(b ^ 0x36 for b in padded), bytes(b ^ 0x5C for b in padded)
    with duckdb.connect() as db:
        db.execute("SET enable_progress_bar = false")
        db.register("batch", pa.table({"m": messages}))
        tags = db.sql("SELECT unhex(substr(sha256(?::BLOB || unhex(sha256(?::BLOB || m))), 1, ?)) AS t FROM batch",
                      params=[outer, inner, 2 * TAG_BYTES]).to_arrow_table()
    data, _ = _buffers(_combined(tags.column("t")).cast(pa.binary()))
    return data.reshape(-1, TAG_BYTES)


def _pack(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per value, its bytes of each part one after the other: `parts` are (bytes, length per value)."""
    total = sum(lengths for _, lengths in parts)
    offsets = np.concatenate([[0], np.cumsum(total)]).astype(np.int64)
    out = np.empty(int(offsets[-1]), np.uint8)
    before = offsets[:-1].copy()
    for data, lengths in parts:
        out[_positions(before, lengths)] = data
        before += lengths
    return out, offsets


def _binary(data: np.ndarray, offsets: np.ndarray) -> pa.BinaryArray:
    return pa.Array.from_buffers(pa.binary(), len(offsets) - 1,
                                 [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)])


def _scatter(present: pa.Array, like: pa.Array) -> pa.Array:
    """`present` (the values of `like` that are not null) put back at their places, nulls where `like`'s are."""
    if like.null_count == 0:
        return present
    valid = np.asarray(like.is_valid())
    return present.take(pa.array(np.cumsum(valid) - 1, mask=~valid))
