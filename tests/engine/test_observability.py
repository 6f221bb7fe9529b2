"""Observability: JSON log lines with the run and table they belong to, Prometheus metrics equal to the run
records (textfile after a one-shot run, `/metrics` of a watch run and of the feature server), and no secret
in the logs."""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import ray
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from engine import logs
from engine.cli.main import main
from engine.config import load_settings
from engine.layout import Layout
from engine.runlog import read_records
from tests.engine.test_runner import build_pipeline, land_orders

REPO = Path(__file__).resolve().parents[2]
SHOP = build_pipeline()
"""The small pipeline of the runner tests, loadable as `tests.engine.test_observability:SHOP`."""
PIPELINE = f"{__name__}:SHOP"
TABLES = [name for name in SHOP.select(None)]
CANARY = "CANARY-OBS-314"


def medallion(root: Path, *args: str, log_options: tuple[str, ...] = ()) -> list[str]:
    """The command line of `medallion ... run` of SHOP in its own process, attached to this process's Ray."""
    return [str(Path(sys.executable).parent / "medallion"), *log_options, "--root", str(root),
            "--address", ray.get_runtime_context().gcs_address, "run", PIPELINE, *args]


def environment(**extra: str) -> dict[str, str]:
    return os.environ | {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)} | extra


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition by (name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def assert_rows_match_records(found: dict[tuple[str, frozenset[tuple[str, str]]], float], root: Path) -> None:
    """The row counters equal the sums of the run records of every table."""
    records = read_records(Layout.at(str(root)).runs())
    assert set(records["table"].to_list()) == set(TABLES)
    for table in TABLES:
        mine = records.filter(pl.col("table") == table)
        for kind, column in (("in", "rows_in"), ("written", "rows_written"), ("quarantined", "rows_quarantined"),
                             ("duplicate", "rows_duplicate")):
            assert value(found, "medallion_rows_processed_total", pipeline="shop", table=table, kind=kind) == \
                mine[column].sum(), (table, kind)


@dataclass(frozen=True)
class OneShot:
    root: Path
    stderr: str
    metrics: str


@pytest.fixture(scope="module")
def one_shot(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> OneShot:
    """A one-shot `medallion --log-format json --log-level INFO run --metrics-file ...` of SHOP."""
    root = tmp_path_factory.mktemp("one-shot")
    land_orders(root)
    metrics_file = root.parent / f"{root.name}.prom"
    done = subprocess.run(medallion(root, "--metrics-file", str(metrics_file),
                                    log_options=("--log-format", "json", "--log-level", "INFO")),
                          cwd=REPO, env=environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4/4]" in done.stdout
    return OneShot(root, done.stderr, metrics_file.read_text())


def test_json_logs_are_one_object_per_line_with_the_run_and_table(one_shot: OneShot) -> None:
    lines = [json.loads(line) for line in one_shot.stderr.splitlines() if line.strip()]
    assert lines, "nothing was logged"
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"]), line["time"]
    run_id = read_records(Layout.at(str(one_shot.root)).runs())["run_id"].unique().to_list()
    assert len(run_id) == 1
    for table in TABLES:
        mine = [line for line in lines if line.get("table") == table]
        assert mine, f"no log line of {table}"
        assert all(line["run_id"] == run_id[0] and line["pipeline"] == "shop" for line in mine)
        finished = [line for line in mine if line.get("status")]
        assert finished and finished[-1]["level"] == "INFO" and finished[-1]["logger"] == "engine.runner"
    silver = next(line for line in lines if line.get("table") == "silver.orders" and "rows_in" in line)
    assert (silver["rows_in"], silver["rows_written"], silver["rows_quarantined"]) == (5, 2, 1)


def test_the_metrics_file_holds_counters_equal_to_the_run_records(one_shot: OneShot) -> None:
    found = samples(one_shot.metrics)
    assert_rows_match_records(found, one_shot.root)
    assert value(found, "medallion_rows_processed_total", pipeline="shop", table="silver.orders",
                 kind="quarantined") == 1
    assert value(found, "medallion_run_seconds_count", pipeline="shop", status="succeeded") == 1
    for table in TABLES:
        assert value(found, "medallion_table_seconds_count", pipeline="shop", table=table, status="succeeded") == 1
        assert value(found, "medallion_table_last_success_timestamp", pipeline="shop", table=table) > 1.7e9
    commits = sum(v for (name, _), v in found.items() if name == "medallion_commit_seconds_count")
    assert commits >= len(TABLES)
    assert not any(name.startswith("process_") for name, _ in found), "the textfile holds engine metrics only"


def test_a_watch_run_serves_metrics_until_it_is_stopped(ray_local: None, tmp_path: Path) -> None:
    root = tmp_path / "watched"
    land_orders(root)
    output = tmp_path / "watch.out"
    with open(output, "wb") as out:
        process = subprocess.Popen(medallion(root, "--watch", "0.5", "--metrics-port", "0"), cwd=REPO,
                                   env=environment(), stdout=out, stderr=subprocess.STDOUT)
    try:
        port = int(wait_for(lambda: re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics",
                                              output.read_text()), "the metrics endpoint").group(1))

        def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
            assert process.poll() is None, output.read_text()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            assert response.status == 200 and response.getheader("Content-Type").startswith("text/plain")
            found = samples(response.read().decode())
            connection.close()
            first_run = value(found, "medallion_table_runs_total", pipeline="shop", table=TABLES[-1],
                              status="succeeded")
            return found if first_run else None

        found = wait_for(scrape, "the first micro-batch in the metrics")
        assert_rows_match_records(found, root)
        assert value(found, "medallion_table_last_success_timestamp", pipeline="shop", table="gold.after_counts")
        assert any(name.startswith("process_") for name, _ in found)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, output.read_text()
    finally:
        process.kill()


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Undo what `medallion --log-format ...` does to the process's loggers."""
    root = logging.getLogger()
    level = root.level
    yield
    root.removeHandler(logs.configure(logs.HUMAN))
    root.setLevel(level)


@pytest.mark.usefixtures("restored_logging")
def test_a_canary_secret_never_appears_in_json_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDALLION__ALERTS__WEBHOOK_URL", f"http://user:{CANARY}@127.0.0.1:9/hook?token={CANARY}")
    monkeypatch.setenv("MEDALLION__PII__KEY", CANARY)
    monkeypatch.setenv("MEDALLION_LOG_FORMAT", "json")
    result = CliRunner().invoke(main, ["--root", str(tmp_path), "--log-level", "DEBUG", "status"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    shown = next(line for line in lines if line["message"].startswith("settings: "))
    assert shown["level"] == "DEBUG" and "webhook_url" in shown["message"]
    assert CANARY not in result.stderr


@pytest.mark.usefixtures("restored_logging")
def test_json_formatter_renders_context_extras_and_secrets_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDALLION__ALERTS__WEBHOOK_URL", f"http://user:{CANARY}@127.0.0.1:9/hook")
    settings = load_settings()
    handler = logs.configure(logs.JSON, logging.INFO)
    record = logging.LogRecord("engine.runner", logging.WARNING, __file__, 1, "alerts go to %s",
                               (settings.alerts.webhook_url,), None)
    record.alerts = settings.alerts
    with logs.log_context(run_id="r1", pipeline="shop", table="gold.x"):
        assert handler.filter(record)
    line = json.loads(handler.format(record))
    assert (line["run_id"], line["pipeline"], line["table"], line["level"]) == ("r1", "shop", "gold.x", "WARNING")
    assert line["message"] == "alerts go to **********" and "webhook_url=SecretStr('**********')" in line["alerts"]
    assert CANARY not in json.dumps(line)


@pytest.mark.parametrize("libraries", [False, True])
def test_library_records_and_warnings_show_only_when_asked(libraries: bool) -> None:
    library = str(Path(pytest.__file__))  # a file of the installed packages
    handler = logs.configure(logs.HUMAN, logging.INFO, libraries=libraries)
    try:
        def record(name: str, level: int, path: str) -> logging.LogRecord:
            return logging.LogRecord(name, level, path, 1, "message", None, None)

        assert handler.filter(record("engine.runner", logging.WARNING, library))
        assert handler.filter(record("shop.pipeline", logging.WARNING, __file__))
        assert handler.filter(record("ray.data.dataset", logging.ERROR, library))
        assert handler.filter(record("ray.data.dataset", logging.WARNING, library)) is libraries
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            logging.captureWarnings(False)  # pytest records warnings in place of the handler `configure` installed
            logging.captureWarnings(True)
            with CapturedRecords() as captured:
                warnings.warn("is an experimental feature", RuntimeWarning, stacklevel=1)
        assert [handler.filter(r) for r in captured.records] == [libraries]
    finally:
        logging.getLogger().removeHandler(handler)
        logs.configure(logs.HUMAN)


class CapturedRecords(logging.Handler):
    """The records of the `py.warnings` logger (Python warnings) while the block runs."""

    def __enter__(self) -> CapturedRecords:
        self.records: list[logging.LogRecord] = []
        logging.getLogger("py.warnings").addHandler(self)
        return self

    def __exit__(self, *_: object) -> None:
        logging.getLogger("py.warnings").removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_records_of_threads_a_table_started_carry_its_context() -> None:
    seen: list[dict[str, str]] = []
    with logs.log_context(run_id="r2", pipeline="shop"), logs.log_context(table="silver.orders"):
        worker = threading.Thread(target=lambda: seen.append(logs.current_context()))
        worker.start()
        worker.join()
        assert logs.current_context() == {"run_id": "r2", "pipeline": "shop", "table": "silver.orders"}
    assert seen == [{"run_id": "r2", "pipeline": "shop", "table": "silver.orders"}]
    assert logs.current_context() == {}


def test_the_feature_server_answers_metrics_by_path_and_status(tmp_path: Path) -> None:
    import uvicorn

    from engine.features.server import build_app
    from tests.features.conftest import store_over, write_table
    from tests.features.synthetic import customer, customer_rows, customer_view

    write_table(tmp_path, "gold.customer_stats", customer_rows(np.random.default_rng(5)))
    store = store_over(tmp_path, [customer, customer_view()], project="metrics")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    instance = uvicorn.Server(uvicorn.Config(build_app(store), log_level="warning"))
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: instance.started or not thread.is_alive(), "the feature server", timeout=60)
        assert instance.started
        port = listener.getsockname()[1]

        def call(method: str, path: str, body: bytes | None = None) -> tuple[int, str, str]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = (response.status, response.getheader("Content-Type") or "", response.read().decode())
            connection.close()
            return answer

        assert call("GET", "/health")[0] == 200
        assert call("POST", "/get-online-features", b"")[0] == 400
        assert call("POST", "/get-online-features", b"")[0] == 400
        assert call("GET", "/nowhere")[0] == 404
        status, content_type, text = call("GET", "/metrics")
    finally:
        instance.should_exit = True
        thread.join(timeout=30)
    assert status == 200 and content_type.startswith("text/plain")
    found = samples(text)
    requests = "medallion_feature_server_requests_total"
    assert value(found, requests, path="/health", status="200") == 1
    assert value(found, requests, path="/get-online-features", status="400") == 2
    assert value(found, requests, path="other", status="404") == 1
    assert value(found, "medallion_feature_server_request_seconds_count", path="/get-online-features",
                 status="400") == 2


def test_run_shows_a_progress_bar_on_a_terminal_and_nothing_when_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    from datetime import UTC, datetime

    from rich.console import Console

    from engine.cli import common, running
    from engine.runlog import RunRecord

    def records() -> list[RunRecord]:
        now = datetime.now(UTC)
        return [RunRecord("r3", "shop", table, "unchanged" if table == "gold.after_counts" else "succeeded", now, now,
                          rows_in=5, rows_written=5) for table in TABLES]

    def show(quiet: bool, terminal: bool) -> tuple[str, str]:
        out, err = io.StringIO(), io.StringIO()
        for module in (common, running):
            monkeypatch.setattr(module, "console", Console(file=out, width=160, force_terminal=terminal))
            monkeypatch.setattr(module, "errors", Console(file=err, width=160, force_terminal=terminal))
        with common.display(len(TABLES), quiet) as status:
            report = running._progress(len(TABLES), status, quiet)
            for record in records():
                report(record)
            if status is not None:
                assert isinstance(status, common.Bar) == terminal
                if terminal:
                    assert status.progress.tasks[0].completed == len(TABLES)
        return out.getvalue(), err.getvalue()

    out, err = show(quiet=False, terminal=True)
    assert "4/4" in err and "gold.after_counts" in out
    out, err = show(quiet=True, terminal=True)
    assert err == "" and "gold.status_counts" in out and "gold.after_counts" not in out
    out, err = show(quiet=False, terminal=False)
    assert err == "" and "[ 4/4]" in out


def test_observe_counts_rows_checks_durations_and_the_last_success() -> None:
    from datetime import UTC, datetime, timedelta

    from engine import metrics
    from engine.quality.results import CheckResult
    from engine.run.outcome import RunResult
    from engine.run.records import observe, observe_run
    from engine.runlog import RunRecord

    finished = datetime(2026, 11, 26, 9, tzinfo=UTC)
    checks = [CheckResult("silver.x", "amount:greater_than(0)", "quarantine", 10, 3),
              CheckResult("silver.x", "known_product", "warn", 10, 0)]
    ok = RunRecord("r4", "unit", "silver.x", "succeeded", finished - timedelta(seconds=2), finished, rows_in=10,
                   rows_written=7, rows_quarantined=3, checks=checks)
    failed = RunRecord("r5", "unit", "silver.x", "failed", finished, finished + timedelta(seconds=1), error="boom")
    for record in (ok, failed):
        observe(record, on_record=lambda _: None)
    observe_run(RunResult("r5", "unit", [failed]), 1.5)

    found = samples(metrics.exposition().decode())
    assert value(found, "medallion_rows_processed_total", pipeline="unit", table="silver.x", kind="written") == 7
    assert value(found, "medallion_rows_processed_total", pipeline="unit", table="silver.x", kind="quarantined") == 3
    assert value(found, "medallion_quality_failures_total", pipeline="unit", table="silver.x",
                 check="amount:greater_than(0)") == 3
    assert value(found, "medallion_quality_failures_total", pipeline="unit", table="silver.x",
                 check="known_product") == 0
    assert value(found, "medallion_table_runs_total", pipeline="unit", table="silver.x", status="failed") == 1
    assert value(found, "medallion_table_seconds_sum", pipeline="unit", table="silver.x", status="succeeded") == 2
    assert value(found, "medallion_table_last_success_timestamp", pipeline="unit",
                 table="silver.x") == finished.timestamp()
    assert value(found, "medallion_run_seconds_count", pipeline="unit", status="failed") == 1
