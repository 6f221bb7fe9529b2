"""Where MLflow tracks runs (an embedded SQLite store under the root by default), and the lineage and code
version a run records."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import Settings
from engine.errors import TrainingError
from engine.layout import Layout
from engine.redact import hide, redact_url
from engine.storage import is_local

if TYPE_CHECKING:
    from feast import FeatureStore

TRACKING_ENV = "MLFLOW_TRACKING_URI"
TAG = "medallion."
DATABASE = "mlflow.db"


def configured_uri(settings: Settings) -> str | None:
    """The tracking URI of the settings (`training.tracking_uri`, a secret: it may hold a password)."""
    secret = settings.training.tracking_uri
    return secret.get_secret_value() if secret is not None else None


def resolve_tracking_uri(root: str, configured: str | None = None) -> str:
    """The tracking URI: `configured`, else `$MLFLOW_TRACKING_URI`, else SQLite at `<root>/_meta/mlflow/mlflow.db`.

    Raises:
        TrainingError: the root is remote and no tracking URI is configured.
    """
    uri = configured or os.environ.get(TRACKING_ENV)
    if uri:
        return uri
    base = Layout.at(root).mlflow()
    if "://" in base:
        raise TrainingError(f"storage root `{root}` is remote, so the embedded SQLite tracking store cannot live "
                            f"there; set {TRACKING_ENV} (or `training.tracking_uri`) to an MLflow server")
    Path(base).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{base}/{DATABASE}"


def existing_tracking_uri(root: str, configured: str | None = None) -> str | None:
    """The tracking URI as `resolve_tracking_uri` finds it, but None for an embedded store that does not exist
    (nothing was ever tracked there) instead of creating it."""
    uri = configured or os.environ.get(TRACKING_ENV)
    if uri:
        return uri
    database = f"{Layout.at(root).mlflow()}/{DATABASE}"
    return f"sqlite:///{database}" if "://" not in database and Path(database).is_file() else None


UI_HOST, UI_PORT = "127.0.0.1", 5000
"""Where `medallion mlflow-ui` serves the tracking UI by default: loopback only."""


def is_server(uri: str) -> bool:
    """Whether `uri` is a tracking server's, which serves its own UI."""
    return uri.startswith(("http://", "https://"))


def ui_url(host: str = UI_HOST, port: int = UI_PORT) -> str:
    """The address of a tracking UI served on `host`:`port`."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def ui_command(uri: str, host: str = UI_HOST, port: int = UI_PORT) -> list[str]:
    """The command line serving MLflow's UI over the tracking store at `uri`, on `host`:`port`, with one worker
    (for one reader)."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--registry-store-uri", uri,
            "--host", host, "--port", str(port), "--workers", "1"]


def run_url(run_id: str) -> str:
    """The page of MLflow run `run_id` in the tracking UI: on the tracking server when MLflow tracks to one,
    else where `medallion mlflow-ui` serves it by default."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    experiment = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    base = redact_url(uri).rstrip("/") if is_server(uri) else ui_url()
    return f"{base}/#/experiments/{experiment}/runs/{run_id}"


def use_tracking(uri: str, *, verbose: bool = False) -> None:
    """Point MLflow's tracking and model registry at `uri`, whose credentials no log record shows. MLflow logs
    at INFO when `verbose`, else its errors only, and the deprecation warnings its own code raises (about how it
    uses SQLAlchemy and others: nothing its user can act on) show only when `verbose`."""
    import mlflow

    hide(uri)
    logging.getLogger("mlflow").setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose:
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow\.")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


@contextmanager
def mlflow_messages(verbose: bool) -> Iterator[None]:
    """MLflow's messages printed in the block (such as "Successfully registered model ..."), which bypass its
    logger, only when `verbose`."""
    if verbose:
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def experiment_id(name: str, uri: str, root: str) -> str:
    """The id of experiment `name`, created if missing. Its artifacts go to the root's object store when the
    root is remote (`<root>/_meta/mlflow/artifacts/<name>`, written by MLflow through boto3 with the same AWS
    variables as the tables), else with a SQLite store to `artifacts/<name>` beside the database file (a
    server with a local root decides its own artifact root)."""
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    folder_name = name.replace("/", "-")
    location = None
    if not is_local(root):
        location = f"{Layout.at(root).mlflow()}/artifacts/{folder_name}"
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent / "artifacts" / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        location = folder.resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def code_version() -> str:
    """The git commit of the engine's checkout (`+dirty` with uncommitted changes), else the package version."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        try:
            return f"medallion-engine=={version('medallion-engine')}"
        except PackageNotFoundError:
            return "unknown"


def feast_lineage(store: FeatureStore, service_name: str) -> dict[str, str]:
    """The feature service, the Feast project, and a hash of the registered definitions the service reads
    (service, feature views and on-demand views), with the registry's last update time."""
    service = store.get_feature_service(service_name)
    on_demand = {view.name for view in store.list_on_demand_feature_views()}
    specs = [service.to_proto().spec.SerializeToString(deterministic=True)]
    for projection in service.feature_view_projections:
        if projection.name in on_demand:
            spec = store.get_on_demand_feature_view(projection.name).to_proto().spec
            for source in spec.sources.values():  # a request source's `meta` holds the time of `to_proto()`
                if source.HasField("request_data_source"):
                    source.request_data_source.ClearField("meta")
        else:
            spec = store.get_feature_view(projection.name).to_proto().spec
        specs.append(spec.SerializeToString(deterministic=True))
    registry = store.registry.proto()
    updated = registry.last_updated.ToDatetime().isoformat() if registry.HasField("last_updated") else ""
    return {"feature_service": service_name, "feast_project": store.project,
            "feast_registry_hash": hashlib.sha256(b"".join(specs)).hexdigest(),
            "feast_registry_updated": updated}


def lineage_tags(values: Mapping[str, Any]) -> dict[str, str]:
    """`values` as MLflow tags under the `medallion.` prefix (non-strings as JSON)."""
    return {TAG + key: value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
            for key, value in values.items()}
