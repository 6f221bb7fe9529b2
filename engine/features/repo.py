"""The Feast configuration of a storage root, the feature repository's definitions, and `apply`.

Defaults (local provider, file registry and SQLite online store under `<root>/_meta/features/`, the Delta
offline store and the Delta-aware Ray compute engine) are embedded here; a `feature_store.yaml` in the
feature repository and an optional overlay file (e.g. `production.yaml` with Redis and a SQL registry)
are merged over them. `${MEDALLION_ROOT}` in those files stands for the storage root, other `${VAR}`s are
read from the environment.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from feast import Entity, FeatureService, FeatureStore, FeatureView, OnDemandFeatureView, RepoConfig
from feast.data_source import DataSource
from feast.diff.property_diff import TransitionType
from feast.errors import FeastError
from feast.feature_view import DUMMY_ENTITY
from feast.permissions.permission import Permission
from feast.project import Project
from feast.repo_config import FeastConfigError
from feast.repo_contents import RepoContents
from pydantic import ValidationError

from engine.config import AccessSettings, Settings
from engine.errors import FeatureStoreError
from engine.features.offline import STORE_TYPE
from engine.features.permissions import feast_permissions, is_managed, served_views
from engine.features.source import DeltaSource
from engine.layout import Layout
from engine.redact import hide, redact_text

ENGINE_TYPE = "engine.features.compute.DeltaRayComputeEngine"
CONFIG_FILE = "feature_store.yaml"
REPO_ENV = "MEDALLION_FEATURE_REPO"
OVERLAY_ENV = "MEDALLION_FEAST_CONFIG"
ROOT_VARIABLE = "MEDALLION_ROOT"
DEFAULT_PROJECT = "medallion"
_UNSET = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
SECRET_WORDS = {"password", "secret", "token", "key"}
"""A Feast setting whose name has one of these words is a secret (`password`, `api_key`, `client_secret`...)."""

FeastObject = Entity | FeatureView | OnDemandFeatureView | FeatureService | DataSource


def default_config(root: str) -> dict[str, Any]:
    """The embedded defaults for a storage root."""
    base = Layout.at(root).features()
    return {
        "project": DEFAULT_PROJECT,
        "provider": "local",
        "registry": {"registry_type": "file", "path": f"{base}/registry.db", "cache_ttl_seconds": 60},
        "online_store": {"type": "sqlite", "path": f"{base}/online.db"},
        "offline_store": {"type": STORE_TYPE, "root": Layout.at(root).root},
        "batch_engine": {"type": ENGINE_TYPE},
        "entity_key_serialization_version": 3,
    }


def render_config(
    root: str,
    repo: str | os.PathLike[str] | None = None,
    *,
    overlay: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RepoConfig:
    """The Feast configuration for `root`: defaults < `<repo>/feature_store.yaml` < `overlay` < `overrides`.

    Relative registry and SQLite paths resolve under `<root>/_meta/features`; the offline store always reads
    `root`.

    Raises:
        FeatureStoreError: a file is missing or invalid, or names an unset environment variable.
    """
    merged = default_config(root)
    files = [Path(repo) / CONFIG_FILE] if repo is not None and (Path(repo) / CONFIG_FILE).is_file() else []
    if overlay is not None:
        if not Path(overlay).is_file():
            raise FeatureStoreError(f"Feast configuration overlay `{overlay}` does not exist; fix the path "
                                    "(--feast-config or MEDALLION_FEAST_CONFIG)", path=str(overlay))
        files.append(Path(overlay))
    for file in files:
        merged = _merge(merged, _read_yaml(file, root))
    merged = _merge(merged, dict(overrides or {}))
    merged["offline_store"]["root"] = Layout.at(root).root
    _resolve_local_paths(merged, Layout.at(root).features())
    _hide_secrets(merged)
    try:
        config = RepoConfig(**merged)
    except (ValidationError, FeastConfigError) as err:
        raise FeatureStoreError(f"invalid Feast configuration (from {[str(f) for f in files] or 'defaults'}): "
                                f"{_problems(err)}") from None
    config.repo_path = Path(repo) if repo is not None else Path(Layout.at(root).features())
    return config


def open_store(
    root: str,
    repo: str | os.PathLike[str] | None = None,
    *,
    overlay: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> FeatureStore:
    """A Feast `FeatureStore` over the tables under `root` (see `render_config`)."""
    config = render_config(root, repo, overlay=overlay, overrides=overrides)
    if "://" not in Layout.at(root).root:
        Path(Layout.at(root).features()).mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=config)


def repo_of(settings: Settings, repo: str | None = None, overlay: str | None = None) -> tuple[str, str | None]:
    """The feature repository and Feast overlay to use, the one way every caller resolves them: those given,
    else `$MEDALLION_FEATURE_REPO` and `$MEDALLION_FEAST_CONFIG`, else the `features.repo` and
    `features.feast_config` settings."""
    return (repo or os.environ.get(REPO_ENV) or settings.features.repo,
            overlay or os.environ.get(OVERLAY_ENV) or settings.features.feast_config)


def store_of(settings: Settings, repo: str | None = None, overlay: str | None = None) -> FeatureStore:
    """The Feast store over the settings' root, with the repository and overlay of `repo_of`."""
    repo, overlay = repo_of(settings, repo, overlay)
    return open_store(settings.storage.root, repo, overlay=overlay)


