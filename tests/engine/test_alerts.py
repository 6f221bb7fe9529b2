"""Tests of engine.alerts: degradation rules, the log and webhook sinks (against a real local HTTP server),
delivery counting and sinks built from settings."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from engine.alerts import (
    Alert,
    AlertSink,
    LogSink,
    WebhookSink,
    degradations,
    send_alerts,
    sinks_from_settings,
)
from engine.config import load_settings
from engine.errors import ConfigError
from engine.quality.metrics import QUALITY_METRICS_SCHEMA
from engine.quality.results import Action, CheckResult
from tests.receiver import Receiver

CREATED_AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
METRICS_SCHEMA = pl.from_arrow(QUALITY_METRICS_SCHEMA.empty_table()).schema  # type: ignore[union-attr]


@pytest.fixture
def closed_port() -> int:
    """A port of 127.0.0.1 nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_alert(severity: str = "critical") -> Alert:
    """A fixed alert."""
    return Alert(
        severity=severity,  # type: ignore[arg-type]
        pipeline="retail",
        table="silver.order_items",
        run_id="run-42",
        check="quantity:greater_than(0)",
        reason="check `quantity:greater_than(0)` of `silver.order_items` failed 3.2% of 5,000 rows",
        rows_checked=5000,
        rows_failed=160,
        failure_rate=0.032,
        created_at=CREATED_AT,
    )


def webhook(url: str, attempts: int = 3) -> WebhookSink:
    """A webhook sink with a short backoff."""
    return WebhookSink(url, timeout_s=2.0, attempts=attempts, backoff_s=0.01)


def result(rows_failed: int, *, rows_checked: int = 5000, action: Action = "warn", threshold: float | None = None,
           table: str = "silver.order_items", check: str = "quantity:greater_than(0)") -> CheckResult:
    """A check result of `silver.order_items` by default."""
    return CheckResult(table, check, action, rows_checked, rows_failed, threshold)


