"""A private Ray instance is reachable from this machine only: every socket its processes listen on is loopback."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.adversarial

REPO = Path(__file__).resolve().parents[2]

# Runs in a process of its own: starts the private instance as the CLI does, makes Ray Data and a task start
# workers, waits until the dashboard agent has started its HTTP server or given up on it (the last of its servers;
# the port is Ray's fixed 52365, which another instance on the machine may hold), then prints every TCP socket
# listening, and every unconnected UDP socket bound, in the process tree.
CHILD = """
import json
import psutil, ray
from ray._raylet import DASHBOARD_AGENT_LISTEN_PORT_NAME, wait_for_persisted_port
from engine.config import RaySettings
from engine.runtime import ray_session

with ray_session(RaySettings(num_cpus=1)):
    assert ray.data.range(64).map_batches(lambda batch: batch).sum("id") == 2016
    assert ray.get(ray.remote(lambda: 1).remote()) == 1
    node = ray._private.worker.global_worker.node
    wait_for_persisted_port(node.get_session_dir_path(), node.node_id, DASHBOARD_AGENT_LISTEN_PORT_NAME, 120_000)
    sockets = []
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            name, connections = process.name(), process.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        for c in connections:
            if c.status == psutil.CONN_LISTEN or (c.status == psutil.CONN_NONE and not c.raddr):
                sockets.append({"process": name, "pid": process.pid, "ip": c.laddr.ip, "port": c.laddr.port})
    print(json.dumps(sockets))
"""


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def test_every_socket_of_a_private_ray_listens_on_loopback_only() -> None:
    """Attacks: "a private Ray instance listens on loopback only": GCS, raylet and object manager, the dashboard
    and runtime env agents, metrics servers, the driver's and the workers' gRPC servers of a private instance
    that ran a Ray Data job; none may listen on all interfaces or on the host's address."""
    ray_temp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {
        "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(ray_temp), "PYTHONPATH": str(REPO)}
    try:
        ran = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    sockets = json.loads(ran.stdout.strip().splitlines()[-1])
    listeners = {s["process"] for s in sockets}
    assert {"gcs_server", "raylet"} <= listeners and any(name.startswith("ray::") for name in listeners), sockets
    exposed = [f"{s['process']} ({s['pid']}) on {s['ip']} port {s['port']}" for s in sockets if not is_loopback(s["ip"])]
    assert not exposed, "\n".join(exposed)
