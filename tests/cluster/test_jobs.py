"""`medallion` as a Ray job: `ray job submit --working-dir . -- medallion run retail` (then `features apply`
and `train`) against a private `ray start --head`, the orchestrator recipe of docs/operations.md, and
`medallion run --address` as a driver."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from pipelines.retail.generate import generate
from pipelines.retail.pipeline import retail
from tests.cluster.helpers import (
    BIN,
    GOLD_TABLES,
    REPO,
    RayHead,
    assert_same_tables,
    free_ports,
    ray_environment,
    ray_head,
)
from tests.conftest import RETAIL_AS_OF, RETAIL_TEST_SCALE, RetailBuild

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def jobs_head() -> Iterator[RayHead]:
    """A single-node cluster with the Jobs API, as `ray start --head` leaves it."""
    with ray_head(num_cpus=2) as head:
        yield head


def recipe() -> Callable[..., str]:
    """`submit_medallion` exactly as docs/operations.md shows it."""
    text = (REPO / "docs" / "operations.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def submit_medallion" in b)
    namespace: dict[str, Any] = {}
    exec(compile(block, "docs/operations.md", "exec"), namespace)
    return namespace["submit_medallion"]


def submit(head: RayHead, *arguments: str) -> tuple[str, subprocess.CompletedProcess[str]]:
    submission = f"medallion-{uuid.uuid4().hex[:8]}"
    command = [str(BIN / "ray"), "job", "submit", "--address", head.dashboard_url, "--submission-id", submission,
               "--working-dir", ".", "--", "medallion", *arguments]
    return submission, subprocess.run(command, cwd=REPO, env=ray_environment(), capture_output=True, text=True,
                                      timeout=600)


def test_ray_job_submit_runs_the_pipeline_from_the_working_dir(
    jobs_head: RayHead, retail_build: RetailBuild, tmp_path: Path
) -> None:
    generate(tmp_path / "landing", scale=RETAIL_TEST_SCALE, as_of=RETAIL_AS_OF)
    submission, job = submit(jobs_head, "--root", str(tmp_path), "run", "retail")

    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    client = JobSubmissionClient(jobs_head.dashboard_url)
    info = client.get_job_info(submission)
    assert info.status == JobStatus.SUCCEEDED
    assert info.runtime_env["working_dir"].startswith("gcs://_ray_pkg_"), "the checkout was uploaded and used"
    tables = len(retail.select())
    logs = client.get_job_logs(submission)
    assert f"[{tables}/{tables}]" in logs and f"{tables} table(s) committed" in logs
    assert_same_tables(tmp_path, retail_build.root, GOLD_TABLES)

    again = recipe()(jobs_head.dashboard_url, "--root", str(tmp_path), "run", "retail", poll_s=0.5)
    assert "nothing new: no table committed" in again

    nowhere = f"127.0.0.1:{free_ports(1)[0]}"  # the group's address and RAY_ADDRESS, which the command's own must replace
    # --force: a run with nothing to do would answer from the logs without joining the cluster at all
    direct = subprocess.run([str(BIN / "medallion"), "--address", nowhere, "--root", str(tmp_path), "run", "retail",
                             "--force", "--select", "bronze.orders", "--address", jobs_head.gcs_address],
                            env=ray_environment() | {"RAY_ADDRESS": nowhere}, capture_output=True, text=True,
                            timeout=300)
    assert direct.returncode == 0, direct.stdout + direct.stderr
    assert "nothing new: no table committed" in direct.stdout
    drivers = [j for j in client.list_jobs() if j.type == "DRIVER" and "--address" in (j.entrypoint or "")]
    assert len(drivers) == 1, "`medallion run --address` ran its driver on the cluster, not on a private instance"
    assert drivers[0].entrypoint.endswith(f"--address {jobs_head.gcs_address}"), drivers[0].entrypoint

    # through the recipe, which polls the job's status: `ray job submit` follows the logs, for seconds more
    for arguments, expected in ((("features", "apply"), "created feature view"),
                                (("train", "retail/churn"), "registered version 1: no champion yet")):
        logs = recipe()(jobs_head.dashboard_url, "--root", str(tmp_path), *arguments, working_dir=str(REPO), poll_s=0.5)
        assert expected in logs


def test_a_failing_job_fails_with_the_reason(jobs_head: RayHead, tmp_path: Path) -> None:
    submission, job = submit(jobs_head, "--root", str(tmp_path), "run", "no_such_pipeline")
    assert job.returncode == 1
    client = JobSubmissionClient(jobs_head.dashboard_url)
    assert client.get_job_status(submission) == JobStatus.FAILED
    assert "error: no pipeline named `no_such_pipeline`" in client.get_job_logs(submission)

    with pytest.raises(RuntimeError, match=r"FAILED(.|\n)*no pipeline named `no_such_pipeline`"):
        recipe()(jobs_head.dashboard_url, "--root", str(tmp_path), "run", "no_such_pipeline", poll_s=0.5)


JOIN_CLUSTER = """
import json, os, sys
import ray
from engine.config import RaySettings
from engine.runtime import ray_session

@ray.remote
def storage_env():
    return {name: os.environ.get(name) for name in ("AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}

with ray_session(RaySettings(forward_credentials=sys.argv[2] == "forward"), address=sys.argv[1]):
    print(json.dumps(ray.get(storage_env.remote())))
"""


@pytest.mark.parametrize("forward", [False, True], ids=["by-default", "forward-credentials"])
def test_joining_a_cluster_passes_credentials_only_when_asked(jobs_head: RayHead, forward: bool) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    env = ray_environment(AWS_REGION="eu-canary-1", AWS_ACCESS_KEY_ID=f"AKIA{canary}",
                          AWS_SECRET_ACCESS_KEY=f"secret-{canary}")
    driver = subprocess.run([str(BIN / "python"), "-c", JOIN_CLUSTER, jobs_head.gcs_address,
                             "forward" if forward else "keep"], env=env, capture_output=True, text=True, timeout=300)
    assert driver.returncode == 0, driver.stderr
    seen = json.loads(driver.stdout.strip().splitlines()[-1])
    assert seen["AWS_REGION"] == "eu-canary-1", "the non-secret storage settings always reach the workers"
    if forward:
        assert seen["AWS_SECRET_ACCESS_KEY"] == f"secret-{canary}"
    else:
        assert seen["AWS_ACCESS_KEY_ID"] is None and seen["AWS_SECRET_ACCESS_KEY"] is None
        logs = "".join(path.read_text(errors="replace") for path in jobs_head.temp_dir.rglob("*.log"))
        assert canary not in logs, "no credential reached the cluster's logs"
