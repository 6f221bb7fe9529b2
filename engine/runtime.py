"""Connecting to Ray: a private local instance listening on loopback only by default, or an existing cluster.

Ray's own output (its log records, Ray Data's progress bars and execution summaries, the workers' stdout and
stderr) shows only with `ray.verbose` (`--verbose`); without it, only Ray's errors do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray
from ray._common.network_utils import is_localhost, node_ip_address_from_perspective
from ray._private import node as ray_node
from ray._private import ray_constants

from engine.config import ADDRESS_ENV, RaySettings
from engine.errors import EngineError
from engine.logs import json_logs
from engine.redact import redact_url
from engine.storage import CREDENTIAL_ENV, worker_env

log = logging.getLogger(__name__)

AUTH_MODE_ENV = "RAY_AUTH_MODE"
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in the driver of a submitted job
LOOPBACK = "127.0.0.1"
IDLE_WORKERS_PER_CPU = 2
"""Idle workers a private instance keeps per CPU. Ray's default keeps as many idle workers as CPUs are free at
the moment and stops the others after a second idle: while one table's tasks hold the CPUs, the workers another
table just used are stopped, and its next tasks start new ones, each paying about 1.5 CPU-s to import Ray Data,
pyarrow and the engine. Tables built at once and tasks waiting on other tasks (which give back their CPU) need up
to twice as many workers as CPUs; only workers that were needed are kept."""


def resolve_address(settings: RaySettings, address: str | None = None) -> str | None:
    """The cluster to join: the explicit address, else `$RAY_ADDRESS`, else the configured one.

    None means "start a private local instance".
    """
    return address or os.environ.get(ADDRESS_ENV) or settings.address


@contextmanager
def ray_session(settings: RaySettings, address: str | None = None) -> Iterator[None]:
    """Use Ray for the duration of the block, starting a private instance when no cluster is named.

    The private instance listens on loopback only (`start_private_ray`); a cluster is joined as it is.

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
        log.info("connecting to the Ray cluster at %s", redact_url(target))
        join_ray(target, logging_level=_log_level(settings), runtime_env={"env_vars": env} if env else None,
                 log_to_driver=_log_to_driver(settings))
    else:
        # The workers of a private instance inherit this process's environment: no runtime env, which Ray would
        # write in clear to its session logs, carries the storage credentials.
        log.info("starting a private Ray instance on this machine")
        start_private_ray(num_cpus=settings.num_cpus,
                          object_store_memory=(settings.object_store_memory_mb or 0) * 2**20 or None,
                          logging_level=_log_level(settings), log_to_driver=_log_to_driver(settings))
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


def start_private_ray(**init_options: Any) -> None:
    """Start a private local Ray instance, without dashboard, every socket of which listens on loopback only, that
    keeps its idle workers (`IDLE_WORKERS_PER_CPU`).

    `init_options` go to `ray.init` (`num_cpus`, `object_store_memory`, `logging_level`, ...).

    Raises:
        EngineError: Ray did not take a loopback address for the node (the instance is shut down).
    """
    # Every server of the node binds to loopback when the node's IP address is a loopback one, else to all
    # interfaces or the host's address: GCS, the raylet's node and object managers, the core worker gRPC servers
    # of the driver and the workers, the dashboard and runtime env agents, the metrics servers of the agent, the
    # dashboard and the autoscaler. `ray.init` replaces a loopback `_node_ip_address` with the host's address
    # unless Ray runs in single-node mode (`ENABLE_RAY_CLUSTER` false, its default on macOS and Windows). That
    # mode is on while the node starts and only then: its variable, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, is
    # read when Ray is imported and would reach every process started from here (`ray start` of a node joining a
    # cluster refuses to run with it), and a cluster joined later in this process still sees the host's address.
    idle_workers = IDLE_WORKERS_PER_CPU * (init_options.get("num_cpus") or os.cpu_count() or 1)
    with _single_node_mode(), _without_unused_processes(log_to_driver=init_options.get("log_to_driver") is not False):
        ray.init(address="local", include_dashboard=False, _node_ip_address=LOOPBACK,
                 _system_config={"num_workers_soft_limit": idle_workers}, **init_options)
    if not is_localhost(node_ip := ray.util.get_node_ip_address()):
        ray.shutdown()
        raise EngineError(f"the private Ray instance took the address {node_ip}, not a loopback one; its "
                          "servers would listen on every interface")


def join_ray(address: str, **init_options: Any) -> None:
    """Join the Ray instance at `address`: a cluster as it is, another process's private instance (listening on
    loopback only) with this process's node on loopback too. `init_options` go to `ray.init`."""
    loopback = _is_loopback_address(address)
    with _single_node_mode() if loopback else contextlib.nullcontext():
        ray.init(address=address, _node_ip_address=LOOPBACK if loopback else None, **init_options)