def load_definitions(repo: str | os.PathLike[str]) -> list[FeastObject]:
    """The Feast objects defined in the repository's Python files (files starting with `_` are skipped).

    Raises:
        FeatureStoreError: the folder does not exist or holds no definitions.
    """
    folder = Path(repo)
    files = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_")) if folder.is_dir() else []
    if not files:
        raise FeatureStoreError(f"feature repository `{folder}` has no Python definitions; point --repo (or "
                                "MEDALLION_FEATURE_REPO) at the folder with your entities and feature views",
                                path=str(folder))
    package = "medallion_feature_repo_" + hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:10]
    found: list[FeastObject] = []
    for file in files:
        name = f"{package}_{file.stem}"
        spec = importlib.util.spec_from_file_location(name, file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            raise FeatureStoreError(f"loading feature definitions `{file}` failed: {err!r}", path=str(file)) from err
        for value in vars(module).values():
            if isinstance(value, FeastObject) and not any(value is seen for seen in found):
                found.append(value)
    return found


@dataclass(frozen=True)
class ApplyReport:
    """What `apply_repo` changed in the registry: object names by kind and change (`created`, `updated`,
    `deleted`); empty when the registry already matched the definitions."""

    changes: dict[str, dict[str, list[str]]]


def apply_repo(store: FeatureStore, objects: Sequence[FeastObject], access: AccessSettings | None = None
               ) -> ApplyReport:
    """Register `objects` (and delete the project's registered objects they no longer include), like
    `feast apply`, and update the online store's tables.

    Every `DeltaSource` is checked first: its table must exist under the root. With `access` given, the
    `medallion-*` permissions are replaced by its roles' (`engine.features.permissions`, for the feature
    server to enforce) when access control is on, and removed when it is off; with `access` None they are
    left as registered. Other permissions are always kept.

    Raises:
        FeatureStoreError: a source table is missing or lacks its timestamp column.
    """
    views = [o for o in objects if isinstance(o, FeatureView)]
    on_demand = [o for o in objects if isinstance(o, OnDemandFeatureView)]
    sources: dict[str, DataSource] = {}
    for source in [o for o in objects if isinstance(o, DataSource)] + [v.batch_source for v in views] + [
            r for odfv in on_demand for r in odfv.source_request_sources.values()]:
        if source is not None:
            sources.setdefault(source.name, source)
    for source in sources.values():
        if isinstance(source, DeltaSource):
            source.validate(store.config)
    contents = RepoContents(
        projects=[Project(name=store.project)],
        data_sources=list(sources.values()),
        feature_views=views,
        on_demand_feature_views=on_demand,
        stream_feature_views=[],
        label_views=[],
        entities=[o for o in objects if isinstance(o, Entity)] + [DUMMY_ENTITY],
        feature_services=[o for o in objects if isinstance(o, FeatureService)],
        permissions=_permissions(store, objects, access),
    )
    try:
        registry_diff, infra_diff, new_infra = store.plan(contents)
        store._apply_diffs(registry_diff, infra_diff, new_infra)
    except (FeastError, ValueError) as err:
        raise FeatureStoreError(f"Feast refused the definitions of project `{store.project}`: {err}") from err
    changes: dict[str, dict[str, list[str]]] = {}
    for diff in registry_diff.feast_object_diffs:
        change = {TransitionType.CREATE: "created", TransitionType.UPDATE: "updated",
                  TransitionType.DELETE: "deleted"}.get(diff.transition_type)
        if change and diff.name != DUMMY_ENTITY.name and (change != "updated" or _changed(diff)):
            kind = diff.feast_object_type.name.replace("_", " ").lower()
            changes.setdefault(change, {}).setdefault(kind, []).append(diff.name)
    return ApplyReport({c: {k: sorted(v) for k, v in sorted(kinds.items())} for c, kinds in sorted(changes.items())})


def _permissions(store: FeatureStore, objects: Sequence[FeastObject], access: AccessSettings | None
                 ) -> list[Permission]:
    """The permissions the project should have: the registered ones not made by the engine, and the roles'
    when access control is on (the registered ones when `access` is None)."""
    registered = store.registry.list_permissions(store.project)
    kept = [p for p in registered if not is_managed(p)]
    if access is None:
        return registered
    if not access.enforce:
        return kept
    services = served_views([o for o in objects if isinstance(o, FeatureService)],
                            [o for o in objects if isinstance(o, OnDemandFeatureView)])
    return kept + feast_permissions(access, services)


def _changed(diff: Any) -> bool:
    """Whether an update changes more than the creation times Feast stamps on embedded data sources."""
    return any(_without_meta(p.val_existing) != _without_meta(p.val_declared)
               for p in diff.feast_object_property_diffs)


def _without_meta(value: Any) -> Any:
    if hasattr(value, "DESCRIPTOR") and "meta" in value.DESCRIPTOR.fields_by_name:
        value = type(value).FromString(value.SerializeToString())
        value.ClearField("meta")
    return value


def _read_yaml(path: Path, root: str) -> dict[str, Any]:
    text = path.read_text().replace("${" + ROOT_VARIABLE + "}", Layout.at(root).root)
    text = os.path.expandvars(text)
    unset = sorted(set(_UNSET.findall(text)))
    if unset:
        raise FeatureStoreError(f"Feast configuration `{path}` uses unset environment variable(s) {unset}; set "
                                "them before running", path=str(path))
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise FeatureStoreError(f"Feast configuration `{path}` is not valid YAML: {err}", path=str(path)) from None
    if not isinstance(loaded, dict):
        raise FeatureStoreError(f"Feast configuration `{path}` must be a mapping", path=str(path))
    return loaded


def _hide_secrets(settings: Mapping[str, Any]) -> None:
    """Hide the Feast configuration's secrets from log records (`engine.redact`): settings named like a secret,
    the password of a Redis `connection_string`, the credentials of URLs (a SQL registry's `path`)."""
    for name, value in settings.items():
        if isinstance(value, Mapping):
            _hide_secrets(value)
        elif isinstance(value, str) and SECRET_WORDS & set(name.lower().split("_")):
            hide(value)
        elif isinstance(value, str) and name == "connection_string":
            for option, _, given in (part.partition("=") for part in value.split(",")):
                if option.strip().lower() == "password":
                    hide(given.strip())
        elif isinstance(value, str) and "://" in value:
            hide(value)


def _problems(err: ValidationError | FeastConfigError) -> str:
    """What is wrong with a Feast configuration, without the values given (a connection string may hold a
    password)."""
    if isinstance(err, ValidationError):
        return "; ".join(f"{'.'.join(str(part) for part in problem['loc']) or 'configuration'}: {problem['msg']}"
                         for problem in err.errors(include_input=False, include_url=False))
    return redact_text(str(err))


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` updated by `extra`; nested mappings merge, except that a changed store `type` replaces it."""
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        same_kind = isinstance(current, dict) and isinstance(value, Mapping) and (
            value.get("type", current.get("type")) == current.get("type")
            and value.get("registry_type", current.get("registry_type")) == current.get("registry_type"))
        merged[key] = _merge(current, value) if same_kind else (dict(value) if isinstance(value, Mapping) else value)
    return merged


def _resolve_local_paths(config: dict[str, Any], base: str) -> None:
    registry = config.get("registry")
    if isinstance(registry, dict) and registry.get("registry_type", "file") == "file":
        registry["path"] = _under(registry["path"], base)
    online = config.get("online_store")
    if isinstance(online, dict) and online.get("type") == "sqlite" and "path" in online:
        online["path"] = _under(online["path"], base)


def _under(path: str, base: str) -> str:
    return path if "://" in path or os.path.isabs(path) else f"{base}/{path}"
