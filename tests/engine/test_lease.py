"""The run lease: one holder at a time, refusals that name the holder, safe take-overs of dead holders."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from engine.errors import LeaseHeld, LeaseLost
from engine.layout import Layout
from engine.lease import RunLease
from engine.storage import create_only
from tests.conftest import lease_held_elsewhere


def lease(root: Path, **options: float) -> RunLease:
    return RunLease(Layout.at(str(root)), "shop", **options)


def generations(root: Path) -> list[dict[str, object]]:
    folder = root / "_meta" / "leases" / "shop"
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def test_of_many_concurrent_creators_exactly_one_creates_the_file(tmp_path: Path) -> None:
    target = str(tmp_path / "lease" / "000001.json")
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def create(index: int) -> None:
        barrier.wait()
        results.append(create_only(target, f"writer {index}".encode()))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert (tmp_path / "lease" / "000001.json").read_text().startswith("writer ")
    assert [p.name for p in (tmp_path / "lease").iterdir()] == ["000001.json"]


def test_a_second_run_is_refused_with_the_holder_named_until_the_first_releases(tmp_path: Path) -> None:
    first = lease(tmp_path)
    first.acquire("run-1")
    with pytest.raises(LeaseHeld) as refused:
        lease(tmp_path).acquire("run-2")
    message = str(refused.value)
    assert "run-1" in message and "--take-over" in message and "pid" in message and "\n" not in message
    first.release()
    second = lease(tmp_path)
    second.acquire("run-2")
    assert [g["run_id"] for g in generations(tmp_path)] == ["run-1", "run-2"]
    second.release()
    assert generations(tmp_path)[-1]["released"] is True


def test_the_lease_of_a_killed_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    with lease_held_elsewhere(tmp_path, "shop", "run-1") as holder:
        with pytest.raises(LeaseHeld):
            lease(tmp_path).acquire("run-2")
        holder.kill()
        holder.wait()
        taker = lease(tmp_path)
        taker.acquire("run-2")
        assert [g["run_id"] for g in generations(tmp_path)] == ["run-1", "run-2"]
        taker.release()


def test_a_silent_holder_is_taken_over_after_the_timeout_and_learns_it_lost(tmp_path: Path) -> None:
    first = lease(tmp_path, timeout_s=60, heartbeat_s=3600)
    first.acquire("run-1")
    path = next((tmp_path / "_meta" / "leases" / "shop").glob("*.json"))
    silent = json.loads(path.read_text()) | {"heartbeat_at": time.time() - 61, "host": "another-host"}
    path.write_text(json.dumps(silent))
    taker = lease(tmp_path)
    taker.acquire("run-2")
    with pytest.raises(LeaseLost, match="run-2"):
        first.check()
    first.release()
    assert generations(tmp_path)[-1] == generations(tmp_path)[-1] | {"run_id": "run-2", "released": False}
    taker.release()


def test_a_live_holder_elsewhere_is_only_taken_over_when_asked(tmp_path: Path) -> None:
    first = lease(tmp_path, heartbeat_s=3600)
    first.acquire("run-1")
    path = next((tmp_path / "_meta" / "leases" / "shop").glob("*.json"))
    path.write_text(json.dumps(json.loads(path.read_text()) | {"host": "another-host"}))
    with pytest.raises(LeaseHeld, match="another-host"):
        lease(tmp_path).acquire("run-2")
    taker = lease(tmp_path)
    taker.acquire("run-2", take_over=True)
    with pytest.raises(LeaseLost):
        first.check()
    taker.release()
    first.release()


def test_the_heartbeat_keeps_the_lease_alive(tmp_path: Path) -> None:
    held = lease(tmp_path, timeout_s=0.4, heartbeat_s=0.05)
    held.acquire("run-1")
    beats = {generations(tmp_path)[-1]["heartbeat_at"]}
    deadline = time.monotonic() + 30
    while len(beats) < 3 and time.monotonic() < deadline:
        beats.add(generations(tmp_path)[-1]["heartbeat_at"])
    assert len(beats) >= 3
    held.release()
