"""Offline checks of cluster configurations: Ray cluster-launcher YAMLs the way `ray up` checks them, KubeRay
manifests structurally, and the project's own rules (the locked Ray version, token authentication, nothing
reachable from outside the cluster)."""

from __future__ import annotations

import copy
import difflib
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.errors import ClusterConfigError

KUBERAY_API_VERSION = "ray.io/v1"
TEST_PROVIDERS = frozenset({"fake_multinode"})
"""Providers of configurations that only run on one machine in tests: Ray ships no defaults for them, so
their files must be complete, and the production rules (token auth) do not apply."""
PUBLIC_HOSTS = frozenset({"0.0.0.0", "::", "[::]"})
RAY_PORTS = {6379: "GCS", 8265: "dashboard and Jobs API", 10001: "Ray client"}
UPSCALING_MODES = frozenset({"Default", "Aggressive", "Conservative"})
SUBMISSION_MODES = frozenset({"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"})

RAY_CLUSTER_FIELDS = frozenset({
    "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs", "authOptions", "upgradeStrategy",
})
HEAD_GROUP_FIELDS = frozenset({"template", "headService", "enableIngress", "rayStartParams", "serviceType"})
WORKER_GROUP_FIELDS = frozenset({
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "rayStartParams",
    "template", "scaleStrategy", "numOfHosts",
})
AUTOSCALER_FIELDS = frozenset({
    "resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds", "upscalingMode", "env",
    "envFrom", "volumeMounts", "version",
})
RAY_JOB_FIELDS = frozenset({
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionPolicy", "deletionStrategy", "entrypoint",
    "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
    "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend",
})
RAY_CRON_JOB_FIELDS = frozenset({"schedule", "jobTemplate", "suspend"})
CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?]+$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RAY_PIN = re.compile(r"\bray(?:\[[^\]]*\])?==([\w.]+)")


@dataclass(frozen=True)
class NodeType:
    """One kind of node a cluster can add.

    Attributes:
        name: the node type (launcher) or worker group (KubeRay).
        resources: Ray resources of one node: `CPU`, `GPU`, `memory` (bytes) and custom ones.
        min_workers: nodes always kept.
        max_workers: nodes at most.
        image: the container image, when the node runs one.
    """

    name: str
    resources: Mapping[str, float]
    min_workers: int
    max_workers: int
    image: str | None = None


@dataclass(frozen=True)
class ClusterSpec:
    """What a valid configuration declares, for reports and cross-file checks.

    Attributes:
        path: the file.
        kind: `launcher`, or the KubeRay kind (`RayCluster`, `RayJob`, `RayCronJob`).
        name: cluster name (launcher) or object name (KubeRay).
        provider: launcher provider type, or `kuberay`.
        head: the head node's type, with the Ray resources it offers to tasks.
        workers: worker node types by name.
        idle_timeout_s: seconds an idle worker is kept, when the autoscaler is on.
        upscaling: `upscaling_speed` (launcher) or `upscalingMode` (KubeRay), when the autoscaler is on.
        token_auth: Ray token authentication is turned on for every node.
    """

    path: str
    kind: str
    name: str
    provider: str
    head: NodeType
    workers: Mapping[str, NodeType]
    idle_timeout_s: float | None
    upscaling: float | str | None
    token_auth: bool

    def describe(self) -> str:
        """One line: kind, provider, head and worker types with their bounds."""
        workers = ", ".join(f"{t.name} {t.min_workers}-{t.max_workers}" for t in self.workers.values()) or "none"
        idle = f"; idle timeout {self.idle_timeout_s:g}s" if self.idle_timeout_s is not None else ""
        auth = "token auth" if self.token_auth else "no token auth (test configuration)"
        return f"{self.kind} `{self.name}` ({self.provider}): head {self.head.name}; workers {workers}{idle}; {auth}"


