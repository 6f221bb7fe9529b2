"""Secrets from the environment or secret files only, kept out of reprs, logs (`engine.redact`) and messages."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from engine import redact
from engine.config import EncryptionSettings, PiiSettings
from engine.errors import GovernanceError
from engine.governance.encryption import ColumnKey, ColumnKeys, key_material
from engine.governance.encryption_legacy import LegacyKey
from engine.layout import Layout

PII_KEY_ENV = "MEDALLION_PII_KEY"
ENCRYPTION_KEY_ENV = "MEDALLION_ENCRYPTION_KEY"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PiiKey:
    """The active tokenization key.

    Attributes:
        version: written into every token (`v1:...`), so tokens of a rotated key are told apart.
        secret: the key bytes; never shown by `repr`.
    """

    version: str
    secret: bytes = field(repr=False)


def read_secret_file(path: str, setting: str = "pii.key_file") -> str:
    """The content of a secret file, stripped of surrounding whitespace.

    Raises:
        GovernanceError: the file cannot be read or is empty.
    """
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as err:
        raise GovernanceError(f"cannot read secret file `{path}` ({err.strerror}); fix `{setting}`",
                              path=path) from None
    if not value:
        raise GovernanceError(f"secret file `{path}` is empty; write the key into it", path=path)
    return value


def pii_key(settings: PiiSettings, needed_by: str, root: str | None = None) -> PiiKey:
    """The tokenization key: `pii.key` (env `MEDALLION__PII__KEY`), else `$MEDALLION_PII_KEY`, else the
    secret file `pii.key_file`, else (with `pii.local_key`, for development) the local key of the storage
    `root`, generated on first use.

    Raises:
        GovernanceError: no key is configured; the message names `needed_by` (the table or operation).
    """
    if settings.key is not None:
        value = settings.key.get_secret_value()
    elif os.environ.get(PII_KEY_ENV):
        value = os.environ[PII_KEY_ENV]
    elif settings.key_file:
        value = read_secret_file(settings.key_file)
    elif settings.local_key and root is not None and "://" not in root:
        value = read_secret_file(str(_local_key_file(Layout.at(root))))
    else:
        raise GovernanceError(
            f"{needed_by} needs the personal-data key, and none is set; set {PII_KEY_ENV} (or "
            "MEDALLION__PII__KEY), or point `pii.key_file` at a secret file")
    redact.hide(value)
    return PiiKey(settings.key_version, value.encode())


def column_keys(settings: EncryptionSettings, needed_by: str) -> ColumnKeys:
    """The column-encryption keys. The current one: `encryption.key` (env `MEDALLION__ENCRYPTION__KEY`), else
    `$MEDALLION_ENCRYPTION_KEY`, else the secret file `encryption.key_file`; there is no development key: data
    encrypted with a key nobody keeps could never be read back. The previous ones: `encryption.previous_keys`
    and the files `encryption.previous_key_files`. Every configured secret also reads the values of the first
    format it wrote.

    Raises:
        GovernanceError: no current key is configured (the message names `needed_by`, the table or
            operation), the current key is not 32 bytes as 64 hex digits or base64, or a file cannot be read.
    """
    source = "`encryption.key` (MEDALLION__ENCRYPTION__KEY)"
    value = settings.key.get_secret_value() if settings.key is not None else ""
    if not value and os.environ.get(ENCRYPTION_KEY_ENV):
        source, value = ENCRYPTION_KEY_ENV, os.environ[ENCRYPTION_KEY_ENV]
    if not value and settings.key_file:
        source, value = f"`{settings.key_file}` (`encryption.key_file`)", read_secret_file(
            settings.key_file, "encryption.key_file")
    if not value:
        raise GovernanceError(
            f"{needed_by} needs the column-encryption key, and none is set; set {ENCRYPTION_KEY_ENV} (or "
            "MEDALLION__ENCRYPTION__KEY), or point `encryption.key_file` at a secret file")
    redact.hide(value)
    previous = [key.get_secret_value() for key in settings.previous_keys] + [
        read_secret_file(path, "encryption.previous_key_files") for path in settings.previous_key_files]
    for secret in previous:
        redact.hide(secret)
    material = [key_material(secret) for secret in previous]
    return ColumnKeys(ColumnKey.parse(value, source),
                      tuple(ColumnKey.from_bytes(m) for m in material if m is not None),
                      tuple(LegacyKey.from_secret(secret) for secret in [value, *previous]))


def _local_key_file(layout: Layout) -> Path:
    """`<root>/_meta/secrets/pii.key`, created with a random key readable by its owner only when missing."""
    path = Path(layout.pii_key())
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32))
        log.warning("generated a development personal-data key in `%s`; in production set %s or `pii.key_file` "
                    "and `pii.local_key: false`", path, PII_KEY_ENV)
    return path
