"""Canary secrets through runs and commands on a private Ray instance: no file, log or output holds them."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.adversarial.canary_pipeline import land
from tests.engine.cdc_pipeline import PIPELINE, REPO, write_batch

pytestmark = pytest.mark.adversarial


def files_holding(folder: Path, secret: bytes) -> list[str]:
    return sorted(str(path) for path in folder.rglob("*") if path.is_file() and secret in path.read_bytes())


def test_storage_credentials_reach_no_file_of_a_run_on_a_private_ray(tmp_path: Path) -> None:
    """Attacks: "no secret in any log, file or runtime env", with canary AWS credentials in the environment of
    `medallion run` on a private Ray instance: its workers inherit them, and nothing Ray or the engine writes
    (Ray's session logs, the runtime env agent's log, the tables, run records, lineage) holds them."""
    key_id, secret = f"AKIA{uuid.uuid4().hex[:16].upper()}", f"canary-{uuid.uuid4().hex}"
    write_batch(tmp_path / "root" / "landing", 1)
    ray_temp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))} | {
        "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret, "RAY_AUTH_MODE": "disabled",
        "RAY_TMPDIR": str(ray_temp), "PYTHONPATH": str(REPO), "MEDALLION__RAY__NUM_CPUS": "1"}
    try:
        ran = subprocess.run([str(Path(sys.executable).parent / "medallion"), "--root", str(tmp_path / "root"),
                              "run", PIPELINE], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "5 table(s) committed" in ran.stdout
        logs = list(ray_temp.rglob("runtime_env_agent*.log"))
        assert logs, f"the private instance kept its session under {ray_temp}"
        for canary in (key_id, secret):
            assert canary not in ran.stdout + ran.stderr
            assert files_holding(ray_temp, canary.encode()) == []
            assert files_holding(tmp_path / "root", canary.encode()) == []
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_and_ask(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Start `medallion features serve`, ask it for its health and one bad request, stop it; its output."""
    port = closed_port()
    server = subprocess.Popen([*command, "serve", "--port", str(port)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the feature server did not start"
                time.sleep(0.5)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/get-online-features", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 415
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=60)
    return output


def test_no_secret_the_engine_reads_reaches_any_file_log_or_output(tmp_path: Path) -> None:
    """Attacks: "no secret in any log, file or error message", with a canary value for every secret the engine
    reads: the PII and encryption keys (and a previous key), AWS keys, a webhook URL with a token in its userinfo,
    path and query, an OpenLineage URL with a token in its query and an API key. It runs the demo (tokenizing,
    alerting to the webhook, sending lineage, both failing on closed ports), a run that encrypts and then fails a
    table, the read commands and the feature server, at DEBUG; then scans every file under the root, Ray's session folders and all
    output."""
    mark = uuid.uuid4().hex
    pii_key, encryption_key, previous_key = secrets.token_hex(32), secrets.token_hex(32), secrets.token_hex(32)
    webhook = (f"http://alerts:pw{mark}w@127.0.0.1:{closed_port()}/services/T000/B000/path{mark}p"
               f"?token=query{mark}q")
    lineage = f"http://127.0.0.1:{closed_port()}/api?api_token=lineage{mark}l"
    canaries = {"AWS_ACCESS_KEY_ID": f"AKIA{mark[:16].upper()}", "AWS_SECRET_ACCESS_KEY": f"aws{mark}s",
                "MEDALLION_PII_KEY": pii_key, "MEDALLION__ENCRYPTION__KEY": encryption_key,
                "MEDALLION__ENCRYPTION__PREVIOUS_KEYS": json.dumps([previous_key]),
                "MEDALLION__ALERTS__WEBHOOK_URL": webhook, "MEDALLION__LINEAGE__TRANSPORT": "http",
                "MEDALLION__LINEAGE__URL": lineage, "MEDALLION__LINEAGE__API_KEY": f"olkey{mark}k"}
    forbidden = [canaries["AWS_ACCESS_KEY_ID"], canaries["AWS_SECRET_ACCESS_KEY"], pii_key, encryption_key,
                 previous_key, f"pw{mark}w", f"path{mark}p", f"query{mark}q", f"lineage{mark}l", f"olkey{mark}k"]
    forbidden += [base64.b64encode(bytes.fromhex(key)).decode() for key in (pii_key, encryption_key, previous_key)]
    root = tmp_path / "root"
    ray_temp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS", "MEDALLION"))} | {
        "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(ray_temp), "PYTHONPATH": str(REPO),
        "MEDALLION__RAY__NUM_CPUS": "1"} | canaries
    medallion = [str(Path(sys.executable).parent / "medallion"), "--root", str(root), "--log-level", "debug", "--verbose"]
    commands = [(["demo", "--scale", "0.02"], 0),
                (["run", "tests.adversarial.canary_pipeline:pipeline"], 1),
                (["show", "silver.people", "--decrypt"], 0), (["show", "quarantine.silver.customers"], 0),
                (["status"], 0), (["catalog"], 0), (["quality"], 0), (["lineage", "silver.customers"], 0),
                (["report", "--out", str(root / "report.html")], 0), (["history", "silver.people"], 0)]
    features = ["features", "--repo", str(REPO / "features")]
    commands += [([*features, "apply"], 0), ([*features, "materialize"], 0)]
    output = []
    try:
        for arguments, expected in commands:
            if arguments[0] == "run":
                land(root / "landing")  # beside the demo's, which refuses a root that holds landing files
            done = subprocess.run([*medallion, *arguments], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=600)
            output.append(done.stdout + done.stderr)
            assert done.returncode == expected, f"{arguments}: {done.stdout}{done.stderr}"
        output.append(serve_and_ask([*medallion, *features], tmp_path, env))
        text = "\n".join(output)
        assert "alert" in text.lower() and "not sent" in text, "the webhook and lineage deliveries were tried"
        assert "+15550000000" in text, "show --decrypt read the encrypted phone numbers back"
        assert list(ray_temp.rglob("*.log")), f"the runs kept their Ray sessions under {ray_temp}"
        for canary in forbidden:
            assert canary not in text, f"a canary secret in the output: {canary[:12]}..."
            assert files_holding(root, canary.encode()) == []
            assert files_holding(ray_temp, canary.encode()) == []
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)
