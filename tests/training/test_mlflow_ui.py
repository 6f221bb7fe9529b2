"""`medallion mlflow-ui` serves MLflow's UI over the root's tracking store on loopback, or names the tracking
server that serves it."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli.main import main
from engine.training.tracking import ui_command, ui_url

MEDALLION = str(Path(sys.executable).with_name("medallion"))


def test_the_ui_command_line_serves_the_store_on_loopback_by_default() -> None:
    assert ui_command("sqlite:////lake/_meta/mlflow/mlflow.db") == [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", "sqlite:////lake/_meta/mlflow/mlflow.db",
        "--registry-store-uri", "sqlite:////lake/_meta/mlflow/mlflow.db", "--host", "127.0.0.1", "--port", "5000",
        "--workers", "1"]
    assert ui_url() == "http://127.0.0.1:5000"
    assert ui_url("::1", 8080) == "http://[::1]:8080"


def test_a_root_with_nothing_tracked_or_a_tracking_server_starts_nothing(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    empty = CliRunner().invoke(main, ["--root", str(tmp_path), "mlflow-ui"])
    assert empty.exit_code == 1
    assert empty.output.strip() == (f"error: nothing tracked under {tmp_path} yet; run `medallion train` first, or "
                                    "give --tracking-uri")
    served = CliRunner().invoke(main, ["--root", str(tmp_path), "mlflow-ui", "--tracking-uri",
                                       "https://ann:secret@mlflow.example.com"])
    assert served.exit_code == 0, served.output
    assert served.output.strip() == "runs are tracked by the server at https://mlflow.example.com; open it in a browser"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except (urllib.error.URLError, OSError, http.client.HTTPException):  # not up yet, or another server's port
        return None


@pytest.mark.slow
def test_the_ui_answers_on_loopback_until_stopped(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/mlflow.db"
    for _ in range(3):  # a free port can be taken by another process before the UI binds it: then another one
        port = free_port()
        process = subprocess.Popen([MEDALLION, "--root", str(tmp_path), "mlflow-ui", "--port", str(port),
                                    "--tracking-uri", store], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   text=True, start_new_session=True, env={**os.environ, "MLFLOW_TRACKING_URI": ""})
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == (f"MLflow UI of {store} on http://127.0.0.1:{port}; stop "
                                                          "with Ctrl-C")
            deadline = time.monotonic() + 120
            while process.poll() is None and answers(f"http://127.0.0.1:{port}/") is None \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
            if process.poll() is None:
                assert answers(f"http://127.0.0.1:{port}/") == 200
                break
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    else:
        pytest.fail("the MLflow UI never stayed up on a free port")
