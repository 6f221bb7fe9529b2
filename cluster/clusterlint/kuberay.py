"""KubeRay manifests checked structurally (there is no CRD schema to validate against offline), plus the
project's rules for them; what their RayCluster, RayJob and RayCronJob objects declare."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from clusterlint.pods import group_node, mapping
from clusterlint.problem import ConfigProblem
from clusterlint.spec import ClusterSpec

KUBERAY_API_VERSION = "ray.io/v1"
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
            raise ConfigProblem(f"{where}: every Kubernetes object needs `apiVersion`, `kind` and "
                                "`metadata.name`", path=path)
        if not str(document["apiVersion"]).startswith("ray.io/"):
            continue
        if document["apiVersion"] != KUBERAY_API_VERSION:
            raise ConfigProblem(f"{where}: `apiVersion` is `{document['apiVersion']}`; KubeRay serves "
                                f"`{KUBERAY_API_VERSION}`", path=path)
        if not DNS_LABEL.match(name) or len(name) > 63:
            raise ConfigProblem(f"{where}: `metadata.name` must be a DNS label (lower-case letters, digits "
                                "and `-`, at most 63 characters)", path=path)
        spec = document.get("spec")
        if not isinstance(spec, dict):
            raise ConfigProblem(f"{where}: `spec` is missing", path=path)
        if kind == "RayCluster":
            specs.append(_ray_cluster(spec, where, "spec", path, name, kind, ray_version))
        elif kind == "RayJob":
            specs.append(_ray_job(spec, where, "spec", path, name, kind, ray_version))
        elif kind == "RayCronJob":
            specs.append(_ray_cron_job(spec, where, path, name, ray_version))
        else:
            raise ConfigProblem(f"{where}: unknown KubeRay kind `{kind}`; expected RayCluster, RayJob or "
                                "RayCronJob", path=path)
    if not specs:
        raise ConfigProblem(f"`{path}`: no RayCluster, RayJob or RayCronJob in the file", path=path)
    return specs


def _unknown_fields(section: Mapping[str, Any], known: Iterable[str], where: str, path: str) -> None:
    for key in section:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise ConfigProblem(f"{where}: unknown field `{key}`{hint}", path=path)


def _ray_cluster(spec: dict[str, Any], where: str, key: str, path: str, name: str, kind: str,
                 ray_version: str) -> ClusterSpec:
    _unknown_fields(spec, RAY_CLUSTER_FIELDS, f"{where}: `{key}`", path)
    if spec.get("rayVersion") != ray_version:
        raise ConfigProblem(f"{where}: `{key}.rayVersion` is `{spec.get('rayVersion')}`; the lock file pins Ray "
                            f"{ray_version}", path=path)
    head_where = f"{where}: `{key}.headGroupSpec`"
    head_group = mapping(spec.get("headGroupSpec"), head_where, path)
    _unknown_fields(head_group, HEAD_GROUP_FIELDS, head_where, path)
    if head_group.get("serviceType", "ClusterIP") != "ClusterIP" or head_group.get("enableIngress"):
        raise ConfigProblem(f"{head_where}: the head service must stay `ClusterIP` without ingress: it carries the "
                            "dashboard, Jobs API and client ports; use `kubectl port-forward`", path=path)
    head = group_node(head_group, "head", head_where, path, ray_version, 0, 0)
    workers = {}
    for index, group in enumerate(spec.get("workerGroupSpecs") or []):
        group_where = f"{where}: `{key}.workerGroupSpecs[{index}]`"
        group = mapping(group, group_where, path)
        _unknown_fields(group, WORKER_GROUP_FIELDS, group_where, path)
        group_name = group.get("groupName")
        if not isinstance(group_name, str) or not DNS_LABEL.match(group_name):
            raise ConfigProblem(f"{group_where}.groupName: required, a DNS label (it names the pods)", path=path)
        bounds = {field: group.get(field, 0) for field in ("minReplicas", "maxReplicas", "replicas")}
        for field, value in bounds.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigProblem(f"{group_where}.{field}: must be a non-negative integer, found {value!r}",
                                    path=path)
        if "maxReplicas" not in group:
            raise ConfigProblem(f"{group_where}.maxReplicas: required; it bounds the autoscaler", path=path)
        if bounds["minReplicas"] > bounds["maxReplicas"]:
            raise ConfigProblem(f"{group_where}: minReplicas ({bounds['minReplicas']}) is greater than maxReplicas "
                                f"({bounds['maxReplicas']}); lower minReplicas or raise maxReplicas", path=path)
        if not bounds["minReplicas"] <= bounds["replicas"] <= bounds["maxReplicas"]:
            raise ConfigProblem(f"{group_where}.replicas ({bounds['replicas']}) must lie between minReplicas and "
                                "maxReplicas", path=path)
        workers[group_name] = group_node(group, group_name, group_where, path, ray_version,
                                         bounds["minReplicas"], bounds["maxReplicas"])
    idle, upscaling = None, None
    if spec.get("enableInTreeAutoscaling"):
        options_where = f"{where}: `{key}.autoscalerOptions`"
        options = mapping(spec.get("autoscalerOptions") or {}, options_where, path)
        _unknown_fields(options, AUTOSCALER_FIELDS, options_where, path)
        upscaling = options.get("upscalingMode", "Default")
        if upscaling not in UPSCALING_MODES:
            raise ConfigProblem(f"{options_where}.upscalingMode: `{upscaling}` is not one of "
                                f"{', '.join(sorted(UPSCALING_MODES))}", path=path)
        idle = options.get("idleTimeoutSeconds", 60)
        if not isinstance(idle, int) or isinstance(idle, bool) or idle <= 0:
            raise ConfigProblem(f"{options_where}.idleTimeoutSeconds: must be a positive integer", path=path)
    auth = (spec.get("authOptions") or {}).get("mode")
    if auth != "token":
        raise ConfigProblem(f"{where}: `{key}.authOptions.mode` must be `token` (KubeRay then creates the token "
                            "Secret and sets RAY_AUTH_MODE and RAY_AUTH_TOKEN in every Ray container)", path=path)
    return ClusterSpec(path, kind, name, "kuberay", head, workers, None if idle is None else float(idle), upscaling,
                       True)


def _ray_job(spec: dict[str, Any], where: str, key: str, path: str, name: str, kind: str,
             ray_version: str) -> ClusterSpec:
    _unknown_fields(spec, RAY_JOB_FIELDS, f"{where}: `{key}`", path)
    if not isinstance(spec.get("entrypoint"), str) or not spec["entrypoint"].strip():
        raise ConfigProblem(f"{where}: `{key}.entrypoint` is required: the command the job runs", path=path)
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode not in SUBMISSION_MODES:
        raise ConfigProblem(f"{where}: `{key}.submissionMode` `{mode}` is not one of "
                            f"{', '.join(sorted(SUBMISSION_MODES))}", path=path)
    if "runtimeEnvYAML" in spec:
        try:
            runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        except yaml.YAMLError as err:
            raise ConfigProblem(f"{where}: `{key}.runtimeEnvYAML` is not YAML: {err}", path=path) from None
        mapping(runtime_env, f"{where}: `{key}.runtimeEnvYAML`", path)
    if "rayClusterSpec" not in spec:
        raise ConfigProblem(f"{where}: `{key}.rayClusterSpec` is required (this project's jobs bring their "
                            "cluster)", path=path)
    cluster = mapping(spec["rayClusterSpec"], f"{where}: `{key}.rayClusterSpec`", path)
    return _ray_cluster(cluster, where, f"{key}.rayClusterSpec", path, name, kind, ray_version)


def _ray_cron_job(spec: dict[str, Any], where: str, path: str, name: str, ray_version: str) -> ClusterSpec:
    _unknown_fields(spec, RAY_CRON_JOB_FIELDS, f"{where}: `spec`", path)
    schedule = spec.get("schedule")
    fields = schedule.split() if isinstance(schedule, str) else []
    if len(fields) != 5 or not all(CRON_FIELD.match(f) for f in fields):
        raise ConfigProblem(f"{where}: `spec.schedule` must be a five-field cron expression, found "
                            f"{schedule!r}", path=path)
    template = mapping(spec.get("jobTemplate"), f"{where}: `spec.jobTemplate`", path)
    return _ray_job(template, where, "spec.jobTemplate", path, name, "RayCronJob", ray_version)
