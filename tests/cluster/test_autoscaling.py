"""Ray's autoscaler, driven by cluster/fake-multinode.yaml, around real pipeline work submitted as a Ray job.

The head offers no CPU, so every task of a run needs a worker the autoscaler adds; idle workers are removed
after the config's idle timeout. Node counts come from the state API over HTTP: this process never connects
to the cluster. The job runs the installed code, as on a cluster built from cluster/Dockerfile: fake nodes
share one session folder, where their runtime-env agents would race unpacking a `--working-dir` package
(tests/cluster/test_jobs.py submits one to a single-node head).
"""

from __future__ import annotations

import math
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient
from ray.util.state import list_tasks

from pipelines.retail.generate import generate
from pipelines.retail.pipeline import retail
from tests.cluster.helpers import BIN, GOLD_TABLES, RayHead, assert_same_tables, ray_environment, wait_for
from tests.conftest import RETAIL_AS_OF, RETAIL_TEST_SCALE, RetailBuild

pytestmark = pytest.mark.cluster
SCALE_DOWN_TIMEOUT_S = 120


@dataclass
class Timeline:
    """Worker nodes seen alive over time: (seconds since start, ids of alive workers) at every change."""

    head: RayHead
    started: float = field(default_factory=time.monotonic)
    changes: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    resources: dict[str, dict[str, float]] = field(default_factory=dict)

    def sample(self) -> frozenset[str]:
        alive = [n for n in self.head.alive_nodes() if not n.is_head_node]
        self.resources.update({n.node_id: dict(n.resources_total) for n in alive})
        workers = frozenset(n.node_id for n in alive)
        if not self.changes or self.changes[-1][1] != workers:
            self.changes.append((time.monotonic() - self.started, workers))
        return workers

    @property
    def most(self) -> int:
        return max(len(workers) for _, workers in self.changes)

    def first_time(self, count: int) -> float:
        """Seconds until `count` workers were first alive."""
        return next(t for t, workers in self.changes if len(workers) >= count)

    def describe(self) -> str:
        return ", ".join(f"{t:.1f}s: {len(w)} worker(s)" for t, w in self.changes)


@contextmanager
def watching(head: RayHead) -> Iterator[Timeline]:
    """Sample the cluster's workers every half second while the block runs."""
    timeline, stop = Timeline(head), threading.Event()

    def loop() -> None:
        while not stop.is_set():
            timeline.sample()
            stop.wait(0.5)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield timeline
    finally:
        stop.set()
        thread.join()


def workers(head: RayHead) -> list[str]:
    return [n.node_id for n in head.alive_nodes() if not n.is_head_node]


def assert_autoscaler_did_it(head: RayHead, timeline: Timeline) -> None:
    """The autoscaler's own log launched only cpu-workers and terminated every worker seen as idle."""
    log = head.log("monitor.log")
    launched = re.findall(r"Launching \d+ nodes, type ([\w.-]+)\.", log)
    assert set(launched) == {"cpu-worker"}, launched
    for node in timeline.resources:
        assert re.search(rf"Terminating the node with id {node} and ip \S+ \(idle\)", log), node


