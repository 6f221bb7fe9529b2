"""The installed `medallion` command on a fresh root: `demo` builds fresh data once, printing nothing of the
libraries it runs on, and refuses a used root; `generate` is deterministic for an as-of date and never replaces a
landing file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

MEDALLION = str(Path(sys.executable).parent / "medallion")
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "MEDALLION__RAY__NUM_CPUS": "2"}
SCALE = "0.02"


def medallion(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MEDALLION, "--root", str(root), *args], capture_output=True, text=True, env=ENV,
                          timeout=600)


def landing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "landing").rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    done = medallion(root, "demo", "--scale", SCALE)
    assert done.returncode == 0, done.stdout + done.stderr
    foreign = [line for line in done.stderr.splitlines() if not line.startswith(("WARNING engine.", "ERROR engine."))]
    assert foreign == [], "without --verbose, stderr holds the engine's records only"
    assert not re.search(r"available CPUs|deprecat|experimental|Warning:|it/s\]", done.stdout + done.stderr)
    return root


def test_status_right_after_the_demo_is_fresh(demo_root: Path) -> None:
    shown = medallion(demo_root, "status", "--late")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "fresh" in shown.stdout and "late" not in shown.stdout, shown.stdout


def test_a_second_demo_on_the_root_is_refused_and_changes_nothing(demo_root: Path) -> None:
    before = landing(demo_root)
    again = medallion(demo_root, "demo", "--scale", "0.05")
    assert again.returncode == 1
    assert again.stderr.strip() == (f"error: {demo_root} already holds a lakehouse; use --root with a new folder, "
                                    "or run `medallion run retail` to process new files")
    assert landing(demo_root) == before


def test_generate_is_deterministic_for_an_as_of_date_and_ends_on_it(tmp_path: Path) -> None:
    for name in ("a", "b"):
        done = medallion(tmp_path / name, "generate", "--scale", SCALE, "--as-of", "2025-03-10")
        assert done.returncode == 0, done.stderr
    files = landing(tmp_path / "a")
    assert files and files == landing(tmp_path / "b")
    events = [json.loads(line) for path, data in files.items() if path.startswith("landing/events/")
              for line in data.decode().splitlines()]
    days = {event["event_ts"][:10] for event in events if event["event_ts"] != "not-a-date"}
    assert min(days) >= "2024-10-12" and max(days) == "2025-03-10"  # the 150 days through the as-of date


def test_generate_never_replaces_a_landing_file(tmp_path: Path) -> None:
    assert medallion(tmp_path, "generate", "--scale", SCALE, "--batch", "1").returncode == 0
    before = landing(tmp_path)
    again = medallion(tmp_path, "generate", "--scale", SCALE, "--seed", "7")
    assert again.returncode == 1
    path = tmp_path / "landing" / "customers" / "customers-0001.jsonl"
    assert again.stderr.startswith(f"error: landing file {path} already exists") and again.stderr.count("\n") == 1
    assert landing(tmp_path) == before


def test_generate_defaults_to_data_ending_today(tmp_path: Path) -> None:
    assert medallion(tmp_path, "generate", "--scale", SCALE).returncode == 0
    events = [json.loads(line) for path in (tmp_path / "landing" / "events").glob("*.jsonl")
              for line in path.read_text().splitlines()]
    newest = max(datetime.fromisoformat(e["event_ts"]) for e in events if e["event_ts"] != "not-a-date")
    today = datetime.now(UTC).date()
    assert today - timedelta(days=2) < newest.date() <= today