def history(*rates: float, table: str = "silver.order_items", check: str = "quantity:greater_than(0)",
            rows_checked: int = 1000) -> pl.DataFrame:
    """Metrics of earlier runs `run-0`, `run-1`, ... of one check, oldest first, with the given failure rates."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    rows = [
        {"run_id": f"run-{index}", "pipeline": "retail", "table": table, "check": check, "action": "warn",
         "rows_checked": rows_checked, "rows_failed": round(rate * rows_checked), "threshold": None,
         "recorded_at": start + timedelta(hours=index)}
        for index, rate in enumerate(rates)
    ]
    return pl.DataFrame(rows, schema=METRICS_SCHEMA)


NO_HISTORY = history()


# --- Alert ---------------------------------------------------------------------------------------------------


def test_alert_to_json_has_every_field_and_an_iso_timestamp() -> None:
    assert make_alert().to_json() == {
        "severity": "critical",
        "pipeline": "retail",
        "table": "silver.order_items",
        "run_id": "run-42",
        "check": "quantity:greater_than(0)",
        "reason": "check `quantity:greater_than(0)` of `silver.order_items` failed 3.2% of 5,000 rows",
        "rows_checked": 5000,
        "rows_failed": 160,
        "failure_rate": 0.032,
        "created_at": "2025-01-02T03:04:05+00:00",
    }


# --- degradations ---------------------------------------------------------------------------------------------


def test_healthy_checks_raise_no_alert() -> None:
    results = [result(0, action="fail", threshold=0.01), result(10, threshold=0.01, check="other"),
               result(0, rows_checked=0, action="fail")]
    assert degradations("retail", "run-9", results, NO_HISTORY) == []


def test_failed_check_with_action_fail_is_critical_even_without_threshold() -> None:
    [alert] = degradations("retail", "run-9", [result(1, action="fail")], NO_HISTORY)
    assert alert.severity == "critical"
    assert alert.reason == ("check `quantity:greater_than(0)` of `silver.order_items` failed 0.02% of 5,000 rows "
                            "with action `fail`")
    assert (alert.pipeline, alert.run_id, alert.table, alert.check) == (
        "retail", "run-9", "silver.order_items", "quantity:greater_than(0)")
    assert (alert.rows_checked, alert.rows_failed, alert.failure_rate) == (5000, 1, 1 / 5000)
    assert alert.created_at.tzinfo is UTC
    assert abs(datetime.now(UTC) - alert.created_at) < timedelta(minutes=1)


def test_rate_above_threshold_is_a_warning() -> None:
    [alert] = degradations("retail", "run-9", [result(160, threshold=0.01)], NO_HISTORY)
    assert alert.severity == "warning"
    assert alert.reason == ("check `quantity:greater_than(0)` of `silver.order_items` failed 3.2% of 5,000 rows, "
                            "above its threshold of 1%")


def test_rate_equal_to_threshold_is_not_above_it() -> None:
    assert degradations("retail", "run-9", [result(50, threshold=0.01)], NO_HISTORY) == []


@pytest.mark.parametrize("action", ["warn", "quarantine"])
def test_rate_above_threshold_without_action_fail_stays_a_warning(action: Action) -> None:
    [alert] = degradations("retail", "run-9", [result(51, action=action, threshold=0.01)], NO_HISTORY)
    assert alert.severity == "warning"


def test_rate_above_threshold_with_action_fail_is_one_critical_alert() -> None:
    [alert] = degradations("retail", "run-9", [result(160, action="fail", threshold=0.01)], NO_HISTORY)
    assert alert.severity == "critical"
    assert alert.reason == ("check `quantity:greater_than(0)` of `silver.order_items` failed 3.2% of 5,000 rows "
                            "with action `fail`, above its threshold of 1%")


def test_rate_rising_over_the_previous_runs_is_a_warning() -> None:
    [alert] = degradations("retail", "run-9", [result(100)], history(0.01, 0.005, 0.01))
    assert alert.severity == "warning"
    assert alert.reason == ("check `quantity:greater_than(0)` of `silver.order_items` failed 2% of 5,000 rows, "
                            "up from 0.5% and 1% in the previous 2 runs")


def test_rising_only_compares_with_the_last_runs() -> None:
    assert degradations("retail", "run-9", [result(100)], history(0.5, 0.01, 0.015)) != []
    assert degradations("retail", "run-9", [result(100)], history(0.01, 0.5, 0.015)) == []


def test_rising_needs_enough_history() -> None:
    assert degradations("retail", "run-9", [result(100)], history(0.01)) == []
    assert degradations("retail", "run-9", [result(100)], NO_HISTORY) == []


def test_rising_needs_history_of_the_same_table_and_check() -> None:
    elsewhere = pl.concat([history(0.001, 0.002, table="silver.orders"), history(0.001, 0.002, check="other")])
    assert degradations("retail", "run-9", [result(100)], elsewhere) == []


def test_rising_must_be_strictly_above_every_previous_rate() -> None:
    assert degradations("retail", "run-9", [result(100)], history(0.01, 0.02)) == []


def test_rate_of_zero_is_never_rising() -> None:
    assert degradations("retail", "run-9", [result(0)], history(0.0, 0.0)) == []


def test_rising_runs_sets_how_many_runs_are_compared() -> None:
    results = [result(100)]
    assert degradations("retail", "run-9", results, history(0.01), rising_runs=2) != []
    assert degradations("retail", "run-9", results, history(0.001, 0.01), rising_runs=4) == []
    [alert] = degradations("retail", "run-9", results, history(0.001, 0.002, 0.01), rising_runs=4)
    assert alert.reason.endswith("up from 0.1%, 0.2% and 1% in the previous 3 runs")
    [alert] = degradations("retail", "run-9", results, history(0.01), rising_runs=2)
    assert alert.reason.endswith("up from 1% in the previous run")


def test_rising_runs_below_two_is_rejected() -> None:
    with pytest.raises(ValueError, match="rising_runs"):
        degradations("retail", "run-9", [result(100)], NO_HISTORY, rising_runs=1)


def test_rows_of_the_current_run_in_history_are_ignored() -> None:
    [alert] = degradations("retail", "run-2", [result(100)], history(0.001, 0.002, 0.02))
    assert alert.reason.endswith("up from 0.1% and 0.2% in the previous 2 runs")


def test_all_rules_make_one_alert_with_the_highest_severity_and_every_reason() -> None:
    [alert] = degradations("retail", "run-9", [result(160, action="fail", threshold=0.01)], history(0.01, 0.02))
    assert alert.severity == "critical"
    assert alert.reason == ("check `quantity:greater_than(0)` of `silver.order_items` failed 3.2% of 5,000 rows "
                            "with action `fail`, above its threshold of 1%, up from 1% and 2% in the previous 2 runs")


def test_the_same_check_reported_twice_makes_one_alert() -> None:
    results = [result(60, threshold=0.01), result(1, action="fail")]
    [alert] = degradations("retail", "run-9", results, NO_HISTORY)
    assert alert.severity == "critical"
    assert alert.rows_failed == 1
    assert alert.reason == ("check `quantity:greater_than(0)` of `silver.order_items` failed 0.02% of 5,000 rows "
                            "with action `fail`; check `quantity:greater_than(0)` of `silver.order_items` failed "
                            "1.2% of 5,000 rows, above its threshold of 1%")


def test_one_alert_per_degraded_check() -> None:
    results = [result(60, threshold=0.01), result(1, action="fail", check="known_product"),
               result(60, threshold=0.01, table="silver.orders"), result(0, check="healthy")]
    alerts = degradations("retail", "run-9", results, NO_HISTORY)
    assert [(alert.table, alert.check, alert.severity) for alert in alerts] == [
        ("silver.order_items", "quantity:greater_than(0)", "warning"),
        ("silver.order_items", "known_product", "critical"),
        ("silver.orders", "quantity:greater_than(0)", "warning"),
    ]


# --- LogSink --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("severity", "level"), [("warning", logging.WARNING), ("critical", logging.ERROR)])
def test_log_sink_logs_at_the_alert_severity(severity: str, level: int, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="engine.alerts"):
        assert LogSink().send(make_alert(severity)) is True
    [record] = caplog.records
    assert record.name == "engine.alerts"
    assert record.levelno == level
    assert "silver.order_items" in record.getMessage()
    assert "run-42" in record.getMessage()


# --- WebhookSink ----------------------------------------------------------------------------------------------


def test_webhook_posts_the_alert_as_json(receiver: Receiver) -> None:
    assert webhook(receiver.url).send(make_alert()) is True
    [request] = receiver.requests
    assert request.path == "/hook"
    assert request.headers["Content-Type"] == "application/json"
    assert "Authorization" not in request.headers
    assert json.loads(request.body) == make_alert().to_json()


def test_webhook_retries_server_errors_then_succeeds(receiver: Receiver) -> None:
    receiver.fail_first = 2
    assert webhook(receiver.url, attempts=3).send(make_alert()) is True
    assert len(receiver.requests) == 3
    assert {request.body for request in receiver.requests} == {receiver.requests[0].body}


def test_webhook_gives_up_after_its_attempts(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.fail_first = 5
    with caplog.at_level(logging.ERROR, logger="engine.alerts"):
        assert webhook(receiver.url, attempts=3).send(make_alert()) is False
    assert len(receiver.requests) == 3
    [record] = caplog.records
    assert f"http://127.0.0.1:{receiver.port}/<redacted>: HTTP 500" in record.getMessage()


def test_webhook_does_not_retry_a_client_error(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.status = 400
    with caplog.at_level(logging.ERROR, logger="engine.alerts"):
        assert webhook(receiver.url, attempts=3).send(make_alert()) is False
    assert len(receiver.requests) == 1
    assert "HTTP 400" in caplog.text


def test_webhook_does_not_follow_redirects(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.status = 302
    with caplog.at_level(logging.ERROR, logger="engine.alerts"):
        assert webhook(receiver.url).send(make_alert()) is False
    assert [request.path for request in receiver.requests] == ["/hook"]
    assert "HTTP 302" in caplog.text


def test_webhook_default_backoff_is_short(receiver: Receiver) -> None:
    receiver.fail_first = 1
    assert WebhookSink(receiver.url).send(make_alert()) is True
    assert len(receiver.requests) == 2


def test_webhook_sends_url_credentials_as_basic_auth_and_keeps_the_query(receiver: Receiver) -> None:
    url = f"http://user:secret@127.0.0.1:{receiver.port}/hook?token=abc"
    assert webhook(url).send(make_alert()) is True
    [request] = receiver.requests
    assert request.path == "/hook?token=abc"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"user:secret").decode()


def test_webhook_to_a_closed_port_returns_false_and_logs_no_secret(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Slack and Discord webhooks carry their token in the path: the URL is logged without it."""
    url = f"http://user:secret@127.0.0.1:{closed_port}/api/webhooks/123/PATHTOKEN?token=abc#frag"
    with caplog.at_level(logging.DEBUG):
        assert webhook(url, attempts=2).send(make_alert()) is False
    [record] = [r for r in caplog.records if r.name == "engine.alerts"]
    assert f"to webhook http://127.0.0.1:{closed_port}/<redacted>: Connection refused" in record.getMessage()
    for secret in ("secret", "user", "webhooks", "123", "PATHTOKEN", "token", "abc", "frag", "?"):
        assert secret not in caplog.text


