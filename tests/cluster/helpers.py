"""What the cluster tests share: the repository's files, the lock's Ray version, private Ray heads, gold tables."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import yaml
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
BIN = Path(sys.executable).parent
GOLD_TABLES = ("gold.dim_customer", "gold.dim_product", "gold.fct_order_lines", "gold.customer_daily",
               "gold.customer_features")
T = TypeVar("T")


def lock_version(package: str) -> str:
    """The version uv.lock pins for `package`."""
    found = re.search(rf'\[\[package\]\]\nname = "{re.escape(package)}"\nversion = "([^"]+)"',
                      (REPO / "uv.lock").read_text())
    assert found, f"{package} is not in uv.lock"
    return found.group(1)


def free_ports(count: int) -> list[int]:
    """Ports free right now, from the kernel's ephemeral range (outside Ray's worker ports 10002-19999)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def ray_environment(**extra: str) -> dict[str, str]:
    """The environment of every Ray process and client a test starts: auth disabled explicitly, the project's
    virtualenv first on PATH (so that `medallion` and `ray` resolve inside Ray jobs too), this checkout first on
    PYTHONPATH (so that they run its code, wherever the virtualenv's editable install points), no usage stats, and
    no MLflow location an earlier test of this process set (MLflow exports it for subprocesses), so that jobs
    track under their own root."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    inherited = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    return {**inherited, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": path, **extra}


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class RayHead:
    """A `ray start --head --block` process group on private ports and its own temp dir.

    Attributes:
        gcs_address: `host:port` of its GCS, for `ray.init` and `medallion --address`.
        dashboard_url: its dashboard, Jobs API and state API.
        temp_dir: its sessions and logs.
        process: the `ray start` process; its process group holds every process of the cluster.
        token: its authentication token, when it runs with `RAY_AUTH_MODE=token`.
    """

    gcs_address: str
    dashboard_url: str
    temp_dir: Path
    process: subprocess.Popen[bytes]
    token: str | None = None

    def alive_nodes(self) -> list[Any]:
        """Nodes the GCS reports alive, via the state API (no Ray connection in this process)."""
        from ray.util.state import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        nodes = StateApiClient(self.dashboard_url, headers=headers).list(
            StateResource.NODES, ListApiOptions(limit=100), raise_on_missing_output=True)
        return [n for n in nodes if n.state == "ALIVE"]

    def log(self, name: str) -> str:
        """The text of one of the head session's log files."""
        found = sorted(self.temp_dir.glob(f"session_*/logs/{name}"))
        return found[-1].read_text(errors="replace") if found else ""


@contextmanager
def ray_head(num_cpus: int = 0, autoscaling: dict[str, Any] | None = None,
             token_path: Path | None = None) -> Iterator[RayHead]:
    """Start a private Ray head, yield it once its dashboard answers, then kill its whole process group by id.

    `autoscaling` is a fake_multinode cluster config: the head then runs Ray's autoscaler on it (its
    `provider.gcs_address` is set to this head's port), and worker nodes are local processes of the same group.
    `token_path` turns on token authentication (`RAY_AUTH_MODE=token`) with the token in that file.
    """
    port, dashboard, agent, runtime_env, metrics, client = free_ports(6)
    temp_dir = Path(tempfile.mkdtemp(prefix="mdl-", dir="/tmp"))
    command = [str(BIN / "ray"), "start", "--head", "--block", f"--num-cpus={num_cpus}",
               "--node-ip-address=127.0.0.1", f"--port={port}", f"--dashboard-port={dashboard}",
               "--dashboard-host=127.0.0.1", f"--dashboard-agent-listen-port={agent}",
               f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
               f"--ray-client-server-port={client}", f"--temp-dir={temp_dir}",
               f"--object-store-memory={200 * 2**20}", "--disable-usage-stats"]
    env = ray_environment()
    token = None
    if token_path is not None:
        token = token_path.read_text().strip()
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    if autoscaling is not None:
        config = {**autoscaling, "provider": {**autoscaling["provider"], "gcs_address": f"127.0.0.1:{port}"}}
        (temp_dir / "autoscaling.yaml").write_text(yaml.safe_dump(config))
        command.append(f"--autoscaling-config={temp_dir / 'autoscaling.yaml'}")
        env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    with open(temp_dir / "head.out", "wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    head = RayHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", temp_dir, process, token)
    try:
        wait_for(lambda: process.poll() is not None or _answers(head), 120, "the Ray head to start")
        assert process.poll() is None, (temp_dir / "head.out").read_text()
        yield head
    finally:
        stop_process_group(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _answers(head: RayHead) -> bool:
    try:
        return len(head.alive_nodes()) >= 1
    except Exception:
        return False


def stop_process_group(process: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group led by `process`, SIGKILL what is left of it after 2 s, reap the leader."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=2)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def read_table(root: Path, table: str) -> pl.DataFrame:
    """A Delta table under a storage root, through its log."""
    layer, name = table.split(".")
    return pl.from_arrow(DeltaTable(str(root / layer / name)).to_pyarrow_table())


def canonical(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows in a fixed order (by the non-float columns first) and columns by name, without the engine's own
    columns (`_run_id`, `_ingested_at`, ...), which differ from run to run."""
    columns = sorted(c for c in frame.columns if not c.startswith("_"))
    floats = [c for c in columns if frame.schema[c].is_float()]
    order = [c for c in columns if c not in floats] + floats
    return frame.select(columns).sort(order, nulls_last=True)


def assert_same_tables(root: Path, reference: Path, tables: Sequence[str]) -> dict[str, int]:
    """Every table holds the same rows under both roots; returns the row counts.

    Non-float columns must be equal; float columns equal to 1e-12 relative: sums over a different number of
    partitions add the same numbers in another order, which moves the last bits (5.7e-14 on revenue seen).
    """
    counts = {}
    for table in tables:
        got, expected = canonical(read_table(root, table)), canonical(read_table(reference, table))
        assert got.columns == expected.columns, table
        assert got.height == expected.height, (table, got.height, expected.height)
        assert_frame_equal(got, expected, check_exact=False, rel_tol=1e-12, abs_tol=1e-9)
        counts[table] = got.height
    return counts
