"""The Feast configuration of a storage root (embedded defaults, repository file, overlay) and the
repository's definitions."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from engine.errors import FeatureStoreError
from engine.features.repo import load_definitions, render_config
from engine.layout import Layout
from tests.features.conftest import REPO


def test_defaults_put_everything_under_the_root(tmp_path: Path) -> None:
    config = render_config(str(tmp_path))
    base = Layout.at(str(tmp_path)).features()

    assert config.registry.path == f"{base}/registry.db"
    assert config.online_store.type == "sqlite" and config.online_store.path == f"{base}/online.db"
    assert config.offline_store.root == str(tmp_path)
    assert config.batch_engine.type == "engine.features.compute.DeltaRayComputeEngine"
    assert render_config(str(tmp_path), REPO).model_dump() == config.model_dump() | {"repo_path": REPO}


def test_overlay_and_overrides_replace_stores_and_resolve_relative_paths(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDALLION_REDIS", "redis.internal:6380,db=2")
    monkeypatch.setenv("MEDALLION_REGISTRY_URL", "postgresql+psycopg://feast@db.internal:5432/feast")
    monkeypatch.setenv("RAY_ADDRESS", "ray.internal:6379")

    config = render_config(str(tmp_path), REPO, overlay=REPO / "production.yaml")
    local = render_config(str(tmp_path), overrides={"online_store": {"type": "sqlite", "path": "mine.db"}})

    assert (config.online_store.type, config.online_store.connection_string) == ("redis", "redis.internal:6380,db=2")
    assert (config.registry.registry_type, config.registry.path) == (
        "sql", "postgresql+psycopg://feast@db.internal:5432/feast")
    assert (config.offline_store.root, config.offline_store.ray_address) == (str(tmp_path), "ray.internal:6379")
    assert local.online_store.path == f"{Layout.at(str(tmp_path)).features()}/mine.db"


def test_unset_variables_and_missing_files_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MEDALLION_REDIS", "MEDALLION_REGISTRY_URL", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)

    with pytest.raises(FeatureStoreError, match=r"unset environment variable\(s\) \['MEDALLION_REDIS', "
                                                r"'MEDALLION_REGISTRY_URL', 'RAY_ADDRESS'\]"):
        render_config(str(tmp_path), overlay=REPO / "production.yaml")
    with pytest.raises(FeatureStoreError, match="overlay `.*nowhere.yaml` does not exist"):
        render_config(str(tmp_path), overlay=tmp_path / "nowhere.yaml")
    with pytest.raises(FeatureStoreError, match="has no Python definitions"):
        load_definitions(tmp_path)


def test_repository_defines_entities_views_service_and_on_demand_view() -> None:
    names = {(type(o).__name__, o.name) for o in load_definitions(REPO)}

    assert {("Entity", "customer"), ("Entity", "product"), ("FeatureView", "customer_features"),
            ("FeatureView", "customer_profile"), ("FeatureView", "product_features"),
            ("OnDemandFeatureView", "cart_context"), ("FeatureService", "customer_training")} <= names


def test_the_feast_configurations_secrets_reach_no_log_record(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A Redis password, a SQL registry's credentials and secret-named settings are hidden from every log record."""
    redis, registry, secret = (f"canary{uuid.uuid4().hex}" for _ in range(3))
    render_config(str(tmp_path), overrides={
        "online_store": {"type": "redis", "connection_string": f"redis:6379,db=1,password={redis},ssl=true"},
        "registry": {"registry_type": "sql", "path": f"postgresql+psycopg://feast:{registry}@db/feast"},
        "auth": {"type": "oidc", "client_id": "server", "client_secret": secret,
                 "auth_discovery_url": "https://idp/.well-known/openid-configuration"}})

    with caplog.at_level(logging.INFO):
        logging.getLogger("feast.some_module").info("connecting with %s, %s, %s", redis, registry, secret)

    assert "connecting with <redacted>, <redacted>, <redacted>" in caplog.text


def test_an_invalid_store_setting_is_named_without_its_value(tmp_path: Path) -> None:
    """An unquoted numeric password in YAML is not a string: the error names the setting, not the password."""
    with pytest.raises(FeatureStoreError) as refused:
        render_config(str(tmp_path), overrides={"online_store": {
            "type": "postgres", "host": "db", "database": "feast", "user": "feast", "password": 987654321}})

    assert "password: Input should be a valid string" in str(refused.value)
    assert "987654321" not in str(refused.value)