def test_a_pipeline_job_scales_the_cluster_up_and_back_down(
    autoscaling_head: RayHead, retail_build: RetailBuild, tmp_path: Path
) -> None:
    head = autoscaling_head
    wait_for(lambda: not workers(head), 60, "a cluster with no worker")
    generate(tmp_path / "landing", scale=RETAIL_TEST_SCALE, as_of=RETAIL_AS_OF)
    submission = f"medallion-retail-{uuid.uuid4().hex[:8]}"
    command = [str(BIN / "ray"), "job", "submit", "--address", head.dashboard_url, "--submission-id", submission,
               "--", "medallion", "--root", str(tmp_path), "run", "retail"]

    with watching(head) as timeline:
        job = subprocess.run(command, env=ray_environment(), capture_output=True, text=True, timeout=600)
        finished = time.monotonic() - timeline.started
        wait_for(lambda: not timeline.sample(), SCALE_DOWN_TIMEOUT_S, "idle workers to be removed")
    emptied = timeline.changes[-1][0]
    print(f"\nworkers over time: {timeline.describe()}; job finished at {finished:.1f}s, last worker removed "
          f"{emptied - finished:.1f}s later")

    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    client = JobSubmissionClient(head.dashboard_url)
    info = client.get_job_info(submission)
    assert info.status == JobStatus.SUCCEEDED
    logs = client.get_job_logs(submission)
    tables = len(retail.select())
    assert f"[{tables}/{tables}]" in logs and "table(s) committed" in logs
    assert "capacity: asked the autoscaler for 1 task(s) of {CPU 1} ahead of `bronze." in logs

    assert timeline.most >= 2, "more parallel tasks than one worker holds: the autoscaler added several workers"
    assert all("GPU" not in r and r.get("CPU") == 1 for r in timeline.resources.values()), \
        f"only cpu-workers for CPU work: {timeline.resources}"
    tasks = list_tasks(address=head.dashboard_url, filters=[("job_id", "=", info.job_id)], limit=10000,
                       detail=True, raise_on_missing_output=False)
    ran_on = {t.node_id for t in tasks if (t.required_resources or {}).get("CPU", 0) > 0 and t.node_id}
    assert ran_on and ran_on <= timeline.resources.keys(), "every task that needed a CPU ran on an added worker"

    assert_same_tables(tmp_path, retail_build.root, GOLD_TABLES)
    assert_autoscaler_did_it(head, timeline)


def test_medallion_reserves_capacity_for_its_backlog_and_releases_it(
    autoscaling_head: RayHead, tmp_path: Path
) -> None:
    head = autoscaling_head
    wait_for(lambda: not workers(head), SCALE_DOWN_TIMEOUT_S, "a cluster with no worker")
    written = generate(tmp_path / "landing", scale=RETAIL_TEST_SCALE, as_of=RETAIL_AS_OF)
    largest = max(source.bytes for source in written.values())
    per_task = math.ceil(largest / 2)
    medallion = [str(BIN / "medallion"), "--address", head.gcs_address, "--root", str(tmp_path), "cluster",
                 "reserve", "retail"]

    with watching(head) as timeline:
        reserved = subprocess.run([*medallion, "--bytes-per-task", str(per_task)], env=ray_environment(),
                                  capture_output=True, text=True, timeout=300)
        assert reserved.returncode == 0, reserved.stdout + reserved.stderr
        assert "capacity: asked the autoscaler for 2 task(s) of {CPU 1}" in reserved.stdout
        try:
            wait_for(lambda: len(timeline.sample()) == 2, 120, "two workers for the two reserved tasks")
        except AssertionError as timed_out:
            launches = re.findall(r".*(?:Launching|Terminating|From request_resources).*\n.*", head.log("monitor.log"))
            raise AssertionError(f"{timed_out}; workers seen: {timeline.describe()}; the autoscaler's log: "
                                 f"{launches[-12:]}") from None
        up = timeline.first_time(2)
        released = subprocess.run([*medallion, "--release"], env=ray_environment(), capture_output=True, text=True,
                                  timeout=300)
        assert released.returncode == 0, released.stdout + released.stderr
        assert "request cleared" in released.stdout
        cleared = time.monotonic() - timeline.started
        wait_for(lambda: not timeline.sample(), SCALE_DOWN_TIMEOUT_S, "the reserved workers to be removed")
    print(f"\nworkers over time: {timeline.describe()}; 2 workers up {up:.1f}s after the request, all removed "
          f"{timeline.changes[-1][0] - cleared:.1f}s after the release")
    assert timeline.most == 2, "no task ran: the request alone sized the cluster"
    assert_autoscaler_did_it(head, timeline)
