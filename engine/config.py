"""Settings: one frozen tree from `medallion.yaml` plus `MEDALLION__SECTION__KEY` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from engine import redact
from engine.errors import ConfigError

CONFIG_FILE_ENV = "MEDALLION_CONFIG"
DEFAULT_CONFIG_FILE = "medallion.yaml"
ENV_PREFIX = "MEDALLION__"
TOKEN_URLS = ("alerts.webhook_url", "lineage.url")
"""URL settings whose path may carry a token (Slack, Discord webhooks): shown without their path."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StorageSettings(_Section):
    """Where tables live and how their data files are written; `table_format` is the format of the tables that
    declare none; `iceberg_catalog_uri` is the SQLAlchemy URI of the catalog of Iceberg tables (a secret: it may hold
    a password; default SQLite under `<root>/_meta/iceberg`)."""

    root: str = Field(default="./lakehouse", description="Local folder or `s3://bucket/prefix` holding every table, landing files and `_meta`.")
    target_file_mb: int = Field(default=128, gt=0, description="Target size of written Parquet files, MB.")
    compression: Literal["zstd", "snappy", "lz4", "gzip", "none"] = Field(
        default="zstd", description="Parquet compression codec.")
    compression_level: int | None = Field(default=3, description="Codec level (null: the codec's default).")
    allow_unsafe_writes: bool = Field(
        default=False, description="Accept an S3 root without a safe concurrent-writer setup (single writer only).")
    table_format: Literal["delta", "iceberg"] = Field(
        default="delta", description="Format of the tables whose pipeline and declaration name none: `delta` or "
                                     "`iceberg`.")
    iceberg_catalog_uri: SecretStr | None = Field(
        default=None, description="SQLAlchemy URI of the Iceberg SQL catalog (PostgreSQL in production); default "
                                  "SQLite at `<root>/_meta/iceberg/catalog.db`.")


ADDRESS_ENV = "RAY_ADDRESS"
"""The environment variable naming the Ray cluster to join, as `ray` itself reads it."""


class RaySettings(_Section):
    """How the engine reaches Ray."""

    address: str | None = Field(
        default=None, description="Ray cluster (`ray://...`, `host:port`, `auto`); null: `RAY_ADDRESS`, else a private local instance.")
    num_cpus: int | None = Field(default=None, gt=0, description="CPUs of the private local instance.")
    object_store_memory_mb: int | None = Field(default=None, gt=0,
                                               description="Object store size of the private local instance, MB.")
    auth_mode: Literal["disabled", "token"] = Field(
        default="disabled", description="`RAY_AUTH_MODE` of instances started here; use `token` in production.")
    verbose: bool = Field(default=False, description="Show the libraries' output too: Ray's logs, Ray Data's progress "
                          "bars, Tune's progress, MLflow's messages, the Ray workers' output (`--verbose`).")
    bytes_per_task: int = Field(default=128 * 2**20, gt=0,
                                description="Input bytes one task of a step is sized for when a run on a cluster "
                                "asks the autoscaler for capacity ahead of its backlog.")
    forward_credentials: bool = Field(
        default=False, description="Pass `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` to a "
        "cluster's workers in the job's runtime env, where Ray writes them in clear to its logs; off: the nodes "
        "bring their own credentials (instance or pod role, node environment, mounted secret).")


class RunSettings(_Section):
    """How a run goes: how many of its tables are built at once, and how runs of one pipeline on one root keep out of
    each other's way (the run lease)."""

    lease_timeout_s: float = Field(default=60.0, gt=0, description="A run lease whose holder has not beaten for "
                                   "this long is taken over by the next run, seconds.")
    lease_heartbeat_s: float = Field(default=10.0, gt=0, description="How often a running run renews its lease, "
                                     "seconds (well under `lease_timeout_s`).")
    concurrent_tables: int | None = Field(default=None, ge=1, description="How many tables of a run may be built "
                                          "at once: a table starts as soon as the tables it reads have finished "
                                          "(default: the cluster's CPUs, at most 8; 1: one at a time).")
    confirm_rebuild_rows: int = Field(default=10_000_000, ge=0, description="On a terminal, `medallion run` asks "
                                      "before a rebuild that reads more input rows than this (`--yes` skips it).")

    @model_validator(mode="after")
    def _heartbeat_within_timeout(self) -> RunSettings:
        if self.lease_heartbeat_s * 2 > self.lease_timeout_s:
            raise ValueError("`run.lease_heartbeat_s` must be at most half of `run.lease_timeout_s`")
        return self


