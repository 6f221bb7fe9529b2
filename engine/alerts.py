"""Quality alerting: find degraded checks in a run and deliver one alert per check to the configured sinks."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import polars as pl

from engine.config import AlertSettings
from engine.errors import ConfigError
from engine.quality.results import CheckResult
from engine.redact import describe_error, redact_url

log = logging.getLogger(__name__)

Severity = Literal["warning", "critical"]
"""`critical` when a check with action `fail` failed, `warning` for any other degradation."""

_RANK: dict[Severity, int] = {"warning": 0, "critical": 1}


@dataclass(frozen=True)
class Alert:
    """One degraded check of one table in one run.

    Attributes:
        severity: `warning` or `critical`.
        reason: one sentence naming the table, the check and what went wrong.
        failure_rate: `rows_failed / rows_checked` (0 when nothing was checked).
        created_at: when the alert was raised, in UTC.
    """

    severity: Severity
    pipeline: str
    table: str
    run_id: str
    check: str
    reason: str
    rows_checked: int
    rows_failed: int
    failure_rate: float
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The alert as a JSON-ready dict, `created_at` in ISO 8601."""
        return {**asdict(self), "created_at": self.created_at.isoformat()}


def degradations(
    pipeline: str,
    run_id: str,
    results: list[CheckResult],
    history: pl.DataFrame,
    *,
    rising_runs: int = 3,
) -> list[Alert]:
    """The alerts a run's check results call for, at most one per (table, check).

    A check is alerted when (a) its action is `fail` and a row failed (critical), (b) its failure rate is
    above its declared threshold (warning, critical with action `fail`), or (c) its failure rate is above
    zero and above the rate of each of the previous `rising_runs - 1` runs of the same (table, check),
    which must all be in `history` (warning). Several findings make one alert: the highest severity, the
    reasons combined.

    Args:
        pipeline: the pipeline that ran.
        run_id: the run the results come from; rows of this run in `history` are ignored.
        results: the checks evaluated in this run.
        history: quality metrics of earlier runs, with the columns of `QUALITY_METRICS_SCHEMA`.
        rising_runs: runs, this one included, over which a failure rate must rise; at least 2.

    Raises:
        ValueError: `rising_runs` is below 2.
    """
    if rising_runs < 2:
        raise ValueError(f"rising_runs must be at least 2, got {rising_runs}")
    previous = _previous_rates(history, run_id, rising_runs - 1)
    created_at = datetime.now(UTC)
    alerts: dict[tuple[str, str], Alert] = {}
    for result in results:
        key = (result.table, result.check)
        alert = _alert_for(pipeline, run_id, result, previous.get(key, []), rising_runs - 1, created_at)
        if alert is not None:
            alerts[key] = _merge(alerts[key], alert) if key in alerts else alert
    return list(alerts.values())


def _previous_rates(history: pl.DataFrame, run_id: str, count: int) -> dict[tuple[str, str], list[float]]:
    """The failure rates of the last `count` earlier runs of every (table, check), oldest first."""
    per_run = (
        history.filter(pl.col("run_id") != run_id)
        .group_by("table", "check", "run_id")
        .agg(pl.col("rows_checked").sum(), pl.col("rows_failed").sum(), pl.col("recorded_at").max())
        .sort("recorded_at")
        .with_columns(
            rate=pl.when(pl.col("rows_checked") > 0)
            .then(pl.col("rows_failed") / pl.col("rows_checked"))
            .otherwise(0.0)
        )
        .group_by("table", "check", maintain_order=True)
        .agg(pl.col("rate").tail(count))
    )
    return {(row["table"], row["check"]): row["rate"] for row in per_run.iter_rows(named=True)}


def _alert_for(
    pipeline: str,
    run_id: str,
    result: CheckResult,
    previous: list[float],
    needed: int,
    created_at: datetime,
) -> Alert | None:
    """The alert `result` calls for, None when the check is healthy."""
    findings = [
        finding
        for finding in (_failed(result), _above_threshold(result), _rising(result, previous, needed))
        if finding is not None
    ]
    if not findings:
        return None
    severity = max((severity for severity, _ in findings), key=_RANK.__getitem__)
    head = (f"check `{result.check}` of `{result.table}` failed {_percent(result.failure_rate)} "
            f"of {result.rows_checked:,} rows")
    return Alert(
        severity=severity,
        pipeline=pipeline,
        table=result.table,
        run_id=run_id,
        check=result.check,
        reason=head + "".join(clause for _, clause in findings),
        rows_checked=result.rows_checked,
        rows_failed=result.rows_failed,
        failure_rate=result.failure_rate,
        created_at=created_at,
    )


def _failed(result: CheckResult) -> tuple[Severity, str] | None:
    """Rule (a): a check with action `fail` rejected at least one row."""
    if result.action == "fail" and result.rows_failed > 0:
        return "critical", " with action `fail`"
    return None


def _above_threshold(result: CheckResult) -> tuple[Severity, str] | None:
    """Rule (b): the failure rate is strictly above the declared threshold."""
    if result.threshold is None or result.failure_rate <= result.threshold:
        return None
    severity: Severity = "critical" if result.action == "fail" else "warning"
    return severity, f", above its threshold of {_percent(result.threshold)}"