def validate_file(path: str | Path, ray_version: str | None = None) -> list[ClusterSpec]:
    """Check a cluster-launcher YAML or a KubeRay manifest file; returns what it declares.

    Args:
        path: the file.
        ray_version: the Ray version images and pins must carry; the installed Ray's by default.

    Raises:
        ClusterConfigError: the file is unreadable, invalid for Ray or KubeRay, or breaks a project rule;
            the message names the file, the key and how to fix it.
    """
    where = str(path)
    version = ray_version or _installed_ray_version()
    try:
        documents = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    except OSError as err:
        raise ClusterConfigError(f"`{where}`: cannot read the file: {err}", path=where) from None
    except yaml.YAMLError as err:
        raise ClusterConfigError(f"`{where}`: not valid YAML: {err}", path=where) from None
    if not documents or not all(isinstance(d, dict) for d in documents):
        raise ClusterConfigError(f"`{where}`: expected a YAML mapping (a launcher config or Kubernetes objects)",
                                 path=where)
    if "apiVersion" in documents[0] or "kind" in documents[0]:
        return validate_manifests(documents, where, version)
    if len(documents) > 1:
        raise ClusterConfigError(f"`{where}`: a cluster-launcher config is one YAML document, found "
                                 f"{len(documents)}", path=where)
    return [validate_launcher(documents[0], where, version)]


