"""Tests of engine.config: defaults, YAML file, environment variables, overrides and error messages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.config import CONFIG_FILE_ENV, Settings, load_settings
from engine.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MEDALLION variables from the outer environment, and a working directory without medallion.yaml."""
    for name in list(os.environ):
        if name.upper().startswith("MEDALLION"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write_yaml(path: Path, text: str) -> Path:
    """`text` written to `path`."""
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert settings.storage.root == "./lakehouse"
    assert settings.storage.target_file_mb == 128
    assert settings.storage.compression == "zstd"
    assert settings.storage.compression_level == 3
    assert settings.ray.address is None
    assert settings.ray.num_cpus is None
    assert settings.ray.object_store_memory_mb is None
    assert settings.ray.auth_mode == "disabled"
    assert settings.ray.verbose is False


def test_yaml_file_given_as_argument(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "conf.yaml",
                        "storage:\n  root: /data/lake\n  compression: snappy\nray:\n  num_cpus: 3\n")
    settings = load_settings(config_file=config)
    assert settings.storage.root == "/data/lake"
    assert settings.storage.compression == "snappy"
    assert settings.storage.target_file_mb == 128
    assert settings.ray.num_cpus == 3


def test_yaml_file_named_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_yaml(tmp_path / "from_env.yaml", "storage:\n  target_file_mb: 16\n")
    monkeypatch.setenv(CONFIG_FILE_ENV, str(config))
    assert load_settings().storage.target_file_mb == 16


def test_default_yaml_file_in_working_directory(tmp_path: Path) -> None:
    write_yaml(tmp_path / "medallion.yaml", "ray:\n  verbose: true\n")
    assert load_settings().ray.verbose is True


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_yaml(tmp_path / "conf.yaml", "storage:\n  target_file_mb: 16\n")
    monkeypatch.setenv("MEDALLION__STORAGE__TARGET_FILE_MB", "32")
    assert load_settings(config_file=config).storage.target_file_mb == 32


def test_overrides_beat_environment_and_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_yaml(tmp_path / "conf.yaml", "storage:\n  target_file_mb: 16\n  root: /yaml\n")
    monkeypatch.setenv("MEDALLION__STORAGE__TARGET_FILE_MB", "32")
    settings = load_settings(config_file=config, overrides={"storage": {"target_file_mb": 64}})
    assert settings.storage.target_file_mb == 64
    assert settings.storage.root == "/yaml"


def test_none_overrides_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_yaml(tmp_path / "conf.yaml", "storage:\n  root: /yaml\n")
    monkeypatch.setenv("MEDALLION__RAY__NUM_CPUS", "4")
    settings = load_settings(
        config_file=config,
        overrides={"storage": {"root": None, "compression": "lz4"}, "ray": {"num_cpus": None}},
    )
    assert settings.storage.root == "/yaml"
    assert settings.storage.compression == "lz4"
    assert settings.ray.num_cpus == 4


def test_environment_and_yaml_keys_of_one_section_are_merged(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_yaml(tmp_path / "conf.yaml", "storage:\n  root: /yaml\n  compression: gzip\n")
    monkeypatch.setenv("MEDALLION__STORAGE__TARGET_FILE_MB", "8")
    settings = load_settings(config_file=config, overrides={"storage": {"compression_level": 5}})
    assert settings.storage.root == "/yaml"
    assert settings.storage.compression == "gzip"
    assert settings.storage.target_file_mb == 8
    assert settings.storage.compression_level == 5


def test_invalid_environment_value_names_setting_variable_and_file(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_yaml(tmp_path / "conf.yaml", "storage:\n  root: /yaml\n")
    monkeypatch.setenv("MEDALLION__STORAGE__TARGET_FILE_MB", "lots")
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=config)
    message = str(caught.value)
    assert "storage.target_file_mb" in message
    assert "MEDALLION__STORAGE__TARGET_FILE_MB" in message
    assert str(config) in message


def test_invalid_yaml_value_is_reported(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "conf.yaml", "storage:\n  target_file_mb: 0\n  compression: brotli\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=config)
    message = str(caught.value)
    assert "storage.target_file_mb" in message
    assert "storage.compression" in message
    assert "MEDALLION__STORAGE__COMPRESSION" in message
    assert str(config) in message


def test_invalid_value_without_config_file_says_none_was_found() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(overrides={"ray": {"num_cpus": -1}})
    message = str(caught.value)
    assert "ray.num_cpus" in message
    assert "MEDALLION__RAY__NUM_CPUS" in message
    assert "medallion.yaml" in message and "not found" in message


def test_unknown_yaml_key_is_named(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "conf.yaml", "storage:\n  root: /yaml\n  target_size: 3\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=config)
    assert "storage.target_size" in str(caught.value)


def test_unknown_yaml_section_is_named(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "conf.yaml", "sparks:\n  cores: 3\n")
    with pytest.raises(ConfigError, match="`sparks`"):
        load_settings(config_file=config)


def test_missing_named_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file=missing)
    assert str(missing) in str(caught.value)
    assert caught.value.path == str(missing)


def test_missing_config_file_named_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "gone.yaml"
    monkeypatch.setenv(CONFIG_FILE_ENV, str(missing))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(missing) in str(caught.value)
    assert CONFIG_FILE_ENV in str(caught.value)


def test_settings_are_frozen() -> None:
    settings = load_settings()
    assert isinstance(settings, Settings)
    with pytest.raises(ValidationError):
        settings.storage = settings.storage  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.storage.root = "/elsewhere"  # type: ignore[misc]
    assert settings.storage.root == "./lakehouse"
