"""Reading column values of the first encryption format (`0x01`), kept only so that values written in it can
be read and rewritten into the current one (`medallion maintain rotate-keys`); nothing is written in it.

A value is `0x01 || key id (4 bytes) || nonce (12) || tag (16) || ciphertext`. HKDF-SHA256 derived an AES-256
key and an HMAC key from the configured secret (any text); the ciphertext is the UTF-8 value XOR the AES-256-CTR
keystream of counter blocks `nonce || big-endian uint32 block index`, the tag the first 16 bytes of
HMAC-SHA256(HMAC key, nonce || ciphertext), and the key id the first 4 bytes of HMAC-SHA256(HMAC key,
"medallion column key"). The tag covers neither the header nor where the value is stored.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

LEGACY_FORMAT = 0x01
_NONCE = slice(5, 17)
_TAG = slice(17, 33)
_CIPHERTEXT = 33


@dataclass(frozen=True)
class LegacyKey:
    """The keys the first format derived from a secret.

    Attributes:
        key_id: 8 hex digits, as stored in the values it wrote.
        aes_key: the AES-256 key; never shown by `repr`.
        mac_key: the HMAC-SHA256 key; never shown by `repr`.
    """

    key_id: str
    aes_key: bytes = field(repr=False)
    mac_key: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, secret: str) -> LegacyKey:
        """The keys the first format derived from `secret` with HKDF-SHA256, and their key id."""
        aes_key, mac_key = (HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret.encode())
                            for info in (b"medallion column encryption", b"medallion column authentication"))
        return cls(hmac.new(mac_key, b"medallion column key", hashlib.sha256).hexdigest()[:8], aes_key, mac_key)

    @property
    def header(self) -> bytes:
        """The first 5 bytes of every value this key wrote: the format and the key id."""
        return bytes([LEGACY_FORMAT]) + bytes.fromhex(self.key_id)


def open_legacy(key: LegacyKey, stored: bytes) -> bytes:
    """The plaintext bytes of one value of the first format.

    Raises:
        InvalidTag: its tag does not match (altered or corrupt).
    """
    nonce, ciphertext = stored[_NONCE], stored[_CIPHERTEXT:]
    expected = hmac.new(key.mac_key, nonce + ciphertext, hashlib.sha256).digest()[:16]
    if len(stored) < _CIPHERTEXT or not hmac.compare_digest(stored[_TAG], expected):
        raise InvalidTag
    return Cipher(algorithms.AES(key.aes_key), modes.CTR(nonce + bytes(4))).decryptor().update(ciphertext)
