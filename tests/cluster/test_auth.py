"""Token authentication, as the production configs turn it on: a private head started with `RAY_AUTH_MODE=token`
and a token made by `ray get-auth-token --generate` serves a `medallion` driver and a Jobs API client that
hold the token, and refuses those that do not."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray.exceptions import AuthenticationError
from ray.job_submission import JobStatus, JobSubmissionClient

from engine.layout import Layout
from pipelines.retail.generate import generate
from pipelines.retail.pipeline import retail
from tests.cluster.helpers import BIN, RayHead, ray_environment, ray_head, wait_for
from tests.conftest import RETAIL_AS_OF, RETAIL_TEST_SCALE

pytestmark = pytest.mark.cluster
BRONZE = [t for t in retail.select() if t.startswith("bronze.")]


@pytest.fixture(scope="module")
def token_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    """A one-CPU head with token authentication, its token generated into a home folder of its own."""
    home = tmp_path_factory.mktemp("home")
    generated = subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=ray_environment(HOME=str(home)),
                               capture_output=True, text=True, timeout=60)
    assert generated.returncode == 0, generated.stderr
    token_path = home / ".ray" / "auth_token"
    assert token_path.read_text().strip() == generated.stdout.strip()
    with ray_head(num_cpus=1, token_path=token_path) as head:
        yield head


def medallion_run(head: RayHead, root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`medallion run retail --address HEAD` of the bronze tables, as a driver outside the head."""
    command = [str(BIN / "medallion"), "--root", str(root), "run", "retail", "--select", "bronze.*",
               "--address", head.gcs_address]
    return subprocess.run(command, env=ray_environment(**env), capture_output=True, text=True, timeout=300)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_driver_with_the_token_runs_on_the_cluster_and_one_without_is_refused(
    token_head: RayHead, tmp_path: Path
) -> None:
    assert token_head.token
    generate(tmp_path / "landing", scale=RETAIL_TEST_SCALE, as_of=RETAIL_AS_OF)

    refused = medallion_run(token_head, tmp_path)
    assert refused.returncode != 0
    assert "InvalidAuthToken" in refused.stderr, refused.stderr[-3000:]
    assert not Path(Layout.at(str(tmp_path)).table(BRONZE[0])).exists(), "nothing ran without the token"

    ran = medallion_run(token_head, tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token_head.token)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert f"{len(BRONZE)} table(s) committed" in ran.stdout
    drivers = [j for j in JobSubmissionClient(token_head.dashboard_url, headers=bearer(token_head.token)).list_jobs()
               if j.type == "DRIVER" and (j.entrypoint or "").endswith(f"--address {token_head.gcs_address}")]
    assert len(drivers) == 1, "the driver that held the token ran on this cluster, the refused one did not"


def test_the_jobs_api_answers_only_requests_with_the_token(token_head: RayHead) -> None:
    assert token_head.token
    with pytest.raises(AuthenticationError, match="Missing authentication token"):
        JobSubmissionClient(token_head.dashboard_url)
    with pytest.raises(AuthenticationError, match="Invalid authentication token"):
        JobSubmissionClient(token_head.dashboard_url, headers=bearer("0" * len(token_head.token)))
    client = JobSubmissionClient(token_head.dashboard_url, headers=bearer(token_head.token))
    job = client.submit_job(entrypoint="medallion --help")
    finished = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)
    assert wait_for(lambda: client.get_job_status(job) in finished, 120, "the job to end")
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, client.get_job_logs(job)
    assert "Medallion lakehouse pipelines on Ray." in client.get_job_logs(job)
