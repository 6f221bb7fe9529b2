"""Finding the Ray cluster to use, and reusing a Ray that is already running."""

from __future__ import annotations

import json
import subprocess
import sys

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