class AlertSettings(_Section):
    """Where quality alerts go and when a failure rate counts as rising."""

    webhook_url: SecretStr | None = Field(default=None, description="Quality alerts are POSTed here as JSON.")
    webhook_timeout_s: float = Field(default=5.0, gt=0, description="Timeout of one webhook call, seconds.")
    rising_runs: int = Field(default=3, ge=2, description="Alert when a failure rate rose over this many runs.")


class TrainingSettings(_Section):
    """Where training runs are tracked: an MLflow tracking URI (default: `$MLFLOW_TRACKING_URI`, else SQLite
    under `<root>/_meta/mlflow`)."""

    tracking_uri: SecretStr | None = Field(default=None, description="MLflow tracking URI (may hold credentials).")


class PiiSettings(_Section):
    """The key that tokenizes personal data (`docs/governance.md`): `key` (env `MEDALLION__PII__KEY`, or
    `MEDALLION_PII_KEY`) or a secret file `key_file`; `key_version` is written into every token. With none of them
    and `local_key` on (development), a key generated once under `<root>/_meta/secrets/` is used."""

    key: SecretStr | None = Field(default=None, description="The tokenization key itself.")
    key_file: str | None = Field(default=None, description="A file holding the key (e.g. a mounted secret).")
    key_version: str = Field(default="v1", pattern=r"^[a-z0-9]{1,8}$",
                             description="Written into every token; change it when the key rotates.")
    local_key: bool = Field(default=True,
                            description="Without a key, generate one under `<root>/_meta/secrets/` (development).")


class EncryptionSettings(_Section):
    """The keys of columns declared `encrypt` (`docs/governance.md`): `key` (env `MEDALLION__ENCRYPTION__KEY`,
    or `MEDALLION_ENCRYPTION_KEY`) or a secret file `key_file` holds the current key, 32 bytes as 64 hex digits
    or base64, which encrypts; `previous_keys` and `previous_key_files` the keys rotated out, which only
    decrypt. There is no development fallback."""

    key: SecretStr | None = Field(default=None, description="The column-encryption key itself (64 hex digits or "
                                                            "the base64 of 32 bytes).")
    key_file: str | None = Field(default=None, description="A file holding the key (e.g. a mounted secret).")
    previous_keys: list[SecretStr] = Field(
        default=[], description="Keys rotated out, read only; a secret of the first format (any text) reads "
                                "its values.")
    previous_key_files: list[str] = Field(default=[], description="Files holding keys rotated out, one key each.")


class MaintenanceSettings(_Section):
    """When tables are compacted and vacuumed after runs, and how long files a table no longer references are
    kept, by layer (`quarantine` for quarantine tables; `default_retention_hours` for any other)."""

    retention_hours: dict[str, int] = Field(
        default={"bronze": 720, "silver": 168, "gold": 168, "quarantine": 720},
        description="Hours unreferenced files are kept, by layer.")
    default_retention_hours: int = Field(default=168, gt=0, description="Retention of any layer not listed.")
    min_retention_hours: int = Field(default=168, ge=0, description="Below this, vacuum needs `--force`.")
    optimize_after_commits: int = Field(default=20, gt=0,
                                        description="Compact a table after this many commits since the last.")
    max_small_files: int = Field(default=32, gt=1, description="Compact a table holding more small files than this.")
    vacuum_every_hours: float = Field(default=24.0, gt=0, description="Vacuum a table at most this often.")
    after_runs: bool = Field(default=True, description="Run due maintenance after each successful `medallion run`.")


class FeatureSettings(_Section):
    """The Feast feature store over the gold tables (`docs/features.md`): its repository, a Feast configuration
    overlay, and whether `medallion run` materializes it after each successful run."""

    repo: str = Field(default="features", description="Feature repository (definitions, feature_store.yaml); "
                                                      "`medallion features --repo` overrides it.")
    feast_config: str | None = Field(default=None, description="YAML merged over the Feast defaults, e.g. "
                                                               "`features/production.yaml`.")
    materialize_after_runs: bool = Field(
        default=False, description="After each successful `medallion run`, materialize incrementally, as of now, "
                                   "the online feature views over the tables it committed.")


