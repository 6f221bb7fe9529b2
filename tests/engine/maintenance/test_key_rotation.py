"""Column-key rotation: previous keys read what they wrote, `medallion maintain rotate-keys` rewrites every
encrypted value (of the first format too) under the current key, on Delta and Iceberg tables and change logs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable, write_deltalake

from engine import Merge, Pipeline, Runner
from engine.cli.main import main
from engine.governance.encryption import (
    ColumnKey,
    ColumnKeys,
    decrypt_columns,
    encrypted_columns,
    row_key_columns,
    stale_values,
)
from engine.governance.pii import protect
from engine.governance.secrets import PiiKey
from engine.layout import Layout
from engine.tables import delta
from engine.tables.deltalog import keep_out_of_stats
from engine.tables.files import STATS_PROPERTY
from engine.tables.iceberg import IcebergTables
from tests.conftest import lease_held_elsewhere, settings_at
from tests.engine.governance.test_encryption import LEGACY_SECRET, LEGACY_VALUES
from tests.engine.tables.test_iceberg import PEOPLE_PII, manifest_metrics, people_pipeline, write_people

KEY_A = "a1" * 32
KEY_B = "b2" * 32
A, B = ColumnKey.parse(KEY_A, "test"), ColumnKey.parse(KEY_B, "test")
EMAILS = ["ann@example.com", None, "zoë@example.com", "cy@example.com"]

LEGACY_PEOPLE = Pipeline("legacy_people")
LEGACY_PEOPLE.table("silver.people", kind=Merge(keys=["id"]), pii={"email": "encrypt"})(lambda: None)


def _people(root: Path, metadata: dict[str, str] | None = None) -> str:
    """`silver.people` keyed by `id`, its `email` encrypted with key A, written directly (no Ray)."""
    uri = Layout.at(str(root)).table("silver.people")
    rows = pa.table({"id": [1, 2, 3, 4], "email": EMAILS})
    write_deltalake(uri, protect(rows, {"email": "encrypt"}, PiiKey("v1", b"k"), "silver.people", A, ["id"]),
                    commit_properties=delta.commit_metadata(metadata or {}))
    keep_out_of_stats(uri, ["email"], {}, {"email": A.key_id}, ["id"])
    return uri


def _invoke(root: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--root", str(root), *args])
    return result.exit_code, result.output


def _keys(monkeypatch: pytest.MonkeyPatch, current: str, *previous: str) -> None:
    monkeypatch.setenv("MEDALLION_ENCRYPTION_KEY", current)
    monkeypatch.setenv("MEDALLION__ENCRYPTION__PREVIOUS_KEYS", json.dumps(list(previous)))


def test_rotation_rewrites_every_value_under_the_current_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = _people(tmp_path)
    _keys(monkeypatch, KEY_B, KEY_A)
    code, shown = _invoke(tmp_path, "show", "silver.people", "--decrypt")
    assert code == 0 and "zoë@example.com" in shown, shown
    before = DeltaTable(uri).version()

    code, output = _invoke(tmp_path, "maintain", "rotate-keys", "silver.people")
    assert code == 0, output
    table = DeltaTable(uri)
    assert f"silver.people: 3 value(s) re-encrypted (v{table.version()})" in output and B.key_id in output
    assert table.version() > before and delta.last_commit_value(uri, "silver.people", "operation") == "rotate-keys"
    configuration = table.metadata().configuration
    assert encrypted_columns(configuration) == {"email": B.key_id} and row_key_columns(configuration) == ("id",)
    assert configuration[STATS_PROPERTY] == "id" and "min.email" not in table.get_add_actions(flatten=True).schema.names
    stored = table.to_pyarrow_table()
    assert stale_values(stored.select(["email"]), ColumnKeys(B), "silver.people") == 0
    assert decrypt_columns(stored, ["email"], ColumnKeys(B), "silver.people", ["id"]).sort_by("id").column(
        "email").to_pylist() == EMAILS

    _keys(monkeypatch, KEY_B)
    code, shown = _invoke(tmp_path, "show", "silver.people", "--decrypt")
    assert code == 0 and "zoë@example.com" in shown, shown
    code, again = _invoke(tmp_path, "maintain", "rotate-keys")
    assert code == 0 and "silver.people: 0 value(s) re-encrypted, 0 in its change log" in again, again
    assert DeltaTable(uri).version() == table.version()


def test_without_the_previous_key_rotation_fails_and_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = _people(tmp_path)
    version = DeltaTable(uri).version()
    _keys(monkeypatch, KEY_B)
    code, output = _invoke(tmp_path, "maintain", "rotate-keys", "silver.people")
    assert code == 1 and A.key_id in output and "encryption.previous_keys" in output, output
    assert DeltaTable(uri).version() == version


def test_rotation_waits_for_a_run_of_the_tables_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = _people(tmp_path, {"pipeline": "crm"})
    version = DeltaTable(uri).version()
    _keys(monkeypatch, KEY_B, KEY_A)
    with lease_held_elsewhere(tmp_path, "crm", "run-elsewhere"):
        code, output = _invoke(tmp_path, "maintain", "rotate-keys", "silver.people")
    assert code == 1 and "pipeline `crm`" in output and "run-elsewhere" in output, output
    assert DeltaTable(uri).version() == version
    code, output = _invoke(tmp_path, "maintain", "rotate-keys", "silver.people")
    assert code == 0 and "3 value(s) re-encrypted" in output, output


def test_values_of_the_first_format_are_migrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = Layout.at(str(tmp_path)).table("silver.people")
    stored = pa.array([bytes.fromhex(v) for v in LEGACY_VALUES.values()] + [None], pa.binary())
    write_deltalake(uri, pa.table({"id": [1, 2, 3], "email": stored}))
    DeltaTable(uri).alter.set_table_properties({"medallion.encryptedColumns": "email:fec53589"},
                                               raise_if_not_exists=False)
    _keys(monkeypatch, KEY_B, LEGACY_SECRET)
    code, shown = _invoke(tmp_path, "show", "silver.people", "--decrypt")
    assert code == 0 and "ann@example.com" in shown, shown
    code, output = _invoke(tmp_path, "maintain", "rotate-keys", "silver.people")
    assert code == 1 and "records no key columns" in output and "--pipeline" in output, output

    code, output = _invoke(tmp_path, "maintain", "rotate-keys", "silver.people",
                           "--pipeline", "tests.engine.maintenance.test_key_rotation:LEGACY_PEOPLE")
    assert code == 0 and "2 value(s) re-encrypted" in output, output
    table = DeltaTable(uri)
    assert row_key_columns(table.metadata().configuration) == ("id",)
    rows = decrypt_columns(table.to_pyarrow_table(), ["email"], ColumnKeys(B), "silver.people", ["id"])
    assert rows.sort_by("id").column("email").to_pylist() == [*LEGACY_VALUES, None]
    _keys(monkeypatch, KEY_B)
    code, shown = _invoke(tmp_path, "show", "silver.people", "--decrypt")
    assert code == 0 and "ann@example.com" in shown, shown


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_iceberg_tables_and_change_logs_are_rotated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDALLION_ENCRYPTION_KEY", KEY_A)
    people = [{"id": i, "email": f"p{i}@hidden.example", "phone": f"0770{i:04d}", "name": f"Name{i}",
               "city": "Leeds", "seq": 1} for i in range(10)]
    write_people(tmp_path, "people-1.jsonl", people)
    result = Runner(people_pipeline(), settings_at(tmp_path)).run()
    assert result.succeeded, [r.error for r in result.records if r.error]
    tables, layout = IcebergTables(str(tmp_path)), Layout.at(str(tmp_path))
    versions = {t: tables.latest_version(layout.table(t)) for t in ("silver.people", "gold.people_history")}

    _keys(monkeypatch, KEY_B, KEY_A)
    code, output = _invoke(tmp_path, "maintain", "rotate-keys")
    assert code == 0, output
    assert "silver.people: 10 value(s) re-encrypted" in output
    assert "gold.people_history: 10 value(s) re-encrypted" in output and "10 in its change log" in output

    _keys(monkeypatch, KEY_B)
    for table in ("silver.people", "gold.people_history"):
        uri = layout.table(table)
        assert tables.latest_version(uri) == versions[table] + 1
        assert encrypted_columns(tables.table_properties(uri, table)) == {"email": B.key_id}
        assert all(not (m["bounds"] | m["counts"]) & set(PEOPLE_PII) for m in manifest_metrics(tables, uri, table))
        rows = decrypt_columns(tables.read_table(uri, table), ["email"], ColumnKeys(B), table, ["id"])
        assert sorted(rows.column("email").to_pylist()) == sorted(p["email"] for p in people)
        code, shown = _invoke(tmp_path, "show", table, "--decrypt")
        assert code == 0 and "@hidden.example" in shown, shown
    logged = DeltaTable(layout.changes("gold.people_history")).to_pyarrow_table()
    assert stale_values(logged.select(["email"]), ColumnKeys(B), "gold.people_history") == 0
    write_people(tmp_path, "people-2.jsonl", [people[1] | {"city": "Hull", "email": "moved@hidden.example", "seq": 2}])
    result = Runner(people_pipeline(), settings_at(tmp_path)).run()
    assert result.succeeded, [r.error for r in result.records if r.error]
    history = tables.read_table(layout.table("gold.people_history"), "gold.people_history")
    emails = decrypt_columns(history, ["email"], ColumnKeys(B), "gold.people_history", ["id"]).column("email")
    assert "moved@hidden.example" in emails.to_pylist() and "p1@hidden.example" in emails.to_pylist()


@pytest.mark.usefixtures("ray_local")
def test_incremental_readers_see_through_a_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = _people(tmp_path)
    since = DeltaTable(uri).version()
    _keys(monkeypatch, KEY_B, KEY_A)
    assert _invoke(tmp_path, "maintain", "rotate-keys", "silver.people")[0] == 0
    new = pa.table({"id": [5], "email": ["dee@example.com"]})
    write_deltalake(uri, protect(new, {"email": "encrypt"}, PiiKey("v1", b"k"), "silver.people", B, ["id"]),
                    mode="append")
    added = delta.read_added_files(uri, "silver.people", since, DeltaTable(uri).version())
    assert added is not None and added[1] == 1
    assert [r["id"] for r in added[0].take_all()] == [5]
