"""A KubeRay node group's pod template: its Ray container, image, resources and `rayStartParams` as a node type."""

from __future__ import annotations

import re
from typing import Any

from clusterlint.problem import ConfigProblem
from clusterlint.rules import check_image
from clusterlint.spec import NodeType


def mapping(value: Any, where: str, path: str) -> dict[str, Any]:
    """`value`, which must be a mapping."""
    if not isinstance(value, dict):
        raise ConfigProblem(f"{where}: expected a mapping, found {type(value).__name__}", path=path)
    return value


def group_node(group: dict[str, Any], name: str, where: str, path: str, ray_version: str,
               low: int, high: int) -> NodeType:
    """The node type of a head or worker group: its Ray container's image, limits and start parameters."""
    container = _ray_container(group, where, path)
    check_image(str(container["image"]), f"{where}: container `{container['name']}`", path, ray_version)
    limits = ((container.get("resources") or {}).get("limits")) or {}
    requests = ((container.get("resources") or {}).get("requests")) or {}
    for key in ("cpu", "memory"):
        if key not in limits:
            raise ConfigProblem(f"{where}: container `{container['name']}` sets no `resources.limits.{key}`; "
                                "KubeRay derives the node's Ray resources from the limits", path=path)
        if key in requests and _quantity(requests[key], where, path) != _quantity(limits[key], where, path):
            raise ConfigProblem(f"{where}: container `{container['name']}` requests {key} {requests[key]} but is "
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


def _start_params(params: Any, where: str, path: str) -> dict[str, str]:
    """`rayStartParams` is a map of strings in the CRD: `num-cpus: 0` is rejected, `num-cpus: "0"` is not."""
    if params is None:
        raise ConfigProblem(f"{where}.rayStartParams: required (use `{{}}` for none)", path=path)
    params = mapping(params, f"{where}.rayStartParams", path)
    for key, value in params.items():
        if not isinstance(value, str):
            raise ConfigProblem(f"{where}.rayStartParams.{key}: must be a string (quote it: `\"{value}\"`); "
                                "the RayCluster CRD rejects other types", path=path)
    return params


def _ray_container(group: dict[str, Any], where: str, path: str) -> dict[str, Any]:
    template = mapping(group.get("template"), f"{where}.template", path)
    containers = (mapping(template.get("spec"), f"{where}.template.spec", path)).get("containers")
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
        raise ConfigProblem(f"{where}.template.spec.containers: needs the Ray container first", path=path)
    container = containers[0]
    for key in ("name", "image"):
        if not container.get(key):
            raise ConfigProblem(f"{where}: the Ray container has no `{key}`", path=path)
    return container


def _quantity(value: Any, where: str, path: str) -> float:
    """A Kubernetes quantity (`4`, `500m`, `16Gi`, `2G`) as a number (bytes for memory)."""
    text = str(value)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
             "Ti": 2**40}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", text)
    if not match or (match.group(2) and match.group(2) not in units):
        raise ConfigProblem(f"{where}: `{text}` is not a Kubernetes quantity", path=path)
    return float(match.group(1)) * units.get(match.group(2), 1)
