"""Where runs are tracked, and that the training bridge stays out of `import engine`."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import TrainingError
from engine.training.tracking import configured_uri, resolve_tracking_uri
from tests.conftest import settings_at


def test_tracking_uri_is_configured_else_environment_else_embedded_sqlite(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(str(tmp_path)) == f"sqlite:///{tmp_path}/_meta/mlflow/mlflow.db"
    assert (tmp_path / "_meta" / "mlflow").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert resolve_tracking_uri(str(tmp_path)) == "http://tracking:5000"
    monkeypatch.setenv("MEDALLION__TRAINING__TRACKING_URI", "http://configured:5000")
    configured = configured_uri(settings_at(tmp_path))
    assert resolve_tracking_uri(str(tmp_path), configured) == "http://configured:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(TrainingError, match="storage root `s3://lake` is remote.*set MLFLOW_TRACKING_URI"):
        resolve_tracking_uri("s3://lake")
