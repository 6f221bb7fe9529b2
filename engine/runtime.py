"""Connecting to Ray: a private local instance by default, or an existing cluster."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from engine.config import RaySettings
from engine.logs import json_logs
from engine.storage import CREDENTIAL_ENV, worker_env

log = logging.getLogger(__name__)

AUTH_MODE_ENV = "RAY_AUTH_MODE"
ADDRESS_ENV = "RAY_ADDRESS"
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in the driver of a submitted job


def resolve_address(settings: RaySettings, address: str | None = None) -> str | None:
    """The cluster to join: the explicit address, else `$RAY_ADDRESS`, else the configured one.

    None means "start a private local instance".
    """
    return address or os.environ.get(ADDRESS_ENV) or settings.address


@contextmanager
def ray_session(settings: RaySettings, address: str | None = None) -> Iterator[None]:
    """Use Ray for the duration of the block, starting a private instance when no cluster is named.

    An already initialised Ray (a test fixture, a notebook, a Ray job driver) is used as it is and left
    running; an instance started here is shut down on exit.
    """
    if ray.is_initialized():
        _configure_data_context(settings)
        yield
        return
    os.environ.setdefault(AUTH_MODE_ENV, settings.auth_mode)
    target = resolve_address(settings, address)
    if target:
        env = {} if JOB_CONFIG_ENV in os.environ else _cluster_worker_env(settings)
        log.info("connecting to the Ray cluster at %s", target)
        ray.init(address=target, logging_level=_log_level(settings), runtime_env={"env_vars": env} if env else None,
                 log_to_driver=not json_logs())
    else:
        # The workers of a private instance inherit this process's environment: no runtime env, which Ray would
        # write in clear to its session logs, carries the storage credentials.
        ray.init(
            address="local",
            num_cpus=settings.num_cpus,
            object_store_memory=(settings.object_store_memory_mb or 0) * 2**20 or None,
            include_dashboard=False,
            logging_level=_log_level(settings),
            log_to_driver=not json_logs(),
        )
    try:
        _configure_data_context(settings)
        yield
    finally:
        ray.shutdown()


def _cluster_worker_env(settings: RaySettings) -> dict[str, str]:
    """The storage variables a cluster's workers get with the job: workers on other nodes do not inherit this
    environment. A Ray job's driver passes none (the job's own runtime env has them, and Ray refuses to merge a
    conflicting one). Credentials only when `ray.forward_credentials` asks: Ray writes a runtime env in clear to
    the cluster's logs, so by default the nodes bring their own (instance or pod role, node environment)."""
    env = worker_env(credentials=settings.forward_credentials)
    held_back = sorted(name for name in CREDENTIAL_ENV if name in os.environ and name not in env)
    if held_back:
        log.info("not passing %s to the cluster's workers: they use the nodes' own credentials "
                 "(set ray.forward_credentials to pass them, in clear in the cluster's logs)", ", ".join(held_back))
    elif settings.forward_credentials and env:
        log.warning("passing the storage credentials to the cluster's workers in the job's runtime env "
                    "(ray.forward_credentials): Ray writes them in clear to the cluster's session logs")
    return env


def _log_level(settings: RaySettings) -> int:
    return logging.INFO if settings.verbose else logging.WARNING


def _configure_data_context(settings: RaySettings) -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = settings.verbose
    context.print_on_execution_start = settings.verbose
    logging.getLogger("ray.data").setLevel(_log_level(settings))
    logging.getLogger("ray.data._internal.progress").setLevel(_log_level(settings) if settings.verbose else logging.ERROR)
