"""Finding the Ray cluster to use, and reusing a Ray that is already running."""

from __future__ import annotations

import pytest
import ray
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
