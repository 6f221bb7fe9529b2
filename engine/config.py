"""Settings: one frozen tree from `medallion.yaml` plus `MEDALLION__SECTION__KEY` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from engine.errors import ConfigError

CONFIG_FILE_ENV = "MEDALLION_CONFIG"
DEFAULT_CONFIG_FILE = "medallion.yaml"
ENV_PREFIX = "MEDALLION__"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StorageSettings(_Section):
    """Where tables live and how their data files are written; `iceberg_catalog_uri` is the SQLAlchemy URI of the
    catalog of Iceberg tables (a secret: it may hold a password; default SQLite under `<root>/_meta/iceberg`)."""

    root: str = "./lakehouse"
    target_file_mb: int = Field(default=128, gt=0)
    compression: Literal["zstd", "snappy", "lz4", "gzip", "none"] = "zstd"
    compression_level: int | None = 3
    allow_unsafe_writes: bool = False
    iceberg_catalog_uri: SecretStr | None = None


class RaySettings(_Section):
    """How the engine reaches Ray."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, gt=0)
    object_store_memory_mb: int | None = Field(default=None, gt=0)
    auth_mode: Literal["disabled", "token"] = "disabled"
    verbose: bool = False


class AlertSettings(_Section):
    """Where quality alerts go and when a failure rate counts as rising."""

    webhook_url: SecretStr | None = None
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    rising_runs: int = Field(default=3, ge=2)


class TrainingSettings(_Section):
    """Where training runs are tracked: an MLflow tracking URI (default: `$MLFLOW_TRACKING_URI`, else SQLite
    under `<root>/_meta/mlflow`)."""

    tracking_uri: SecretStr | None = None


class PiiSettings(_Section):
    """The key that tokenizes personal data (`docs/governance.md`): `key` (env `MEDALLION__PII__KEY`, or
    `MEDALLION_PII_KEY`) or a secret file `key_file`; `key_version` is written into every token. With none of them
    and `local_key` on (development), a key generated once under `<root>/_meta/secrets/` is used."""

    key: SecretStr | None = None
    key_file: str | None = None
    key_version: str = Field(default="v1", pattern=r"^[a-z0-9]{1,8}$")
    local_key: bool = True


class EncryptionSettings(_Section):
    """The key that encrypts columns declared `encrypt` (`docs/governance.md`): `key` (env
    `MEDALLION__ENCRYPTION__KEY`, or `MEDALLION_ENCRYPTION_KEY`) or a secret file `key_file`; there is no
    development fallback."""

    key: SecretStr | None = None
    key_file: str | None = None


class MaintenanceSettings(_Section):
    """When tables are compacted and vacuumed after runs, and how long files a table no longer references are
    kept, by layer (`quarantine` for quarantine tables; `default_retention_hours` for any other)."""

    retention_hours: dict[str, int] = {"bronze": 720, "silver": 168, "gold": 168, "quarantine": 720}
    default_retention_hours: int = Field(default=168, gt=0)
    min_retention_hours: int = Field(default=168, ge=0)
    optimize_after_commits: int = Field(default=20, gt=0)
    max_small_files: int = Field(default=32, gt=1)
    vacuum_every_hours: float = Field(default=24.0, gt=0)
    after_runs: bool = True


class LineageSettings(_Section):
    """Where OpenLineage events of table runs go: `file` (JSON lines, default
    `<root>/_meta/lineage/events.jsonl`), `http` (an OpenLineage endpoint such as Marquez at `url`, with an
    optional `api_key`), `console` (the log) or `none`."""

    transport: Literal["file", "http", "console", "none"] = "file"
    path: str | None = None
    url: SecretStr | None = None
    api_key: SecretStr | None = None
    namespace: str = "medallion"
    timeout_s: float = Field(default=5.0, gt=0)


class RoleGrant(_Section):
    """What one role may do: resource patterns (`silver.*`, `gold.daily_revenue`, `landing.*`,
    `quarantine.*`, `features.*`, `*`) it may read, write and manage (maintain, restore, erase)."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    manage: tuple[str, ...] = ()


class AccessSettings(_Section):
    """Roles and who has them (`docs/governance.md`). Off (`enforce: false`) everyone may do everything;
    on, an actor (`$MEDALLION_ACTOR`, else the OS user) has the roles `members` lists for it, else
    `default_roles`, and every read, write and maintenance operation is checked against them."""

    enforce: bool = False
    roles: dict[str, RoleGrant] = {}
    members: dict[str, tuple[str, ...]] = {}
    default_roles: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _known_roles(self) -> AccessSettings:
        given = {role for roles in [*self.members.values(), self.default_roles] for role in roles}
        unknown = sorted(given - set(self.roles))
        if unknown:
            raise ValueError(f"roles {unknown} are given to actors but not declared under `access.roles`")
        return self


class Settings(BaseSettings):
    """The whole configuration tree. Build it with `load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    storage: StorageSettings = StorageSettings()
    ray: RaySettings = RaySettings()
    alerts: AlertSettings = AlertSettings()
    training: TrainingSettings = TrainingSettings()
    pii: PiiSettings = PiiSettings()
    encryption: EncryptionSettings = EncryptionSettings()
    maintenance: MaintenanceSettings = MaintenanceSettings()
    access: AccessSettings = AccessSettings()
    lineage: LineageSettings = LineageSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("yaml_file"):
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)


def resolve_config_file(config_file: str | os.PathLike[str] | None) -> Path | None:
    """The YAML file to read: the one given, else `$MEDALLION_CONFIG`, else `./medallion.yaml` if present.

    Raises:
        ConfigError: a file was named explicitly but does not exist.
    """
    named = config_file or os.environ.get(CONFIG_FILE_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"config file `{path}` does not exist; fix the path or unset {CONFIG_FILE_ENV}",
                              path=str(path))
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    """Build the settings: `overrides` (e.g. CLI flags) > environment > YAML file > defaults.

    Args:
        config_file: a YAML file; see `resolve_config_file` for the default.
        overrides: values by section and key, e.g. `{"storage": {"root": "/data"}}`; None values are ignored.

    Raises:
        ConfigError: a value is missing or invalid; the message lists every place that was looked at.
    """
    yaml_file = resolve_config_file(config_file)

    class _FromFile(Settings):
        model_config = SettingsConfigDict(yaml_file=yaml_file)

    clean = {
        section: {key: value for key, value in values.items() if value is not None}
        for section, values in (overrides or {}).items()
    }
    try:
        return _FromFile(**{section: values for section, values in clean.items() if values})
    except ValidationError as err:
        raise ConfigError(_describe(err, yaml_file)) from None


def _describe(err: ValidationError, yaml_file: Path | None) -> str:
    problems = []
    for error in err.errors():
        dotted = ".".join(str(part) for part in error["loc"])
        env_name = ENV_PREFIX + "__".join(str(part).upper() for part in error["loc"])
        file_note = f"`{yaml_file}`" if yaml_file else f"no config file (`{DEFAULT_CONFIG_FILE}` not found)"
        problems.append(
            f"setting `{dotted}`: {error['msg']}; looked in command-line flags, "
            f"environment variable {env_name}, {file_note}, and the defaults"
        )
    return "invalid configuration: " + " | ".join(problems)
