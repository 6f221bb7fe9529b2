"""Training against a real MLflow tracking server backed by PostgreSQL."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import psycopg
import pytest

from engine.training.trainer import train
from tests.features.conftest import REPO
from tests.training.conftest import ChurnRoot

STARTUP_DEADLINE_S = 120


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def mlflow_server(postgres_registry: dict[str, Any], tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str, Path]]:
    """`mlflow server` on a private port over a PostgreSQL database of its own (dropped after) and an artifact
    root under tmp; yields the tracking URI, the database URL and the artifact root."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    database = postgres_registry["registry"]["path"]
    artifacts = tmp_path / "server-artifacts"
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", database,
         "--default-artifact-root", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "server.log").open("w"))
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError):
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"mlflow server did not come up: {(tmp_path / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri, database, artifacts
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.services
def test_training_tracks_and_registers_on_a_postgres_backed_tracking_server(
        ray_local: None, churn_materialized: ChurnRoot, mlflow_server: tuple[str, str, Path]) -> None:
    uri, database, artifacts = mlflow_server
    result = train("retail/churn", churn_materialized.settings, repo=str(REPO), tracking_uri=uri)

    assert mlflow.get_tracking_uri() == uri
    client = mlflow.MlflowClient(uri)
    assert str(client.get_model_version_by_alias("retail_churn", "champion").version) == result.model_version
    assert client.get_run(result.run_id).data.tags["medallion.champion.decision"] == "promoted"
    with psycopg.connect(database.replace("postgresql+psycopg", "postgresql")) as connection:
        [(status,)] = connection.execute("SELECT status FROM runs WHERE run_uuid = %s", (result.run_id,)).fetchall()
        metrics = dict(connection.execute("SELECT key, value FROM latest_metrics WHERE run_uuid = %s",
                                          (result.run_id,)).fetchall())
    assert status == "FINISHED" and metrics["auc"] == pytest.approx(result.metrics["auc"])
    assert any(path.name == "MLmodel" for path in artifacts.rglob("MLmodel"))
    assert not (churn_materialized.root / "_meta" / "mlflow" / "mlflow.db").exists()