class LineageSettings(_Section):
    """Where OpenLineage events of table runs go: `file` (JSON lines, default
    `<root>/_meta/lineage/events.jsonl`), `http` (an OpenLineage endpoint such as Marquez at `url`, with an
    optional `api_key`), `console` (the log) or `none`."""

    transport: Literal["file", "http", "console", "none"] = Field(default="file",
                                                                   description="Where events go.")
    path: str | None = Field(default=None, description="`file`: the JSON-lines file.")
    url: SecretStr | None = Field(default=None, description="`http`: the endpoint's base URL.")
    api_key: SecretStr | None = Field(default=None, description="`http`: sent as `Authorization: Bearer <key>`.")
    namespace: str = Field(default="medallion", description="OpenLineage namespace of the jobs.")
    timeout_s: float = Field(default=5.0, gt=0, description="`http`: timeout of one POST, seconds.")


class RoleGrant(_Section):
    """What one role may do: resource patterns (`silver.*`, `gold.daily_revenue`, `landing.*`,
    `quarantine.*`, `features.*`, `*`) it may read, write and manage (maintain, restore, erase)."""

    read: tuple[str, ...] = Field(default=(), description="Resource patterns the role may read.")
    write: tuple[str, ...] = Field(default=(), description="Resource patterns the role may write.")
    manage: tuple[str, ...] = Field(default=(), description="Resource patterns the role may maintain, restore, erase.")


class AccessSettings(_Section):
    """Roles and who has them (`docs/governance.md`). Off (`enforce: false`) everyone may do everything;
    on, an actor (`$MEDALLION_ACTOR`, else the OS user) has the roles `members` lists for it, else
    `default_roles`, and every read, write and maintenance operation is checked against them."""

    enforce: bool = Field(default=False, description="Check every operation against the actor's roles.")
    roles: dict[str, RoleGrant] = Field(default={}, description="Role name -> what it may read, write, manage.")
    members: dict[str, tuple[str, ...]] = Field(default={}, description="Actor -> its roles.")
    default_roles: tuple[str, ...] = Field(default=(), description="Roles of actors `members` does not list.")

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
    run: RunSettings = RunSettings()
    alerts: AlertSettings = AlertSettings()
    training: TrainingSettings = TrainingSettings()
    pii: PiiSettings = PiiSettings()
    encryption: EncryptionSettings = EncryptionSettings()
    maintenance: MaintenanceSettings = MaintenanceSettings()
    access: AccessSettings = AccessSettings()
    lineage: LineageSettings = LineageSettings()
    features: FeatureSettings = FeatureSettings()

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
    """Build the settings: `overrides` (e.g. CLI flags) > environment > YAML file > defaults; their secrets are
    hidden from every log record (`hide_secrets`).

    Args:
        config_file: a YAML file; see `resolve_config_file` for the default.
        overrides: values by section and key, e.g. `{"storage": {"root": "/data"}}`; None values are ignored.

    Raises:
        ConfigError: a value is missing or invalid; the message lists every place that was looked at.
    """
    yaml_file = resolve_config_file(config_file)
    if yaml_file is not None:
        check_config_file(yaml_file)

    class _FromFile(Settings):
        model_config = SettingsConfigDict(yaml_file=yaml_file)

    clean = {
        section: {key: value for key, value in values.items() if value is not None}
        for section, values in (overrides or {}).items()
    }
    try:
        settings = _FromFile(**{section: values for section, values in clean.items() if values})
    except ValidationError as err:
        raise ConfigError(_describe(err, yaml_file)) from None
    hide_secrets(settings)
    return settings


def check_config_file(path: Path) -> None:
    """Refuse a YAML settings file that does not parse, or whose top level is not a mapping of sections.

    Raises:
        ConfigError: naming the file, where it stops parsing, and what to fix.
    """
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file `{path}` cannot be read ({err}); fix it or pass --config another file",
                          path=str(path)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid syntax"
        raise ConfigError(f"config file `{path}` is not valid YAML{where}: {problem}; fix the YAML or pass --config "
                          "another file", path=str(path)) from None
    if content is not None and not isinstance(content, dict):
        raise ConfigError(f"config file `{path}` holds a {type(content).__name__} at its top level; it must be a "
                          "mapping of sections such as `storage:` and `run:`", path=str(path))


def hide_secrets(settings: Settings) -> None:
    """Register every `SecretStr` setting with `engine.redact`, so that no log record shows it."""
    for name in Settings.model_fields:
        for key, value in getattr(settings, name):
            if isinstance(value, SecretStr):
                redact.hide(value.get_secret_value(), secret_path=f"{name}.{key}" in TOKEN_URLS)


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
