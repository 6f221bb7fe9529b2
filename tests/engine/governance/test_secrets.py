"""Secrets come from the environment or secret files and show up nowhere: not in reprs, logs at any level,
error messages, run records, commit metadata, MLflow or any file under the root."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from engine.alerts import sinks_from_settings
from engine.config import load_settings
from engine.errors import ConfigError
from engine.governance.secrets import pii_key
from tests.conftest import RETAIL_AS_OF, RETAIL_TEST_SCALE, settings_at
from tests.engine.scan import findings
from tests.features.conftest import REPO, RETAIL_END

CANARIES = {
    "MEDALLION__ALERTS__WEBHOOK_URL": "http://user:CANARY-123@127.0.0.1:9/x?token=CANARY-123",
    "MEDALLION_PII_KEY": "CANARY-KEY-456",
    "AWS_SECRET_ACCESS_KEY": "CANARY-789",
}
MARKERS = ("CANARY-123", "CANARY-KEY-456", "CANARY-789", "CANARY-PG")


@pytest.fixture
def canaries(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)


def _leaks(text: str) -> list[str]:
    return [m for m in MARKERS if m in text]


@pytest.mark.usefixtures("canaries")
def test_settings_never_show_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDALLION__TRAINING__TRACKING_URI", "postgresql://ml:CANARY-PG@127.0.0.1/mlflow")
    monkeypatch.setenv("MEDALLION__PII__KEY", "CANARY-KEY-456")
    settings = load_settings()
    shown = [repr(settings), str(settings), settings.model_dump_json(), repr(settings.model_dump()),
             repr(pii_key(settings.pii, "test")), repr(sinks_from_settings(settings.alerts))]
    assert _leaks(" ".join(shown)) == []
    assert settings.alerts.webhook_url is not None and "CANARY-123" in settings.alerts.webhook_url.get_secret_value()


def test_an_invalid_secret_setting_is_named_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDALLION__ALERTS__WEBHOOK_URL", "ftp://user:CANARY-123@host/x")
    with pytest.raises(ConfigError) as raised:
        sinks_from_settings(load_settings().alerts)
    assert "alerts.webhook_url" in str(raised.value) and _leaks(str(raised.value)) == []


@pytest.mark.slow
@pytest.mark.usefixtures("canaries")
def test_a_full_run_and_training_leave_no_secret_anywhere(
        ray_local: None, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.features.materialize import materialize
    from engine.features.repo import apply_repo, load_definitions, open_store
    from engine.runner import Runner
    from engine.training.trainer import train
    from pipelines.retail.generate import generate
    from pipelines.retail.pipeline import retail

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    caplog.set_level(logging.DEBUG)
    generate(tmp_path / "landing", scale=RETAIL_TEST_SCALE, as_of=RETAIL_AS_OF)
    settings = settings_at(tmp_path)
    assert Runner(retail, settings, reason="canary run").run().succeeded
    store = open_store(str(tmp_path), REPO)
    apply_repo(store, load_definitions(REPO))
    materialize(store, end=RETAIL_END)
    train("retail/churn", settings, repo=str(REPO))

    captured = capfd.readouterr()
    assert _leaks(caplog.text + captured.out + captured.err) == []
    assert findings(tmp_path, MARKERS) == []
    assert (tmp_path / "_meta" / "mlflow" / "mlflow.db").is_file()
