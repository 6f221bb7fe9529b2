"""Finding the Ray cluster to use, and reusing a Ray that is already running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from ray._private import node as ray_node
from ray._private import ray_constants

from engine.config import RaySettings
from engine.runtime import ray_session, resolve_address


def test_the_explicit_address_wins_then_the_environment_then_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    configured = RaySettings(address="configured:6379")
    monkeypatch.setenv("RAY_ADDRESS", "from-env:6379")
    assert resolve_address(configured, "explicit:6379") == "explicit:6379"
    assert resolve_address(configured) == "from-env:6379"
    monkeypatch.delenv("RAY_ADDRESS")
    assert resolve_address(configured) == "configured:6379"
    assert resolve_address(RaySettings()) is None


def test_a_running_ray_is_reused_and_left_running(ray_local: None) -> None:
    before = ray.get_runtime_context().get_node_id()
    with ray_session(RaySettings(verbose=False)):
        assert ray.get_runtime_context().get_node_id() == before
        assert ray.data.DataContext.get_current().enable_progress_bars is False
    assert ray.is_initialized()


def test_the_private_instance_takes_a_loopback_address_and_leaves_cluster_mode_as_it_was(ray_local: None) -> None:
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert ray_constants.ENABLE_RAY_CLUSTER == ray_constants.env_bool(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR,
                                                                      not ray_constants.IS_WINDOWS_OR_OSX)


PROCESSES_OF_A_PRIVATE_INSTANCE = """
import json, logging, os, sys
os.environ["RAY_AUTH_MODE"] = "disabled"
import ray
from engine.runtime import start_private_ray
start_private_ray(num_cpus=1, logging_level=logging.ERROR, log_to_driver=sys.argv[1] == "workers-output")
processes = sorted(ray._private.worker._global_node.all_processes)
print(json.dumps({"processes": processes, "answer": ray.get(ray.remote(lambda: 42).remote())}))
ray.shutdown()
"""


@pytest.mark.parametrize("output", ["workers-output", "quiet"])
def test_the_private_instance_runs_no_process_it_does_not_use(output: str) -> None:
    """No API server (usage statistics only, with the dashboard off), no autoscaler monitor, and a log monitor
    only when the workers' output goes to the driver; tasks still run."""
    started = subprocess.run([sys.executable, "-c", PROCESSES_OF_A_PRIVATE_INSTANCE, output], capture_output=True,
                             text=True, timeout=120)
    assert started.returncode == 0, started.stderr[-2000:]
    seen = json.loads(started.stdout.strip().splitlines()[-1])
    assert seen["answer"] == 42
    assert {ray_constants.PROCESS_TYPE_GCS_SERVER, ray_constants.PROCESS_TYPE_RAYLET} <= set(seen["processes"])
    assert not {ray_constants.PROCESS_TYPE_DASHBOARD, ray_constants.PROCESS_TYPE_MONITOR} & set(seen["processes"])
    assert (ray_constants.PROCESS_TYPE_LOG_MONITOR in seen["processes"]) == (output == "workers-output")


def test_starting_a_private_instance_leaves_rays_node_class_as_it_was(ray_local: None) -> None:
    """The processes left out are left out of that start alone: a cluster node started later has them all."""
    for name in ("start_api_server", "start_monitor", "start_log_monitor"):
        assert getattr(ray_node.Node, name).__qualname__ == f"Node.{name}"


IDLE_KILL_THRESHOLD_S = 1.0
"""How long Ray lets a worker sit idle before it stops it, when it keeps fewer idle workers than it has
(`idle_worker_killing_time_threshold_ms`, checked every 0.2 s)."""


def _arrive(folder: Path, parties: int) -> int:
    """In a task: mark its arrival in `folder` and wait until `parties` tasks have arrived there (so each runs in a
    worker of its own); this worker's process id."""
    folder.mkdir(exist_ok=True)
    (folder / str(os.getpid())).touch()
    while len(list(folder.iterdir())) < parties:
        time.sleep(0.01)
    return os.getpid()


def _hold_until(release: Path, started: Path) -> int:
    """In a task: mark its start in `started`, then hold its CPU until the file `release` exists."""
    started.mkdir(exist_ok=True)
    (started / str(os.getpid())).touch()
    while not release.exists():
        time.sleep(0.01)
    return os.getpid()


def test_workers_left_idle_while_other_tasks_hold_every_cpu_are_kept_for_the_next_tasks(
        ray_local: None, tmp_path: Path) -> None:
    """Attacks: one table's workers stopped while another table's tasks hold every CPU, so that its next tasks
    start new workers, each importing Ray Data, pyarrow and the engine again. Ray's default keeps only as many
    idle workers as CPUs are free at the moment."""
    cpus = int(ray.cluster_resources()["CPU"])
    at_once = ray.remote(num_cpus=0.5)(_arrive)
    workers = set(ray.get([at_once.remote(tmp_path / "first", 2 * cpus) for _ in range(2 * cpus)]))
    assert len(workers) == 2 * cpus

    started, release = tmp_path / "started", tmp_path / "release"
    holding = [ray.remote(num_cpus=1)(_hold_until).remote(release, started) for _ in range(cpus)]
    while not started.exists() or len(list(started.iterdir())) < cpus:
        time.sleep(0.01)
    time.sleep(3 * IDLE_KILL_THRESHOLD_S)  # every CPU held: the other workers sit idle past Ray's threshold
    release.touch()
    assert set(ray.get(holding)) <= workers

    again = set(ray.get([at_once.remote(tmp_path / "again", 2 * cpus) for _ in range(2 * cpus)]))
    assert again == workers, "idle workers were stopped while others held the CPUs, and new ones started"
