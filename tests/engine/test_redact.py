"""Secrets never reach a log record or an error message: URLs are shown without credentials, query, fragment
(and without the path when it may carry a token), and configured secrets are replaced in every log record,
also in what libraries log about their own configuration (the OpenLineage HTTP transport at DEBUG)."""

from __future__ import annotations

import io
import logging
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine import logs
from engine.config import load_settings
from engine.layout import Layout
from engine.lineage import events
from engine.redact import REDACTED, describe_error, hide, redact_text, redact_url
from engine.runlog import RunRecord


def token() -> str:
    """A canary secret no other test uses."""
    return f"canary{uuid.uuid4().hex}"


@pytest.fixture
def closed_port() -> int:
    """A port of 127.0.0.1 nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(("url", "shown", "shown_without_path"), [
    ("https://hooks.slack.com/services/T000/B000/XXXX", "https://hooks.slack.com/services/T000/B000/XXXX",
     f"https://hooks.slack.com/{REDACTED}"),
    ("https://discord.com/api/webhooks/123/TOKEN", "https://discord.com/api/webhooks/123/TOKEN",
     f"https://discord.com/{REDACTED}"),
    ("postgresql://user:pass@db:5432/lake", "postgresql://db:5432/lake", f"postgresql://db:5432/{REDACTED}"),
    ("https://tok@host/hook?token=abc#frag", "https://host/hook", f"https://host/{REDACTED}"),
    ("http://u:p@[::1]:8080/a/b?x=1", "http://[::1]:8080/a/b", f"http://[::1]:8080/{REDACTED}"),
    ("http://[fe80::1]/", "http://[fe80::1]/", "http://[fe80::1]/"),
    ("https://host", "https://host", "https://host"),
    ("sqlite:////tmp/lake/_meta/mlflow/mlflow.db", "sqlite:////tmp/lake/_meta/mlflow/mlflow.db",
     f"sqlite:///{REDACTED}"),
    ("http://[::1/x?token=abc", f"http://{REDACTED}", f"http://{REDACTED}"),
    ("http://user:pa#ss@host/x", f"http://{REDACTED}", f"http://{REDACTED}"),
    ("http://user:12/ab@host/x", f"http://{REDACTED}", f"http://{REDACTED}"),
    ("auto", "auto", REDACTED),
    ("10.0.0.1:6379", "10.0.0.1:6379", REDACTED),
    ("/tmp/lakehouse", "/tmp/lakehouse", REDACTED),
])
def test_urls_are_shown_without_credentials_query_fragment_and_optionally_path(url: str, shown: str,
                                                                               shown_without_path: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(url, secret_path=True) == shown_without_path


def test_text_loses_url_credentials_and_hidden_values() -> None:
    secret = token()
    hide(secret)

    text = redact_text(f"at https://user:{secret}x@host/path and postgresql://admin@db/x, key {secret}, a@b.c")

    assert text == f"at https://host/path and postgresql://db/x, key {REDACTED}, a@b.c"


def test_a_hidden_url_hides_its_credentials_query_fragment_and_token_path_but_not_its_host() -> None:
    user, password, query, path, alone = token(), token(), token(), token(), token()
    hide(f"https://{user}:{password}@hooks.example.com/services/{path}?t={query}#{query}", secret_path=True)
    hide(f"https://{alone}@hooks.example.com/")

    text = redact_text(f"login {user}:{password}, password {password}, query t={query}, path /services/{path}, "
                       f"token {alone}, host hooks.example.com")

    for part in (user, password, query, path, alone):
        assert part not in text
    assert "hooks.example.com" in text


def test_short_values_are_not_hidden() -> None:
    hide("abc")
    assert redact_text("abc") == "abc"


def test_errors_are_described_without_their_url(closed_port: int) -> None:
    import requests

    with pytest.raises(requests.ConnectionError) as refused:
        requests.get(f"http://user:secret@127.0.0.1:{closed_port}/hook/TOKEN?token=abc", timeout=5)

    assert describe_error(refused.value) == "Connection refused"
    assert describe_error(TimeoutError()) == "timed out"
    assert describe_error(ValueError("https://host/TOKEN")) == "ValueError"


def test_every_log_record_has_hidden_values_and_url_credentials_replaced(caplog: pytest.LogCaptureFixture) -> None:
    secret = token()
    hide(secret)
    logger = logging.getLogger("some.library")

    with caplog.at_level(logging.DEBUG):
        logger.debug("config: api_key=%s url=%s", secret, "https://user:pw1234@host/x")
        try:
            raise RuntimeError(f"refused with {secret}")
        except RuntimeError:
            logger.exception("failed")

    assert secret not in caplog.text and "pw1234" not in caplog.text
    assert f"api_key={REDACTED} url=https://host/x" in caplog.text
    assert "RuntimeError: refused with" in caplog.text


def test_the_json_log_shows_a_redacted_exception(capsys: pytest.CaptureFixture[str]) -> None:
    secret = token()
    hide(secret)
    handler = logs.configure(logs.JSON, logging.INFO)
    try:
        try:
            raise RuntimeError(f"refused with {secret}")
        except RuntimeError:
            logging.getLogger("some.library").exception("failed")
    finally:
        logging.getLogger().removeHandler(handler)

    err = capsys.readouterr().err
    assert "refused with" in err and secret not in err


def test_openlineage_over_http_logs_no_secret_at_debug(tmp_path: Path, closed_port: int,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The HTTP transport logs its URL and whole configuration at DEBUG, and a failed POST names its URL."""
    user, password, path, query, key = token(), token(), token(), token(), token()
    url = f"http://{user}:{password}@127.0.0.1:{closed_port}/{path}/?token={query}"
    settings = load_settings(overrides={"storage": {"root": str(tmp_path)}, "lineage": {
        "transport": "http", "url": url, "api_key": key, "timeout_s": 1}})
    now = datetime.now(UTC)
    record = RunRecord("run-1", "shop", "silver.orders", "succeeded", now, now, output_version=1)

    with caplog.at_level(logging.DEBUG):
        assert events.emit(settings.lineage, Layout.at(str(tmp_path)), [record]) == 0

    assert "Constructing OpenLineage transport" in caplog.text
    assert f"were not sent to http://127.0.0.1:{closed_port}/{REDACTED} (ConnectionError: Connection refused)" \
        in caplog.text
    for secret in (user, password, path, query, key):
        assert secret not in caplog.text


def test_a_library_logging_before_the_settings_exist_is_redacted_once_they_do(tmp_path: Path) -> None:
    """Secrets of the settings are hidden from every logger's records as soon as the settings are loaded."""
    password = token()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("another.library")
    logger.addHandler(handler)
    try:
        load_settings(overrides={"storage": {"root": str(tmp_path),
                                             "iceberg_catalog_uri": f"postgresql://lake:{password}@db/catalog"}})
        logger.warning("connecting with password %s", password)
    finally:
        logger.removeHandler(handler)

    assert stream.getvalue() == f"connecting with password {REDACTED}\n"


def test_a_user_name_alone_is_not_hidden_but_a_token_used_as_one_is() -> None:
    token = "ghp" + "x7" * 12
    hide("postgresql+psycopg://root@127.0.0.1:5432/catalog")
    hide(f"https://{token}@github.example/repo.git")
    assert redact_text("backup `/tmp/pytest-of-root/backup` is incomplete") == \
        "backup `/tmp/pytest-of-root/backup` is incomplete"
    assert token not in redact_text(f"cloning with {token}")