@contextmanager
def _single_node_mode() -> Iterator[None]:
    """Ray's single-node mode for the duration of the block: a loopback node address stays loopback."""
    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode


@contextmanager
def _without_unused_processes(*, log_to_driver: bool) -> Iterator[None]:
    """A node started in the block leaves out the head processes a private instance never uses: the API server
    (with the dashboard off it serves usage statistics only, and `ray.init` waits over a second for it to come
    up), the autoscaler's monitor (a private instance has nothing to scale), and the log monitor unless the
    workers' output goes to this process. Each is a Python process of its own: about a second of CPU each at
    start-up, on every private instance."""
    left_out = ["start_api_server", "start_monitor"] + ([] if log_to_driver else ["start_log_monitor"])
    originals = {name: getattr(ray_node.Node, name) for name in left_out}
    for name in left_out:
        setattr(ray_node.Node, name, _left_out)
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(ray_node.Node, name, method)


def _left_out(*_: object, **__: object) -> None:
    """Stands in for a start method of a process a private instance leaves out."""


def _is_loopback_address(address: str) -> bool:
    """Whether `address` (`host:port`) names an instance that listens on this machine's loopback only, such as
    another process's private instance: joining it, this process's node address must be loopback too, or Ray
    would look for the GCS at the host's address, where nothing listens. (A node started by `ray start` on this
    machine listens on the host's address as well, and is joined as any cluster.)"""
    if "://" in address or ":" not in address:
        return False
    host, _, port = address.rpartition(":")
    if not is_localhost(host.strip("[]")) or not port.isdigit():
        return False
    try:
        with socket.create_connection((node_ip_address_from_perspective(), int(port)), timeout=2):
            return False
    except OSError:
        return True


def _log_level(settings: RaySettings) -> int:
    return logging.INFO if settings.verbose else logging.ERROR


def _log_to_driver(settings: RaySettings) -> bool:
    """Whether the workers' stdout and stderr are printed by this process: with `verbose`, and not in the JSON
    log format, whose every line on stderr is a JSON record."""
    return settings.verbose and not json_logs()


@contextmanager
def ray_on_demand(settings: RaySettings, address: str | None = None) -> Iterator[Callable[[], None]]:
    """A block that may need Ray: it gets a function that starts or joins Ray as `ray_session` does the first time
    it is called; what was started is shut down at the end of the block. A command whose work is small runs
    without starting Ray at all."""
    with contextlib.ExitStack() as stack:
        def need_ray() -> None:
            if not ray.is_initialized():
                stack.enter_context(ray_session(settings, address))

        yield need_ray


def ensure_ray(address: str | None = None) -> None:
    """For library callers that need Ray (Feast's offline store, in a notebook or a script): use the Ray already
    initialised, else join `address` / `$RAY_ADDRESS`, else start a private instance on loopback; quiet as the
    default settings are (`RaySettings`: Ray's errors only, no progress bars)."""
    if ray.is_initialized():
        return
    settings = RaySettings()
    os.environ.setdefault(AUTH_MODE_ENV, settings.auth_mode)
    if target := resolve_address(settings, address):
        join_ray(target, logging_level=_log_level(settings), log_to_driver=_log_to_driver(settings))
    else:
        start_private_ray(logging_level=_log_level(settings), log_to_driver=_log_to_driver(settings))
    _configure_data_context(settings)


def cluster_cpus() -> int:
    """The CPUs of the Ray cluster this process uses, at least 1. Ray must be initialised."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _configure_data_context(settings: RaySettings) -> None:
    """Ray Data's progress bars and execution summaries, and its log level, as `settings.verbose` asks. The
    context is made with the deprecation warnings Ray raises about its own defaults silenced: nothing a user
    can act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ray.data.DataContext.get_current()
    context.enable_progress_bars = settings.verbose
    context.print_on_execution_start = settings.verbose
    logging.getLogger("ray.data").setLevel(_log_level(settings))
    logging.getLogger("ray.data._internal.progress").setLevel(_log_level(settings))


def raised_in_task(err: BaseException) -> BaseException:
    """The exception a Ray task raised, through the task errors of the tasks that waited on it."""
    while isinstance(err, ray.exceptions.RayTaskError) and err.cause is not None and err.cause is not err:
        err = err.cause
    return err


def task_result(refs: Any) -> Any:
    """`ray.get(refs)`; an engine error raised in a task is raised as itself, its message being for the user.

    Raises:
        EngineError: a task raised it.
    """
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        cause = raised_in_task(err)
        if isinstance(cause, EngineError):
            raise cause from None
        raise
