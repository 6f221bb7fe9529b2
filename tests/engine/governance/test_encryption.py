"""Encrypted columns: AES-256-GCM-SIV bound to table, column and row, unreadable without the key, refused
with a wrong one or in another place; 32-byte keys only; values of the first format still read."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray.data
from click.testing import CliRunner
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from deltalake import DeltaTable, write_deltalake

from engine import FileSource, Merge, Pipeline, Runner
from engine.cli.main import main
from engine.config import EncryptionSettings
from engine.errors import GovernanceError, PipelineDefinitionError
from engine.governance.encryption import (
    ENCRYPTED_PROPERTY,
    HEADER_BYTES,
    ROW_KEY_PROPERTY,
    TAG_BYTES,
    ColumnKey,
    ColumnKeys,
    decrypt,
    decrypt_columns,
    encrypt,
    encrypted_columns,
    row_key_columns,
)
from engine.governance.encryption_legacy import LegacyKey
from engine.governance.pii import protect
from engine.governance.secrets import PiiKey, column_keys
from engine.keyhash import key_bytes
from engine.layout import Layout
from engine.pipeline import check_pii_declaration
from engine.tables.deltalog import keep_out_of_stats
from engine.tables.files import STATS_PROPERTY
from tests.conftest import settings_at
from tests.engine.scan import findings

KEY_HEX = "00112233445566778899aabbccddeeff" * 2
OTHER_HEX = "f0e1d2c3b4a5968778695a4b3c2d1e0f" * 2
KEY = ColumnKey.from_bytes(bytes.fromhex(KEY_HEX))
OTHER = ColumnKey.from_bytes(bytes.fromhex(OTHER_HEX))
KEYS = ColumnKeys(KEY)
VALUES = ["ann@example.com", None, "", "Zoë Łukasz 東京 🙂", "x" * 16, "y" * 33, None]
IDS = pa.table({"id": list(range(len(VALUES)))})
LEGACY_SECRET = "old column secret"
LEGACY_VALUES = {  # written by the first format's encryption with LEGACY_SECRET
    "ann@example.com": "01fec5358983b861e671040286e88be98811a1f2a818d3071a8cc5991ceb9c79b76027f44a452e77b108"
                       "3bbb3fee6ca7",
    "Zoë Łukasz 東京 🙂 and a value longer than one block":
        "01fec5358965671c7fc67260f4ef4c72af2407f3b5c9af49bf4c9216f5ca8b97c4cbf17ebbd9a8ae33c47e2cb88c9839582156"
        "fb6f0f72f8bdf463410e90674dcdcca515055acd0dc698395f6be935ed14df6760d496713604d81e",
}


def row_key(ids: list[int]) -> pa.Array:
    return key_bytes(pa.table({"id": ids}), ["id"])


def test_values_round_trip_with_nulls_empty_and_non_ascii_text() -> None:
    ids = row_key(IDS.column("id").to_pylist())
    stored = encrypt(pa.array(VALUES), KEY, "t", "c", ids)
    assert stored.type == pa.large_binary() and stored.null_count == 2
    assert decrypt(stored, KEYS, "t", "c", ids).to_pylist() == VALUES
    chunked = pa.chunked_array([VALUES[:3], VALUES[3:]])
    assert decrypt(pa.chunked_array([encrypt(chunked, KEY, "t", "c", ids)]), KEYS, "t", "c", ids).to_pylist() == VALUES
    assert decrypt(encrypt(pa.array([1, None, 3]), KEY, "t", "c"), KEYS, "t", "c").to_pylist() == ["1", None, "3"]
    assert decrypt(encrypt(pa.array([], pa.string()), KEY, "t", "c"), KEYS, "t", "c").to_pylist() == []


def test_large_types_in_and_64_bit_offsets_out() -> None:
    """Batches over 2 GiB need 64-bit offsets end to end: large_string and large_binary in, large types out."""
    values = pa.chunked_array([pa.array(VALUES[:4], pa.large_string()), pa.array(VALUES[4:], pa.large_string())])
    stored = encrypt(values, KEY, "t", "c")
    assert stored.type == pa.large_binary()
    offsets = np.frombuffer(stored.buffers()[1], np.int64)[:len(stored) + 1]
    assert offsets[0] == 0 and (np.diff(offsets) >= 0).all() and offsets[-1] == len(stored.buffers()[2])
    plain = decrypt(stored.cast(pa.large_binary()), KEYS, "t", "c")
    assert plain.type == pa.large_string() and plain.to_pylist() == VALUES


def test_many_values_of_every_length_round_trip() -> None:
    rng = np.random.default_rng(7)
    values = [None if i % 97 == 0 else f"{i}:" + "é" * int(rng.integers(0, 40)) for i in range(20_000)]
    sliced = pa.array(values).slice(5, 19_990)
    ids = row_key(list(range(19_990)))
    stored = encrypt(sliced, KEY, "t", "c", ids)
    assert decrypt(stored, KEYS, "t", "c", ids).to_pylist() == sliced.to_pylist()
    assert decrypt(stored.slice(100, 50), KEYS, "t", "c", ids.slice(100, 50)).to_pylist() == \
        sliced.slice(100, 50).to_pylist()


def test_the_stored_format_is_aes_256_gcm_siv_bound_to_table_column_and_row() -> None:
    """An independent decryption of one value, from the documented layout."""
    value = encrypt(pa.array(["a value longer than one AES block"]), KEY, "silver.people", "email",
                    row_key([7]))[0].as_py()
    assert value[0] == 0x02 and value[1:5].hex() == KEY.key_id
    assert len(value) == HEADER_BYTES + len("a value longer than one AES block") + TAG_BYTES
    names = b"".join(struct.pack(">H", len(name)) + name for name in (b"silver.people", b"email"))
    associated = value[:5] + names + b"\x01" + (7).to_bytes(8, "big")
    assert AESGCMSIV(bytes.fromhex(KEY_HEX)).decrypt(value[5:17], value[17:], associated) == \
        b"a value longer than one AES block"


def test_equal_values_encrypt_differently() -> None:
    first = encrypt(pa.array(["same", "same"]), KEY, "t", "c").to_pylist()
    assert first[0] != first[1] and encrypt(pa.array(["same"]), KEY, "t", "c")[0].as_py() not in first


def test_no_plaintext_reaches_the_stored_bytes() -> None:
    values = [f"person{i}@example.com" for i in range(1000)] + ["Zoë Łukasz"]
    buffer = encrypt(pa.array(values), KEY, "t", "c").buffers()[2].to_pybytes()
    assert not [v for v in ["@example.com", "person1", "Łukasz", *values] if v.encode() in buffer]


def test_a_value_moved_to_another_row_fails_naming_table_and_column() -> None:
    ids = row_key([1, 2, 3])
    stored = encrypt(pa.array(["ann@example.com", "bob@example.com", "cy@example.com"]), KEY, "silver.people",
                     "email", ids).to_pylist()
    swapped = pa.array([stored[1], stored[0], stored[2]], pa.large_binary())
    with pytest.raises(GovernanceError, match=r"^2 rows of column `email` of table `silver.people` fail "
                                              "authentication.*moved from another row"):
        decrypt(swapped, KEYS, "silver.people", "email", ids)
    rekeyed = row_key([1, 2, 4])
    with pytest.raises(GovernanceError, match="^1 rows of column `email` of table `silver.people`"):
        decrypt(pa.array(stored, pa.large_binary()), KEYS, "silver.people", "email", rekeyed)


def test_a_value_moved_to_another_column_or_table_fails_naming_both() -> None:
    ids = row_key([1, 2])
    stored = encrypt(pa.array(["ann@example.com", None]), KEY, "silver.people", "email", ids)
    with pytest.raises(GovernanceError, match="^1 rows of column `phone` of table `silver.people` fail"):
        decrypt(stored, KEYS, "silver.people", "phone", ids)
    with pytest.raises(GovernanceError, match="^1 rows of column `email` of table `gold.people` fail"):
        decrypt(stored, KEYS, "gold.people", "email", ids)
    with pytest.raises(GovernanceError, match="^1 rows of column `email` of table `silver.people` fail"):
        decrypt(stored, KEYS, "silver.people", "email")


def test_a_table_without_keys_binds_values_to_table_and_column_only() -> None:
    stored = encrypt(pa.array(["ann", "bob"]), KEY, "gold.contacts", "phone").to_pylist()
    swapped = pa.array(stored[::-1], pa.large_binary())
    assert decrypt(swapped, KEYS, "gold.contacts", "phone").to_pylist() == ["bob", "ann"]
    with pytest.raises(GovernanceError, match="^2 rows of column `email` of table `gold.contacts` fail"):
        decrypt(swapped, KEYS, "gold.contacts", "email")


def test_a_wrong_key_is_refused_naming_table_column_and_both_key_ids() -> None:
    stored = encrypt(pa.array(["ann@example.com"]), KEY, "silver.people", "email")
    with pytest.raises(GovernanceError) as raised:
        decrypt(stored, ColumnKeys(OTHER), "silver.people", "email")
    message = str(raised.value)
    for part in ("`silver.people`", "`email`", KEY.key_id, OTHER.key_id, "MEDALLION_ENCRYPTION_KEY",
                 "encryption.previous_keys"):
        assert part in message
    assert decrypt(stored, ColumnKeys(OTHER, (KEY,)), "silver.people", "email").to_pylist() == ["ann@example.com"]


@pytest.mark.parametrize(("position", "problem"), [(0, "unknown format"), (2, "neither the current key"),
                                                   (8, "1 rows"), (20, "1 rows"), (-1, "1 rows")])
def test_an_altered_byte_is_refused(position: int, problem: str) -> None:
    stored = encrypt(pa.array(["ann@example.com", "bob@example.com", None]), KEY, "t", "c").to_pylist()
    altered = bytearray(stored[1])
    altered[position] ^= 0x01
    with pytest.raises(GovernanceError, match="`c` of table `t`") as raised:
        decrypt(pa.array([stored[0], bytes(altered), None], pa.binary()), KEYS, "t", "c")
    assert problem in str(raised.value)


def test_the_key_id_names_the_key_without_revealing_it() -> None:
    material = bytes.fromhex(KEY_HEX)
    assert KEY.key_id == hmac.new(material, b"medallion column key id", hashlib.sha256).hexdigest()[:8]
    assert KEY == ColumnKey.from_bytes(material) and KEY.key_id != OTHER.key_id
    assert KEY.key_id not in KEY_HEX and KEY.key_id != hashlib.sha256(material).hexdigest()[:8]
    for shown in (repr(KEY), repr(ColumnKeys(KEY, (OTHER,), (LegacyKey.from_secret(LEGACY_SECRET),)))):
        assert KEY_HEX[:8] not in shown and OTHER_HEX[:8] not in shown and LEGACY_SECRET not in shown


def test_a_key_is_64_hex_digits_or_the_base64_of_32_bytes() -> None:
    material = bytes.fromhex(KEY_HEX)
    for text in (KEY_HEX, KEY_HEX.upper(), f" {KEY_HEX}\n", base64.b64encode(material).decode(),
                 base64.urlsafe_b64encode(material).decode().rstrip("=")):
        assert ColumnKey.parse(text, "test") == KEY, text
    for text in ("column-key-one", KEY_HEX[:-2], KEY_HEX + "00", "zz" * 32, base64.b64encode(material[:16]).decode(),
                 base64.b64encode(material + b"!").decode(), ""):
        with pytest.raises(GovernanceError) as raised:
            ColumnKey.parse(text, "MEDALLION_ENCRYPTION_KEY")
        message = str(raised.value)
        assert "\n" not in message and "MEDALLION_ENCRYPTION_KEY" in message and "64 hex digits" in message
        assert "secrets.token_hex(32)" in message and (not text or text not in message)


def test_the_keys_come_from_settings_env_or_secret_files_and_have_no_fallback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDALLION_ENCRYPTION_KEY", raising=False)
    with pytest.raises(GovernanceError, match="table `silver.people`.*MEDALLION_ENCRYPTION_KEY"):
        column_keys(EncryptionSettings(), "table `silver.people`")
    secret = tmp_path / "column.key"
    secret.write_text(KEY_HEX + "\n")
    assert column_keys(EncryptionSettings(key_file=str(secret)), "test").current == KEY
    with pytest.raises(GovernanceError, match="encryption.key_file"):
        column_keys(EncryptionSettings(key_file=str(tmp_path / "missing")), "test")
    monkeypatch.setenv("MEDALLION_ENCRYPTION_KEY", OTHER_HEX)
    assert column_keys(EncryptionSettings(key_file=str(secret)), "test").current == OTHER
    assert column_keys(EncryptionSettings(key=KEY_HEX), "test").current == KEY
    monkeypatch.setenv("MEDALLION_ENCRYPTION_KEY", "short-secret")
    with pytest.raises(GovernanceError, match="^the column-encryption key in MEDALLION_ENCRYPTION_KEY is not 32"):
        column_keys(EncryptionSettings(), "test")
    monkeypatch.delenv("MEDALLION_ENCRYPTION_KEY")
    secret.write_text("short-secret")
    with pytest.raises(GovernanceError, match=f"key in `{secret}` \\(`encryption.key_file`\\) is not 32"):
        column_keys(EncryptionSettings(key_file=str(secret)), "test")


def test_previous_keys_decrypt_and_old_secrets_read_the_first_format(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDALLION_ENCRYPTION_KEY", raising=False)
    old = tmp_path / "old.key"
    old.write_text(OTHER_HEX)
    keys = column_keys(EncryptionSettings(key=KEY_HEX, previous_keys=[LEGACY_SECRET],
                                          previous_key_files=[str(old)]), "test")
    assert keys.current == KEY and keys.previous == (OTHER,)
    assert [k.key_id for k in keys.legacy] == [LegacyKey.from_secret(s).key_id
                                              for s in (KEY_HEX, LEGACY_SECRET, OTHER_HEX)]
    assert "old column secret" not in repr(keys)


def test_values_of_the_first_format_are_read_with_the_old_secret() -> None:
    stored = pa.array([bytes.fromhex(v) for v in LEGACY_VALUES.values()] + [None], pa.binary())
    legacy = LegacyKey.from_secret(LEGACY_SECRET)
    mixed = pa.concat_arrays([stored.cast(pa.large_binary()), encrypt(pa.array(["new"]), KEY, "t", "c")])
    assert decrypt(mixed, ColumnKeys(KEY, legacy=(legacy,)), "t", "c").to_pylist() == [*LEGACY_VALUES, None, "new"]
    with pytest.raises(GovernanceError, match=f"key {legacy.key_id} \\(first format\\), neither the current key"):
        decrypt(stored, KEYS, "t", "c")
    altered = bytearray(stored[0].as_py())
    altered[-1] ^= 0x01
    with pytest.raises(GovernanceError, match="^1 rows of column `c` of table `t` fail authentication"):
        decrypt(pa.array([bytes(altered)]), ColumnKeys(KEY, legacy=(legacy,)), "t", "c")


def test_protect_encrypts_declared_columns_bound_to_the_stored_keys() -> None:
    batch = pa.table({"id": [1, 2], "email": ["a@b.c", None], "name": ["Ann", "Bob"]})
    out = protect(batch, {"email": "encrypt", "name": "mask"}, PiiKey("v1", b"k"), "silver.people", KEY, ["id"])
    assert out.schema.field("email").type == pa.large_binary() and out.column("name").to_pylist() == ["A***", "B***"]
    plain = decrypt_columns(out, ["email"], KEYS, "silver.people", ["id"])
    assert plain.column("email").to_pylist() == ["a@b.c", None]
    with pytest.raises(GovernanceError, match="`email` of table `silver.people` fail"):
        decrypt_columns(out, ["email"], KEYS, "silver.people", ["name"])
    tokenized = protect(batch, {"email": "encrypt", "name": "tokenize"}, PiiKey("v1", b"k"), "silver.people", KEY,
                        ["name"])
    assert decrypt_columns(tokenized, ["email"], KEYS, "silver.people", ["name"]).column("email")[0].as_py() == "a@b.c"
    with pytest.raises(GovernanceError, match="`silver.people`.*`email`.*no column-encryption key"):
        protect(batch, {"email": "encrypt"}, PiiKey("v1", b"k"), "silver.people")
    with pytest.raises(GovernanceError, match="`silver.people` binds .* key columns `customer_id`, .* lack"):
        protect(batch, {"email": "encrypt"}, PiiKey("v1", b"k"), "silver.people", KEY, ["customer_id"])


def test_a_key_column_cannot_be_encrypted() -> None:
    with pytest.raises(PipelineDefinitionError, match="key column `id` `encrypt`.*tokenize"):
        check_pii_declaration("silver.people", {"id": "encrypt"}, ["id"])
    with pytest.raises(PipelineDefinitionError, match="key column `id`"):
        Pipeline("p").table("silver.people", kind=Merge(keys=["id"]), pii={"id": "encrypt"})


def _encrypted_table(root: Path) -> str:
    """`silver.people` at `root`, keyed by `id`, written directly (no Ray) with `email` encrypted and recorded."""
    uri = Layout.at(str(root)).table("silver.people")
    rows = pa.table({"id": [1, 2, 3], "email": ["ann@example.com", None, "zoë@example.com"]})
    write_deltalake(uri, protect(rows, {"email": "encrypt"}, PiiKey("v1", b"k"), "silver.people", KEY, ["id"]))
    assert keep_out_of_stats(uri, ["email"], {"run_id": "r"}, {"email": KEY.key_id}, ["id"])
    return uri


def test_the_table_records_its_encrypted_columns_key_id_and_key_columns(tmp_path: Path) -> None:
    uri = _encrypted_table(tmp_path)
    table = DeltaTable(uri)
    configuration = table.metadata().configuration
    assert encrypted_columns(configuration) == {"email": KEY.key_id} and configuration[STATS_PROPERTY] == "id"
    assert row_key_columns(configuration) == ("id",) and configuration[ROW_KEY_PROPERTY] == "id"
    assert table.version() == 1 and not keep_out_of_stats(uri, ["email"], {}, {"email": KEY.key_id}, ["id"])
    assert keep_out_of_stats(uri, ["email"], {}, {"email": OTHER.key_id}, ["id"])
    assert DeltaTable(uri).metadata().configuration[ENCRYPTED_PROPERTY] == f"email:{OTHER.key_id}"
    assert row_key_columns({ROW_KEY_PROPERTY: ""}) == () and row_key_columns({}) is None


def test_show_decrypts_with_the_right_key_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _encrypted_table(tmp_path)
    runner = CliRunner()
    monkeypatch.setenv("MEDALLION_ENCRYPTION_KEY", KEY_HEX)
    plain = runner.invoke(main, ["--root", str(tmp_path), "show", "silver.people"])
    assert plain.exit_code == 0 and "ann@example.com" not in plain.output
    shown = runner.invoke(main, ["--root", str(tmp_path), "show", "silver.people", "--decrypt"])
    assert shown.exit_code == 0, shown.output
    assert "ann@example.com" in shown.output and "zoë@example.com" in shown.output
    monkeypatch.setenv("MEDALLION_ENCRYPTION_KEY", OTHER_HEX)
    refused = runner.invoke(main, ["--root", str(tmp_path), "show", "silver.people", "--decrypt"])
    assert refused.exit_code == 1 and "ann@example.com" not in refused.output
    for part in ("`email`", "`silver.people`", KEY.key_id, OTHER.key_id):
        assert part in refused.output
    monkeypatch.setenv("MEDALLION__ENCRYPTION__PREVIOUS_KEYS", json.dumps([KEY_HEX]))
    rotated = runner.invoke(main, ["--root", str(tmp_path), "show", "silver.people", "--decrypt"])
    assert rotated.exit_code == 0 and "ann@example.com" in rotated.output
    monkeypatch.setenv("MEDALLION_ENCRYPTION_KEY", "column-key-one")
    invalid = runner.invoke(main, ["--root", str(tmp_path), "show", "silver.people", "--decrypt"])
    assert invalid.exit_code == 1 and "not 32 bytes" in invalid.output and "column-key-one" not in invalid.output


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
    monkeypatch.setenv("MEDALLION_ENCRYPTION_KEY", KEY_HEX)
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
    configuration = table.metadata().configuration
    assert encrypted_columns(configuration) == {"email": KEY.key_id, "phone": KEY.key_id}
    assert row_key_columns(configuration) == ("id",)
    stored = table.to_pyarrow_table()
    assert stored.schema.field("email").type == pa.binary() and stored.column("city").type == pa.string()

    expected = {str(p["id"]): (p["email"], p["phone"]) for p in people} | {
        "1": ("moved1@hidden.example", "+44 7700 999999")}
    rows = decrypt_columns(stored, ["email", "phone"], KEYS, "silver.people", ["id"]).to_pylist()
    assert {str(r["id"]): (r["email"], r["phone"]) for r in rows} == expected
    with pytest.raises(GovernanceError, match="`email`.*`silver.people`"):
        decrypt_columns(stored, ["email", "phone"], ColumnKeys(OTHER), "silver.people", ["id"])

    monkeypatch.setenv("MEDALLION_ENCRYPTION_KEY", OTHER_HEX)
    refused = CliRunner().invoke(main, ["--root", str(tmp_path), "show", "silver.people", "--decrypt"])
    assert refused.exit_code == 1 and "`silver.people`" in refused.output
    monkeypatch.setenv("MEDALLION_ENCRYPTION_KEY", KEY_HEX)
    shown = CliRunner().invoke(main, ["--root", str(tmp_path), "show", "silver.people", "--decrypt", "--limit", "50"])
    assert shown.exit_code == 0 and "person7@hidden.example" in shown.output