def _rising(result: CheckResult, previous: list[float], needed: int) -> tuple[Severity, str] | None:
    """Rule (c): the failure rate is above zero and above each of the `needed` previous runs' rates."""
    rate = result.failure_rate
    if len(previous) < needed or rate <= 0 or any(rate <= earlier for earlier in previous):
        return None
    rates = [_percent(earlier) for earlier in previous]
    listed = rates[0] if len(rates) == 1 else ", ".join(rates[:-1]) + " and " + rates[-1]
    runs = "run" if needed == 1 else f"{needed} runs"
    return "warning", f", up from {listed} in the previous {runs}"


def _merge(first: Alert, second: Alert) -> Alert:
    """One alert for two of the same check: the more severe one, with both reasons."""
    keep, other = (second, first) if _RANK[second.severity] > _RANK[first.severity] else (first, second)
    return replace(keep, reason=f"{keep.reason}; {other.reason}")


def _percent(rate: float) -> str:
    """`rate` (0..1) as a percentage with up to three significant digits, e.g. `3.2%`."""
    return f"{rate * 100:.3g}%"


class AlertSink(Protocol):
    """Somewhere alerts are delivered."""

    def send(self, alert: Alert) -> bool:
        """Deliver `alert`; True when it was delivered. Must not raise."""
        ...


class LogSink:
    """Alerts as log records of the `engine.alerts` logger: WARNING for warnings, ERROR for critical."""

    def send(self, alert: Alert) -> bool:
        """Log `alert`; always True."""
        level = logging.ERROR if alert.severity == "critical" else logging.WARNING
        log.log(level, "quality alert (%s) in pipeline `%s`, run %s: %s",
                alert.severity, alert.pipeline, alert.run_id, alert.reason)
        return True


class WebhookSink:
    """Alerts POSTed as JSON to a webhook, retried on connection errors and 5xx answers.

    Credentials in the URL (`https://user:password@host/...`) are sent as HTTP basic authentication. The URL
    is logged as its scheme and host only (`https://hooks.slack.com/<redacted>`): Slack and Discord webhooks
    carry their token in the path. Redirects are not followed: a 3xx answer is a failed delivery.
    """

    def __init__(self, url: str, timeout_s: float = 5.0, attempts: int = 3, *, backoff_s: float = 0.2) -> None:
        """Check the URL and keep what each delivery needs.

        Args:
            url: an `http` or `https` URL, optionally with credentials and a query string.
            timeout_s: seconds to wait for each attempt.
            attempts: tries per alert, at least 1.
            backoff_s: pause before the second try, doubled before each further one.

        Raises:
            ConfigError: the URL is not http(s) or names no host.
            ValueError: `attempts` is below 1.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"alert webhook `{redact_url(url, secret_path=True)}` is not an http(s) URL; fix "
                              "alerts.webhook_url")
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self._target = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        self._authorization = _basic_authorization(parts.username, parts.password)
        self._shown = redact_url(url, secret_path=True)
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._backoff_s = backoff_s

    def send(self, alert: Alert) -> bool:
        """POST `alert` as JSON; True on a 2xx answer, False (and an error logged) once every try failed."""
        body = json.dumps(alert.to_json()).encode()
        for attempt in range(self._attempts):
            if attempt:
                time.sleep(self._backoff_s * 2 ** (attempt - 1))
            problem, retry = self._post(body)
            if not problem:
                return True
            if not retry:
                break
        log.error("could not deliver %s alert for `%s` check `%s` to webhook %s: %s",
                  alert.severity, alert.table, alert.check, self._shown, problem)
        return False

    def _post(self, body: bytes) -> tuple[str, bool]:
        """One try: what went wrong ("" when delivered) and whether another try may succeed."""
        headers = {"Content-Type": "application/json"}
        if self._authorization:
            headers["Authorization"] = self._authorization
        request = urllib.request.Request(self._target, data=body, method="POST", headers=headers)
        try:
            with _OPENER.open(request, timeout=self._timeout_s):
                return "", False
        except urllib.error.HTTPError as err:
            err.close()
            return f"HTTP {err.code}", err.code >= 500
        except urllib.error.URLError as err:
            return describe_error(err.reason), True
        except (OSError, http.client.HTTPException) as err:
            return describe_error(err), True


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Turns every redirect into an `HTTPError` with the 3xx code."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        """Follow nothing."""
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _basic_authorization(username: str | None, password: str | None) -> str | None:
    """The `Authorization` header value for credentials taken from a URL, None without a user name."""
    if not username:
        return None
    token = base64.b64encode(f"{unquote(username)}:{unquote(password or '')}".encode()).decode()
    return f"Basic {token}"


def send_alerts(alerts: list[Alert], sinks: list[AlertSink]) -> int:
    """Deliver every alert to every sink; the number of successful deliveries.

    A sink that raises counts as a failed delivery and does not stop the others.
    """
    delivered = 0
    for alert in alerts:
        for sink in sinks:
            try:
                delivered += bool(sink.send(alert))
            except Exception:
                log.exception("alert sink %s raised while sending an alert for `%s`",
                              type(sink).__name__, alert.table)
    return delivered


def sinks_from_settings(settings: AlertSettings) -> list[AlertSink]:
    """The log sink, plus a webhook sink when `settings.webhook_url` is set."""
    sinks: list[AlertSink] = [LogSink()]
    if settings.webhook_url:
        sinks.append(WebhookSink(settings.webhook_url.get_secret_value(), timeout_s=settings.webhook_timeout_s))
    return sinks
