"""Fixtures of the cluster tests: a private Ray head whose autoscaler runs cluster/fake-multinode.yaml."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from tests.cluster.helpers import CLUSTER, RayHead, ray_head


@pytest.fixture
def autoscaling_head() -> Iterator[RayHead]:
    """A head with no CPU of its own and Ray's autoscaler adding `cpu-worker` / `gpu-worker` nodes on demand; one
    per test, so that no test starts while the autoscaler still launches or removes nodes for the one before."""
    config = yaml.safe_load((CLUSTER / "fake-multinode.yaml").read_text())
    with ray_head(num_cpus=0, autoscaling=config) as head:
        yield head