def test_a_refused_webhook_url_is_named_without_its_secrets() -> None:
    with pytest.raises(ConfigError) as refused:
        WebhookSink("ftp://user:secret@hooks.example.com/services/T000/PATHTOKEN?token=abc")
    assert str(refused.value).startswith("alert webhook `ftp://hooks.example.com/<redacted>` is not")
    for secret in ("secret", "user", "T000", "PATHTOKEN", "token", "abc"):
        assert secret not in str(refused.value)


def test_webhook_timeout_returns_false(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.hang = True
    with caplog.at_level(logging.ERROR, logger="engine.alerts"):
        assert WebhookSink(receiver.url, timeout_s=0.2, attempts=1).send(make_alert()) is False
    assert "timed out" in caplog.text


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/hook", "file:///etc/passwd", "not a url", "http:///hook"])
def test_webhook_rejects_urls_that_are_not_http(url: str) -> None:
    with pytest.raises(ConfigError, match="alerts.webhook_url"):
        WebhookSink(url)


# --- send_alerts and sinks_from_settings ----------------------------------------------------------------------


class RaisingSink:
    """A misbehaving sink."""

    def send(self, alert: Alert) -> bool:
        raise RuntimeError("boom")


def test_send_alerts_counts_successful_deliveries(receiver: Receiver, closed_port: int) -> None:
    sinks: list[AlertSink] = [LogSink(), webhook(receiver.url),
                              webhook(f"http://127.0.0.1:{closed_port}/hook", attempts=1), RaisingSink()]
    assert send_alerts([make_alert(), make_alert("warning")], sinks) == 4
    assert len(receiver.requests) == 2
    assert send_alerts([], sinks) == 0


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MEDALLION variables from the outer environment, and a working directory without medallion.yaml."""
    for name in list(os.environ):
        if name.upper().startswith("MEDALLION"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("clean_environment")
def test_default_settings_give_the_log_sink_only() -> None:
    settings = load_settings()
    assert (settings.alerts.webhook_url, settings.alerts.webhook_timeout_s, settings.alerts.rising_runs) == (
        None, 5.0, 3)
    assert [type(sink) for sink in sinks_from_settings(settings.alerts)] == [LogSink]


@pytest.mark.usefixtures("clean_environment")
def test_webhook_url_from_environment_reaches_the_sinks(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDALLION__ALERTS__WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("MEDALLION__ALERTS__WEBHOOK_TIMEOUT_S", "2.5")
    sinks = sinks_from_settings(load_settings().alerts)
    assert [type(sink) for sink in sinks] == [LogSink, WebhookSink]
    assert send_alerts([make_alert()], sinks) == 2
    [request] = receiver.requests
    assert json.loads(request.body) == make_alert().to_json()


@pytest.mark.usefixtures("clean_environment")
@pytest.mark.parametrize(("variable", "value"), [("RISING_RUNS", "1"), ("WEBHOOK_TIMEOUT_S", "0")])
def test_invalid_alert_settings_are_rejected(variable: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"MEDALLION__ALERTS__{variable}", value)
    with pytest.raises(ConfigError, match=f"MEDALLION__ALERTS__{variable}"):
        load_settings()
