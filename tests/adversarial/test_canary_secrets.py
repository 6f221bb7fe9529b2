"""Canary credentials through a whole run on a private Ray instance: no file the run or Ray writes holds them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

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
