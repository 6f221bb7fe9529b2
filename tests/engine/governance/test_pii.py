"""Personal-data columns: tokenized or masked before they are written, and kept out of file statistics."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from engine.config import PiiSettings
from engine.errors import GovernanceError, PipelineDefinitionError
from engine.governance.pii import mask, protect, tokenize
from engine.governance.secrets import PiiKey, pii_key
from engine.layout import Layout
from engine.pipeline import Pipeline
from engine.tables.files import OPEN_MAX, STATS_PROPERTY
from tests.conftest import RetailBuild
from tests.engine.scan import findings
from tests.features.conftest import materialized_features

KEY = PiiKey("v1", b"key-one")


def test_tokens_are_a_keyed_hmac_with_the_key_version() -> None:
    values = pa.array(["ann@example.com", None, "Zoë"])
    tokens = tokenize(values, KEY).to_pylist()
    expected = "v1:" + hmac.new(b"key-one", b"ann@example.com", hashlib.sha256).hexdigest()[:32]
    assert tokens[0] == expected and tokens[1] is None and tokens[2].startswith("v1:")
    assert tokenize(values, PiiKey("v1", b"key-one")).to_pylist() == tokens
    rotated = tokenize(values, PiiKey("v2", b"key-two")).to_pylist()
    assert rotated[0].startswith("v2:") and rotated[0][3:] != tokens[0][3:]
    assert tokenize(values, PiiKey("v1", b"other")).to_pylist()[0] != tokens[0]


def test_long_keys_follow_rfc_2104() -> None:
    key = b"k" * 100
    assert tokenize(pa.array(["x"]), PiiKey("v1", key))[0].as_py()[3:] == hmac.new(
        key, b"x", hashlib.sha256).hexdigest()[:32]


def test_masking_keeps_the_first_character_only() -> None:
    assert mask(pa.chunked_array([["Anna", None, ""]])).to_pylist() == ["A***", None, "***"]


def test_protect_rewrites_declared_columns_and_names_missing_ones() -> None:
    batch = pa.table({"id": [1], "email": ["a@b.c"], "name": ["Ann"], "_rescued_data": ['{"email": "a@b.c"']})
    out = protect(batch, {"email": "tokenize", "name": "mask"}, KEY, "silver.people")
    assert out.column("name").to_pylist() == ["A***"] and out.column("email")[0].as_py().startswith("v1:")
    assert out.column("_rescued_data")[0].as_py().startswith("v1:") and out.column("id").to_pylist() == [1]
    with pytest.raises(GovernanceError, match="`silver.people`.*`phone`"):
        protect(batch, {"phone": "mask"}, KEY, "silver.people")


def test_unknown_actions_are_refused_when_declared() -> None:
    with pytest.raises(PipelineDefinitionError, match="`silver.people`.*`email`"):
        Pipeline("p").table("silver.people", pii={"email": "hash"})


def test_the_key_comes_from_env_or_a_secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDALLION_PII_KEY", raising=False)
    with pytest.raises(GovernanceError, match="MEDALLION_PII_KEY"):
        pii_key(PiiSettings(), "table `silver.customers`")
    secret = tmp_path / "pii.key"
    secret.write_text("from-file\n")
    key = pii_key(PiiSettings(key_file=str(secret), key_version="v2"), "test")
    assert (key.version, key.secret) == ("v2", b"from-file") and "from-file" not in repr(key)
    monkeypatch.setenv("MEDALLION_PII_KEY", "from-env")
    assert pii_key(PiiSettings(), "test").secret == b"from-env"


def test_a_development_key_is_generated_once_under_a_local_root(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDALLION_PII_KEY", raising=False)
    first = pii_key(PiiSettings(), "test", str(tmp_path))
    stored = tmp_path / "_meta" / "secrets" / "pii.key"
    assert stored.stat().st_mode & 0o777 == 0o600 and len(first.secret) == 64
    assert pii_key(PiiSettings(), "test", str(tmp_path)).secret == first.secret
    with pytest.raises(GovernanceError, match="`silver.customers`"):
        pii_key(PiiSettings(local_key=False), "table `silver.customers`", str(tmp_path))
    with pytest.raises(GovernanceError, match="MEDALLION_PII_KEY"):
        pii_key(PiiSettings(), "test", "s3://bucket/lake")


def _landing_pii(root: Path) -> tuple[set[str], set[tuple[str, str]]]:
    """Emails and (first, last) names of every customer in the landing data."""
    emails, names = set(), set()
    for file in (root / "landing" / "customers").glob("*.jsonl"):
        for line in file.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("email"):
                emails.add(record["email"].strip().lower())
            if record.get("first_name") and record.get("last_name"):
                names.add((record["first_name"], record["last_name"]))
    return emails, names


@pytest.fixture(scope="module")
def features_root(retail_build: RetailBuild, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The feature repository applied and materialized over a copy of the retail gold tables."""
    return materialized_features(retail_build, tmp_path_factory.mktemp("pii-features")).root


def test_no_plaintext_personal_data_in_silver_gold_or_the_feature_store(
        retail_build: RetailBuild, features_root: Path) -> None:
    emails, names = _landing_pii(retail_build.root)
    assert emails and names
    for folder in [retail_build.root / "silver", retail_build.root / "gold", retail_build.root / "quarantine",
                   retail_build.root / "_changes", features_root]:
        assert findings(folder, emails) == [], folder
        for person in sorted(names)[:20]:
            assert findings(folder, [], person=person) == [], (folder, person)


def test_personal_columns_are_tokens_and_out_of_file_statistics(retail_build: RetailBuild) -> None:
    layout = Layout.at(str(retail_build.root))
    for table in ("silver.customers", "gold.dim_customer"):
        dt = DeltaTable(layout.table(table))
        rows = dt.to_pyarrow_table(columns=["email", "first_name"]).to_pylist()
        assert all(r["email"] is None or r["email"].startswith("v1:") for r in rows)
        assert all(r["first_name"] is None or r["first_name"].endswith("***") for r in rows)
        assert "email" not in dt.metadata().configuration[STATS_PROPERTY].split(",")
    for uri in (layout.table("silver.customers"), layout.table("gold.dim_customer"), layout.changes("gold.dim_customer")):
        for log in Path(uri, "_delta_log").glob("*.json"):
            for line in log.read_text().splitlines():
                stats = json.loads(json.loads(line)["add"].get("stats") or "{}") if '"add"' in line else {}
                for bound in ("minValues", "maxValues"):
                    personal = {c: stats.get(bound, {}).get(c) for c in ("email", "first_name", "last_name")}
                    assert set(personal.values()) <= {None, "", OPEN_MAX}, log
    customers = DeltaTable(layout.table("silver.customers"))
    token = customers.to_pyarrow_table(columns=["email"]).column("email").drop_null()[0].as_py()
    found = customers.to_pyarrow_dataset().to_table(columns=["email"], filter=pc.field("email") == token)
    assert found.num_rows >= 1  # bounds that say nothing keep filters on personal columns working
