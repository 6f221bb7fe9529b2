"""Connecting to Ray: a private local instance by default, or an existing cluster."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from engine.config import RaySettings
from engine.logs import json_logs
from engine.redact import redact_url
from engine.storage import worker_env

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
        # Workers on other nodes do not inherit this environment: the storage variables go with the job (a Ray
        # job's driver leaves that to the job's own runtime env, which Ray would refuse to merge on a conflict).
        env = {} if JOB_CONFIG_ENV in os.environ else worker_env()
        log.info("connecting to the Ray cluster at %s", redact_url(target))
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


def _log_level(settings: RaySettings) -> int:
    return logging.INFO if settings.verbose else logging.WARNING


def _configure_data_context(settings: RaySettings) -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = settings.verbose
    context.print_on_execution_start = settings.verbose
    logging.getLogger("ray.data").setLevel(_log_level(settings))
    logging.getLogger("ray.data._internal.progress").setLevel(_log_level(settings) if settings.verbose else logging.ERROR)