def validate_launcher(config: dict[str, Any], path: str, ray_version: str) -> ClusterSpec:
    """Check a cluster-launcher config as `ray up` does before it contacts the cloud, then the project rules.

    `ray up` fills in the provider's defaults (`prepare_config`) and validates the result against Ray's bundled
    schema (`validate_config`); both run here. Ray ships no defaults for test providers, so their configs are
    validated as written.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    _check_worker_bounds(config, path)
    provider = str((config.get("provider") or {}).get("type", ""))
    ray_log = logging.getLogger("ray.autoscaler")
    level = ray_log.level
    ray_log.setLevel(logging.WARNING)
    try:
        prepared = copy.deepcopy(config) if provider in TEST_PROVIDERS else prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except Exception as err:
        raise ClusterConfigError(f"`{path}`: {_describe_ray_error(err)}", path=path) from None
    finally:
        ray_log.setLevel(level)
    _check_launcher_rules(prepared, path, ray_version, production=provider not in TEST_PROVIDERS)
    return _launcher_spec(prepared, path)


def validate_manifests(documents: list[dict[str, Any]], path: str, ray_version: str) -> list[ClusterSpec]:
    """Check Kubernetes objects; `ray.io` ones (RayCluster, RayJob, RayCronJob) in depth.

    There is no KubeRay CRD schema to validate against offline, so the checks are structural: API version,
    required fields, known field names, types the CRD enforces, replica bounds, autoscaler options, resources
    of every Ray container, the locked Ray version, token authentication and the head service's exposure.
    """
    specs = []
    for index, document in enumerate(documents):
        kind = document.get("kind")
        name = (document.get("metadata") or {}).get("name")
        where = f"`{path}` document {index + 1} ({kind or 'no kind'} `{name or '?'}`)"
        if not isinstance(kind, str) or not document.get("apiVersion") or not isinstance(name, str):
            raise ClusterConfigError(f"{where}: every Kubernetes object needs `apiVersion`, `kind` and "
                                     "`metadata.name`", path=path)
        if not str(document["apiVersion"]).startswith("ray.io/"):
            continue
        if document["apiVersion"] != KUBERAY_API_VERSION:
            raise ClusterConfigError(f"{where}: `apiVersion` is `{document['apiVersion']}`; KubeRay serves "
                                     f"`{KUBERAY_API_VERSION}`", path=path)
        if not DNS_LABEL.match(name) or len(name) > 63:
            raise ClusterConfigError(f"{where}: `metadata.name` must be a DNS label (lower-case letters, digits "
                                     "and `-`, at most 63 characters)", path=path)
        spec = document.get("spec")
        if not isinstance(spec, dict):
            raise ClusterConfigError(f"{where}: `spec` is missing", path=path)
        if kind == "RayCluster":
            specs.append(_ray_cluster(spec, where, "spec", path, name, kind, ray_version))
        elif kind == "RayJob":
            specs.append(_ray_job(spec, where, "spec", path, name, kind, ray_version))
        elif kind == "RayCronJob":
            specs.append(_ray_cron_job(spec, where, path, name, ray_version))
        else:
            raise ClusterConfigError(f"{where}: unknown KubeRay kind `{kind}`; expected RayCluster, RayJob or "
                                     "RayCronJob", path=path)
    if not specs:
        raise ClusterConfigError(f"`{path}`: no RayCluster, RayJob or RayCronJob in the file", path=path)
    return specs


def _installed_ray_version() -> str:
    import ray

    return ray.__version__


def _check_worker_bounds(config: dict[str, Any], path: str) -> None:
    """`min_workers > max_workers` per node type and globally; Ray itself only compares their sums."""
    node_types = config.get("available_node_types")
    pairs = [("", config)]
    if isinstance(node_types, dict):
        pairs += [(f"available_node_types.{name}.", spec) for name, spec in node_types.items() if isinstance(spec, dict)]
    for prefix, spec in pairs:
        low, high = spec.get("min_workers"), spec.get("max_workers")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            raise ClusterConfigError(
                f"`{path}`: `{prefix}min_workers` ({low}) is greater than `{prefix}max_workers` ({high}); "
                "lower min_workers or raise max_workers", path=path)


def _describe_ray_error(err: Exception) -> str:
    """A one-line reason from Ray's config preparation or validation, naming the key."""
    import jsonschema

    if isinstance(err, jsonschema.ValidationError):
        key = ".".join(str(part) for part in err.absolute_path)
        unexpected = re.search(r"\('([^']+)' (?:was|were) unexpected\)", err.message)
        if err.validator == "additionalProperties" and unexpected:
            known = list((err.schema.get("properties") or {}).keys())
            close = difflib.get_close_matches(unexpected.group(1), known, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else f"; known keys: {', '.join(sorted(known))}"
            return f"unknown key `{unexpected.group(1)}` {f'under `{key}`' if key else 'at the top level'}{hint}"
        return f"key `{key or '(top level)'}`: {err.message} (Ray's cluster config schema)"
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    return f"{message} (Ray's cluster config validation)"


def _start_commands(config: dict[str, Any]) -> list[tuple[str, str]]:
    return [(key, str(command)) for key in ("head_start_ray_commands", "worker_start_ray_commands")
            for command in config.get(key) or []]


def _all_commands(config: dict[str, Any]) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    commands = [str(c) for key in keys for c in config.get(key) or []]
    for spec in (config.get("available_node_types") or {}).values():
        commands += [str(c) for key in ("initialization_commands", "worker_setup_commands")
                     for c in spec.get(key) or []]
    return commands


def _launcher_images(config: dict[str, Any]) -> list[tuple[str, str]]:
    docker = config.get("docker") or {}
    images = [(f"docker.{key}", docker[key]) for key in ("image", "head_image", "worker_image") if docker.get(key)]
    for name, spec in (config.get("available_node_types") or {}).items():
        image = (spec.get("docker") or {}).get("worker_image")
        if image:
            images.append((f"available_node_types.{name}.docker.worker_image", image))
    return images


INSTANCE_TYPE_KEYS = {"aws": "InstanceType", "gcp": "machineType"}


def _check_launcher_rules(config: dict[str, Any], path: str, ray_version: str, production: bool) -> None:
    instance_key = INSTANCE_TYPE_KEYS.get(config["provider"]["type"])
    for name, spec in (config.get("available_node_types") or {}).items():
        if instance_key and instance_key not in (spec.get("node_config") or {}):
            raise ClusterConfigError(f"`{path}`: `available_node_types.{name}.node_config` has no `{instance_key}`; "
                                     "the cloud would refuse to launch the node", path=path)
    for key, image in _launcher_images(config):
        _check_image(image, f"`{path}`: `{key}`", path, ray_version)
    for command in _all_commands(config):
        for pinned in RAY_PIN.findall(command):
            if pinned != ray_version:
                raise ClusterConfigError(f"`{path}`: a setup command installs ray {pinned} but the lock file pins "
                                         f"{ray_version}: `{command.strip()}`", path=path)
    for key, command in _start_commands(config):
        host = re.search(r"--dashboard-host[= ](\S+)", command)
        if host and host.group(1).strip("'\"") in PUBLIC_HOSTS:
            raise ClusterConfigError(
                f"`{path}`: `{key}` binds the dashboard and Jobs API to {host.group(1)}, reachable from any network; "
                "use `--dashboard-host=127.0.0.1` and reach it through `ray dashboard` (an SSH tunnel)", path=path)
        if production and "ray start" in command and "RAY_AUTH_MODE=token" not in command:
            raise ClusterConfigError(
                f"`{path}`: `{key}` starts Ray without token authentication; prefix `ray start` with "
                "`RAY_AUTH_MODE=token` and mount the token file (`~/.ray/auth_token`) on every node", path=path)
    if production and "RAY_AUTH_MODE=token" not in " ".join(c for _, c in _start_commands(config)):
        raise ClusterConfigError(f"`{path}`: no start command turns on token authentication (`RAY_AUTH_MODE=token`)",
                                 path=path)
    _check_security_group(config, path)


def _check_security_group(config: dict[str, Any], path: str) -> None:
    permissions = ((config.get("provider") or {}).get("security_group") or {}).get("IpPermissions") or []
    for permission in permissions:
        public = any(r.get("CidrIp") == "0.0.0.0/0" for r in permission.get("IpRanges") or []) or any(
            r.get("CidrIpv6") == "::/0" for r in permission.get("Ipv6Ranges") or [])
        low, high = permission.get("FromPort", 0), permission.get("ToPort", 65535)
        exposed = [f"{port} ({what})" for port, what in RAY_PORTS.items() if low <= port <= high]
        if public and exposed:
            raise ClusterConfigError(f"`{path}`: `provider.security_group` opens {', '.join(exposed)} to the internet; "
                                     "allow only the cluster's own security group or a trusted CIDR", path=path)


def _check_image(image: str, where: str, path: str, ray_version: str) -> None:
    """The image's tag carries the locked Ray version (and the project's Python when it names one)."""
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    if ray_version not in tag:
        raise ClusterConfigError(f"{where}: image `{image}` does not carry Ray {ray_version} (the lock file's) in its "
                                 f"tag; use e.g. `rayproject/ray:{ray_version}-py311` or an image built from it",
                                 path=path)
    python = re.search(r"-py(\d)(\d+)", tag)
    expected = f"{sys.version_info.major}{sys.version_info.minor}"
    if python and python.group(1) + python.group(2) != expected:
        raise ClusterConfigError(f"{where}: image `{image}` is for Python {python.group(1)}.{python.group(2)}; the "
                                 f"project runs on Python {sys.version_info.major}.{sys.version_info.minor}", path=path)


def _launcher_spec(config: dict[str, Any], path: str) -> ClusterSpec:
    node_types = config.get("available_node_types") or {}
    head_name = config.get("head_node_type", "")
    images = dict(_launcher_images(config))
    default_image = images.get("docker.worker_image") or images.get("docker.image")

    def node(name: str, spec: dict[str, Any]) -> NodeType:
        image = images.get(f"available_node_types.{name}.docker.worker_image") or default_image
        if name == head_name:
            image = images.get("docker.head_image") or images.get("docker.image")
        return NodeType(name, dict(spec.get("resources") or {}), int(spec.get("min_workers", 0)),
                        int(spec.get("max_workers", 0)), image)

    provider = str(config["provider"]["type"])
    workers = {name: node(name, spec) for name, spec in node_types.items()
               if name != head_name or provider == "local"}
    head = node(head_name, node_types.get(head_name) or {})
    minutes = config.get("idle_timeout_minutes")
    token = bool(_start_commands(config)) and all(
        "RAY_AUTH_MODE=token" in c for _, c in _start_commands(config) if "ray start" in c)
    return ClusterSpec(path, "launcher", str(config.get("cluster_name", "")), provider, head, workers,
                       None if minutes is None else float(minutes) * 60, config.get("upscaling_speed"), token)


def _unknown_fields(section: Mapping[str, Any], known: Iterable[str], where: str, path: str) -> None:
    for key in section:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise ClusterConfigError(f"{where}: unknown field `{key}`{hint}", path=path)


def _mapping(value: Any, where: str, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ClusterConfigError(f"{where}: expected a mapping, found {type(value).__name__}", path=path)
    return value


def _start_params(params: Any, where: str, path: str) -> dict[str, str]:
    """`rayStartParams` is a map of strings in the CRD: `num-cpus: 0` is rejected, `num-cpus: "0"` is not."""
    if params is None:
        raise ClusterConfigError(f"{where}.rayStartParams: required (use `{{}}` for none)", path=path)
    params = _mapping(params, f"{where}.rayStartParams", path)
    for key, value in params.items():
        if not isinstance(value, str):
            raise ClusterConfigError(f"{where}.rayStartParams.{key}: must be a string (quote it: `\"{value}\"`); "
                                     "the RayCluster CRD rejects other types", path=path)
    return params


def _ray_container(group: dict[str, Any], where: str, path: str) -> dict[str, Any]:
    template = _mapping(group.get("template"), f"{where}.template", path)
    containers = (_mapping(template.get("spec"), f"{where}.template.spec", path)).get("containers")
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
        raise ClusterConfigError(f"{where}.template.spec.containers: needs the Ray container first", path=path)
    container = containers[0]
    for key in ("name", "image"):
        if not container.get(key):
            raise ClusterConfigError(f"{where}: the Ray container has no `{key}`", path=path)
    return container


def _quantity(value: Any, where: str, path: str) -> float:
    """A Kubernetes quantity (`4`, `500m`, `16Gi`, `2G`) as a number (bytes for memory)."""
    text = str(value)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
             "Ti": 2**40}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", text)
    if not match or (match.group(2) and match.group(2) not in units):
        raise ClusterConfigError(f"{where}: `{text}` is not a Kubernetes quantity", path=path)
    return float(match.group(1)) * units.get(match.group(2), 1)


def _group_node(group: dict[str, Any], name: str, where: str, path: str, ray_version: str,
                low: int, high: int) -> NodeType:
    container = _ray_container(group, where, path)
    _check_image(str(container["image"]), f"{where}: container `{container['name']}`", path, ray_version)
    limits = ((container.get("resources") or {}).get("limits")) or {}
    requests = ((container.get("resources") or {}).get("requests")) or {}
    for key in ("cpu", "memory"):
        if key not in limits:
            raise ClusterConfigError(f"{where}: container `{container['name']}` sets no `resources.limits.{key}`; "
                                     "KubeRay derives the node's Ray resources from the limits", path=path)
        if key in requests and _quantity(requests[key], where, path) != _quantity(limits[key], where, path):
            raise ClusterConfigError(f"{where}: container `{container['name']}` requests {key} {requests[key]} but is "
                                     f"limited to {limits[key]}; set requests equal to limits so the pod gets "
                                     "what Ray schedules", path=path)
    params = _start_params(group.get("rayStartParams"), where, path)
    resources: dict[str, float] = {
        "CPU": float(params.get("num-cpus", _quantity(limits["cpu"], where, path))),
        "memory": float(params.get("memory", _quantity(limits["memory"], where, path))),
    }
    gpus = float(params.get("num-gpus", _quantity(limits.get("nvidia.com/gpu", 0), where, path)))
    if gpus:
        resources["GPU"] = gpus
    return NodeType(name, resources, low, high, str(container["image"]))


def _ray_cluster(spec: dict[str, Any], where: str, key: str, path: str, name: str, kind: str,
                 ray_version: str) -> ClusterSpec:
    _unknown_fields(spec, RAY_CLUSTER_FIELDS, f"{where}: `{key}`", path)
    if spec.get("rayVersion") != ray_version:
        raise ClusterConfigError(f"{where}: `{key}.rayVersion` is `{spec.get('rayVersion')}`; the lock file pins Ray "
                                 f"{ray_version}", path=path)
    head_where = f"{where}: `{key}.headGroupSpec`"
    head_group = _mapping(spec.get("headGroupSpec"), head_where, path)
    _unknown_fields(head_group, HEAD_GROUP_FIELDS, head_where, path)
    if head_group.get("serviceType", "ClusterIP") != "ClusterIP" or head_group.get("enableIngress"):
        raise ClusterConfigError(f"{head_where}: the head service must stay `ClusterIP` without ingress: it carries the "
                                 "dashboard, Jobs API and client ports; use `kubectl port-forward`", path=path)
    head = _group_node(head_group, "head", head_where, path, ray_version, 0, 0)
    workers = {}
    for index, group in enumerate(spec.get("workerGroupSpecs") or []):
        group_where = f"{where}: `{key}.workerGroupSpecs[{index}]`"
        group = _mapping(group, group_where, path)
        _unknown_fields(group, WORKER_GROUP_FIELDS, group_where, path)
        group_name = group.get("groupName")
        if not isinstance(group_name, str) or not DNS_LABEL.match(group_name):
            raise ClusterConfigError(f"{group_where}.groupName: required, a DNS label (it names the pods)", path=path)
        bounds = {field: group.get(field, 0) for field in ("minReplicas", "maxReplicas", "replicas")}
        for field, value in bounds.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ClusterConfigError(f"{group_where}.{field}: must be a non-negative integer, found {value!r}",
                                         path=path)
        if "maxReplicas" not in group:
            raise ClusterConfigError(f"{group_where}.maxReplicas: required; it bounds the autoscaler", path=path)
        if bounds["minReplicas"] > bounds["maxReplicas"]:
            raise ClusterConfigError(f"{group_where}: minReplicas ({bounds['minReplicas']}) is greater than maxReplicas "
                                     f"({bounds['maxReplicas']}); lower minReplicas or raise maxReplicas", path=path)
        if not bounds["minReplicas"] <= bounds["replicas"] <= bounds["maxReplicas"]:
            raise ClusterConfigError(f"{group_where}.replicas ({bounds['replicas']}) must lie between minReplicas and "
                                     "maxReplicas", path=path)
        workers[group_name] = _group_node(group, group_name, group_where, path, ray_version,
                                          bounds["minReplicas"], bounds["maxReplicas"])
    idle, upscaling = None, None
    if spec.get("enableInTreeAutoscaling"):
        options_where = f"{where}: `{key}.autoscalerOptions`"
        options = _mapping(spec.get("autoscalerOptions") or {}, options_where, path)
        _unknown_fields(options, AUTOSCALER_FIELDS, options_where, path)
        upscaling = options.get("upscalingMode", "Default")
        if upscaling not in UPSCALING_MODES:
            raise ClusterConfigError(f"{options_where}.upscalingMode: `{upscaling}` is not one of "
                                     f"{', '.join(sorted(UPSCALING_MODES))}", path=path)
        idle = options.get("idleTimeoutSeconds", 60)
        if not isinstance(idle, int) or isinstance(idle, bool) or idle <= 0:
            raise ClusterConfigError(f"{options_where}.idleTimeoutSeconds: must be a positive integer", path=path)
    auth = (spec.get("authOptions") or {}).get("mode")
    if auth != "token":
        raise ClusterConfigError(f"{where}: `{key}.authOptions.mode` must be `token` (KubeRay then creates the token "
                                 "Secret and sets RAY_AUTH_MODE and RAY_AUTH_TOKEN in every Ray container)", path=path)
    return ClusterSpec(path, kind, name, "kuberay", head, workers, None if idle is None else float(idle), upscaling,
                       True)


def _ray_job(spec: dict[str, Any], where: str, key: str, path: str, name: str, kind: str,
             ray_version: str) -> ClusterSpec:
    _unknown_fields(spec, RAY_JOB_FIELDS, f"{where}: `{key}`", path)
    if not isinstance(spec.get("entrypoint"), str) or not spec["entrypoint"].strip():
        raise ClusterConfigError(f"{where}: `{key}.entrypoint` is required: the command the job runs", path=path)
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode not in SUBMISSION_MODES:
        raise ClusterConfigError(f"{where}: `{key}.submissionMode` `{mode}` is not one of "
                                 f"{', '.join(sorted(SUBMISSION_MODES))}", path=path)
    if "runtimeEnvYAML" in spec:
        try:
            runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        except yaml.YAMLError as err:
            raise ClusterConfigError(f"{where}: `{key}.runtimeEnvYAML` is not YAML: {err}", path=path) from None
        _mapping(runtime_env, f"{where}: `{key}.runtimeEnvYAML`", path)
    if "rayClusterSpec" not in spec:
        raise ClusterConfigError(f"{where}: `{key}.rayClusterSpec` is required (this project's jobs bring their "
                                 "cluster)", path=path)
    cluster = _mapping(spec["rayClusterSpec"], f"{where}: `{key}.rayClusterSpec`", path)
    return _ray_cluster(cluster, where, f"{key}.rayClusterSpec", path, name, kind, ray_version)


def _ray_cron_job(spec: dict[str, Any], where: str, path: str, name: str, ray_version: str) -> ClusterSpec:
    _unknown_fields(spec, RAY_CRON_JOB_FIELDS, f"{where}: `spec`", path)
    schedule = spec.get("schedule")
    fields = schedule.split() if isinstance(schedule, str) else []
    if len(fields) != 5 or not all(CRON_FIELD.match(f) for f in fields):
        raise ClusterConfigError(f"{where}: `spec.schedule` must be a five-field cron expression, found "
                                 f"{schedule!r}", path=path)
    template = _mapping(spec.get("jobTemplate"), f"{where}: `spec.jobTemplate`", path)
    return _ray_job(template, where, "spec.jobTemplate", path, name, "RayCronJob", ray_version)
