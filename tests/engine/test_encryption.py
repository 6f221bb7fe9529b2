"""Encrypted columns: AES-256-CTR then HMAC-SHA256, unreadable without the key, refused with a wrong one."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray.data
from click.testing import CliRunner
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from deltalake import DeltaTable, write_deltalake

from engine import FileSource, Merge, Pipeline, Runner
from engine.cli import main
from engine.config import EncryptionSettings
from engine.errors import GovernanceError
from engine.governance.encryption import (
    ENCRYPTED_PROPERTY,
    HEADER_BYTES,
    ColumnKey,
    decrypt,
    decrypt_columns,
    encrypt,
    encrypted_columns,
)
from engine.governance.pii import STATS_PROPERTY, keep_out_of_stats, protect
from engine.governance.secrets import PiiKey, column_key
from engine.tables.layout import Layout
from tests.conftest import settings_at
from tests.engine.scan import findings

KEY = ColumnKey.from_secret("column-key-one")
OTHER = ColumnKey.from_secret("column-key-two")
VALUES = ["ann@example.com", None, "", "Zoë Łukasz 東京 🙂", "x" * 16, "y" * 33, None]


def test_values_round_trip_with_nulls_empty_and_non_ascii_text() -> None:
    stored = encrypt(pa.array(VALUES), KEY)
    assert stored.type == pa.binary() and stored.null_count == 2
    assert decrypt(stored, KEY, "t", "c").to_pylist() == VALUES
    chunked = pa.chunked_array([VALUES[:3], VALUES[3:]])
    assert decrypt(pa.chunked_array([encrypt(chunked, KEY)]), KEY, "t", "c").to_pylist() == VALUES
    assert decrypt(encrypt(pa.array([1, None, 3]), KEY), KEY, "t", "c").to_pylist() == ["1", None, "3"]
    assert decrypt(encrypt(pa.array([], pa.string()), KEY), KEY, "t", "c").to_pylist() == []


def test_many_values_of_every_length_round_trip() -> None:
    rng = np.random.default_rng(7)
    values = [None if i % 97 == 0 else f"{i}:" + "é" * int(rng.integers(0, 40)) for i in range(20_000)]
    sliced = pa.array(values).slice(5, 19_990)
    stored = encrypt(sliced, KEY)
    assert decrypt(stored, KEY, "t", "c").equals(sliced)
    assert decrypt(stored.slice(100, 50), KEY, "t", "c").equals(sliced.slice(100, 50))


def test_the_stored_format_is_aes_256_ctr_then_hmac_sha256() -> None:
    """An independent decryption of one value, from the documented layout."""
    value = encrypt(pa.array(["a value longer than one AES block"]), KEY)[0].as_py()
    nonce, tag, ciphertext = value[5:17], value[17:33], value[33:]
    assert value[0] == 0x01 and value[1:5].hex() == KEY.key_id and len(value) == HEADER_BYTES + 33
    assert tag == hmac.new(KEY.mac_key, nonce + ciphertext, hashlib.sha256).digest()[:16]
    aes = Cipher(algorithms.AES(KEY.aes_key), modes.CTR(nonce + b"\0\0\0\0")).decryptor()
    assert aes.update(ciphertext) == b"a value longer than one AES block"


def test_equal_values_encrypt_differently() -> None:
    first = encrypt(pa.array(["same", "same"]), KEY).to_pylist()
    assert first[0] != first[1] and encrypt(pa.array(["same"]), KEY)[0].as_py() not in first


def test_no_plaintext_reaches_the_stored_bytes() -> None:
    values = [f"person{i}@example.com" for i in range(1000)] + ["Zoë Łukasz"]
    buffer = encrypt(pa.array(values), KEY).buffers()[2].to_pybytes()
    assert not [v for v in ["@example.com", "person1", "Łukasz", *values] if v.encode() in buffer]


def test_a_wrong_key_is_refused_naming_table_column_and_both_key_ids() -> None:
    stored = encrypt(pa.array(["ann@example.com"]), KEY)
    with pytest.raises(GovernanceError) as raised:
        decrypt(stored, OTHER, "silver.people", "email")
    message = str(raised.value)
    for part in ("`silver.people`", "`email`", KEY.key_id, OTHER.key_id, "MEDALLION_ENCRYPTION_KEY"):
        assert part in message


@pytest.mark.parametrize("position", [HEADER_BYTES + 3, 10, 20, 0])
def test_an_altered_byte_is_refused(position: int) -> None:
    stored = encrypt(pa.array(["ann@example.com", "bob@example.com", None]), KEY).to_pylist()
    altered = bytearray(stored[1])
    altered[position] ^= 0x01
    with pytest.raises(GovernanceError, match="`email`.*`silver.people`") as raised:
        decrypt(pa.array([stored[0], bytes(altered), None], pa.binary()), KEY, "silver.people", "email")
    if position >= 5:
        assert "1 rows" in str(raised.value) and "fail authentication" in str(raised.value)


def test_the_key_id_names_the_key_without_revealing_it() -> None:
    secret = "a-secret-of-some-length"
    key = ColumnKey.from_secret(secret)
    assert key.key_id == hmac.new(key.mac_key, b"medallion column key", hashlib.sha256).hexdigest()[:8]
    assert key == ColumnKey.from_secret(secret) and key.key_id != KEY.key_id
    assert key.aes_key != key.mac_key and secret.encode() not in key.aes_key + key.mac_key
    assert key.key_id not in secret and key.key_id not in secret.encode().hex()
    assert key.key_id != hashlib.sha256(secret.encode()).hexdigest()[:8]
    shown = repr(key)
    assert secret not in shown and key.aes_key.hex()[:8] not in shown and key.mac_key.hex()[:8] not in shown


def test_the_key_comes_from_settings_env_or_a_secret_file_and_has_no_fallback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDALLION_ENCRYPTION_KEY", raising=False)
    with pytest.raises(GovernanceError, match="table `silver.people`.*MEDALLION_ENCRYPTION_KEY"):
        column_key(EncryptionSettings(), "table `silver.people`")
    secret = tmp_path / "column.key"
    secret.write_text("from-file\n")
    assert column_key(EncryptionSettings(key_file=str(secret)), "test") == ColumnKey.from_secret("from-file")
    with pytest.raises(GovernanceError, match="encryption.key_file"):
        column_key(EncryptionSettings(key_file=str(tmp_path / "missing")), "test")
    monkeypatch.setenv("MEDALLION_ENCRYPTION_KEY", "from-env")
    assert column_key(EncryptionSettings(key_file=str(secret)), "test") == ColumnKey.from_secret("from-env")
    assert column_key(EncryptionSettings(key="from-settings"), "test") == ColumnKey.from_secret("from-settings")


def test_protect_encrypts_declared_columns_and_needs_the_key() -> None:
    batch = pa.table({"id": [1, 2], "email": ["a@b.c", None], "name": ["Ann", "Bob"]})
    out = protect(batch, {"email": "encrypt", "name": "mask"}, PiiKey("v1", b"k"), "silver.people", KEY)
    assert out.schema.field("email").type == pa.binary() and out.column("name").to_pylist() == ["A***", "B***"]
    assert decrypt_columns(out, ["email"], KEY, "silver.people").column("email").to_pylist() == ["a@b.c", None]
    with pytest.raises(GovernanceError, match="`silver.people`.*`email`.*no column-encryption key"):
        protect(batch, {"email": "encrypt"}, PiiKey("v1", b"k"), "silver.people")


def _encrypted_table(root: Path) -> str:
    """`silver.people` at `root`, written directly (no Ray) with its `email` encrypted and recorded."""
    uri = Layout.at(str(root)).table("silver.people")
    rows = pa.table({"id": [1, 2, 3], "email": ["ann@example.com", None, "zoë@example.com"]})
    write_deltalake(uri, protect(rows, {"email": "encrypt"}, PiiKey("v1", b"k"), "silver.people", KEY))
    assert keep_out_of_stats(uri, ["email"], {"run_id": "r"}, {"email": KEY.key_id})
    return uri


def test_the_table_records_its_encrypted_columns_with_the_key_id(tmp_path: Path) -> None:
    uri = _encrypted_table(tmp_path)
    table = DeltaTable(uri)
    configuration = table.metadata().configuration
    assert encrypted_columns(configuration) == {"email": KEY.key_id} and configuration[STATS_PROPERTY] == "id"
    assert table.version() == 1 and not keep_out_of_stats(uri, ["email"], {}, {"email": KEY.key_id})
    assert keep_out_of_stats(uri, ["email"], {}, {"email": OTHER.key_id})
    assert DeltaTable(uri).metadata().configuration[ENCRYPTED_PROPERTY] == f"email:{OTHER.key_id}"


def test_show_decrypts_with_the_right_key_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _encrypted_table(tmp_path)
    runner = CliRunner()
    monkeypatch.setenv("MEDALLION_ENCRYPTION_KEY", "column-key-one")
    plain = runner.invoke(main, ["--root", str(tmp_path), "show", "silver.people"])
    assert plain.exit_code == 0 and "ann@example.com" not in plain.output
    shown = runner.invoke(main, ["--root", str(tmp_path), "show", "silver.people", "--decrypt"])
    assert shown.exit_code == 0, shown.output
    assert "ann@example.com" in shown.output and "zoë@example.com" in shown.output
    monkeypatch.setenv("MEDALLION_ENCRYPTION_KEY", "column-key-two")
    refused = runner.invoke(main, ["--root", str(tmp_path), "show", "silver.people", "--decrypt"])
    assert refused.exit_code == 1 and "ann@example.com" not in refused.output
    for part in ("`email`", "`silver.people`", KEY.key_id, OTHER.key_id):
        assert part in refused.output


def _write_people(root: Path, name: str, people: list[dict[str, object]]) -> None:
    folder = root / "landing" / "people"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(person) + "\n" for person in people))


def _people_pipeline() -> Pipeline:
    pipeline = Pipeline("crm")
    pipeline.ingest("bronze.people", FileSource("people", "jsonl"))

    @pipeline.table("silver.people", kind=Merge(keys=["id"]), incremental=True,
                    pii={"email": "encrypt", "phone": "encrypt"})
    def people(bronze_people: ray.data.Dataset) -> ray.data.Dataset:
        return bronze_people.map_batches(lambda batch: batch.select(["id", "email", "phone", "city"]),
                                         batch_format="pyarrow")

    return pipeline


@pytest.mark.slow
def test_a_pipeline_stores_encrypted_columns_readable_only_with_the_key(
        ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDALLION_ENCRYPTION_KEY", "pipeline-key")
    people = [{"id": i, "email": f"person{i}@hidden.example", "phone": f"+44 7700 9{i:05d}", "city": "Leeds"}
              for i in range(40)] + [{"id": 40, "email": None, "phone": "", "city": "York"}]
    _write_people(tmp_path, "people-1.jsonl", people)
    for update in ([], [{"id": 1, "email": "moved1@hidden.example", "phone": "+44 7700 999999", "city": "Hull"}]):
        if update:
            _write_people(tmp_path, "people-2.jsonl", update)
        result = Runner(_people_pipeline(), settings_at(tmp_path)).run()
        assert result.succeeded, [r.error for r in result.records if r.error]

    layout = Layout.at(str(tmp_path))
    needles = ["@hidden.example", "7700", "moved1"]
    for folder in (layout.table("silver.people"), layout.changes("silver.people")):
        if Path(folder).exists():
            assert findings(Path(folder), needles) == [], folder
    table = DeltaTable(layout.table("silver.people"))
    key = ColumnKey.from_secret("pipeline-key")
    assert encrypted_columns(table.metadata().configuration) == {"email": key.key_id, "phone": key.key_id}
    stored = table.to_pyarrow_table()
    assert stored.schema.field("email").type == pa.binary() and stored.column("city").type == pa.string()

    expected = {str(p["id"]): (p["email"], p["phone"]) for p in people} | {
        "1": ("moved1@hidden.example", "+44 7700 999999")}
    rows = decrypt_columns(stored, ["email", "phone"], key, "silver.people").to_pylist()
    assert {str(r["id"]): (r["email"], r["phone"]) for r in rows} == expected
    with pytest.raises(GovernanceError, match="`email`.*`silver.people`"):
        decrypt_columns(stored, ["email", "phone"], ColumnKey.from_secret("wrong"), "silver.people")

    monkeypatch.setenv("MEDALLION_ENCRYPTION_KEY", "wrong")
    refused = CliRunner().invoke(main, ["--root", str(tmp_path), "show", "silver.people", "--decrypt"])
    assert refused.exit_code == 1 and "`silver.people`" in refused.output
    monkeypatch.setenv("MEDALLION_ENCRYPTION_KEY", "pipeline-key")
    shown = CliRunner().invoke(main, ["--root", str(tmp_path), "show", "silver.people", "--decrypt", "--limit", "50"])
    assert shown.exit_code == 0 and "person7@hidden.example" in shown.output
