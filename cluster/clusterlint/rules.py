"""The project's rules for launcher configs and images: the lock file's Ray version, the project's Python,
token authentication, and no Ray port reachable from outside the cluster."""

from __future__ import annotations

import re
import sys
from typing import Any

from clusterlint.launcher_fields import all_commands, launcher_images, start_commands
from clusterlint.problem import ConfigProblem

PUBLIC_HOSTS = frozenset({"0.0.0.0", "::", "[::]"})
RAY_PORTS = {6379: "GCS", 8265: "dashboard and Jobs API", 10001: "Ray client"}
RAY_PIN = re.compile(r"\bray(?:\[[^\]]*\])?==([\w.]+)")
INSTANCE_TYPE_KEYS = {"aws": "InstanceType", "gcp": "machineType"}


def check_launcher_rules(config: dict[str, Any], path: str, ray_version: str, production: bool) -> None:
    """Check a prepared launcher config; `production` configs must also turn on token authentication."""
    instance_key = INSTANCE_TYPE_KEYS.get(config["provider"]["type"])
    for name, spec in (config.get("available_node_types") or {}).items():
        if instance_key and instance_key not in (spec.get("node_config") or {}):
            raise ConfigProblem(f"`{path}`: `available_node_types.{name}.node_config` has no `{instance_key}`; "
                                "the cloud would refuse to launch the node", path=path)
    for key, image in launcher_images(config):
        check_image(image, f"`{path}`: `{key}`", path, ray_version)
    for command in all_commands(config):
        for pinned in RAY_PIN.findall(command):
            if pinned != ray_version:
                raise ConfigProblem(f"`{path}`: a setup command installs ray {pinned} but the lock file pins "
                                    f"{ray_version}: `{command.strip()}`", path=path)
    for key, command in start_commands(config):
        host = re.search(r"--dashboard-host[= ](\S+)", command)
        if host and host.group(1).strip("'\"") in PUBLIC_HOSTS:
            raise ConfigProblem(
                f"`{path}`: `{key}` binds the dashboard and Jobs API to {host.group(1)}, reachable from any network; "
                "use `--dashboard-host=127.0.0.1` and reach it through `ray dashboard` (an SSH tunnel)", path=path)
        if production and "ray start" in command and "RAY_AUTH_MODE=token" not in command:
            raise ConfigProblem(
                f"`{path}`: `{key}` starts Ray without token authentication; prefix `ray start` with "
                "`RAY_AUTH_MODE=token` and mount the token file (`~/.ray/auth_token`) on every node", path=path)
    if production and "RAY_AUTH_MODE=token" not in " ".join(c for _, c in start_commands(config)):
        raise ConfigProblem(f"`{path}`: no start command turns on token authentication (`RAY_AUTH_MODE=token`)",
                            path=path)
    _check_security_group(config, path)


def check_image(image: str, where: str, path: str, ray_version: str) -> None:
    """The image's tag carries the locked Ray version (and the project's Python when it names one)."""
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    if ray_version not in tag:
        raise ConfigProblem(f"{where}: image `{image}` does not carry Ray {ray_version} (the lock file's) in its "
                            f"tag; use e.g. `rayproject/ray:{ray_version}-py311` or an image built from it",
                            path=path)
    python = re.search(r"-py(\d)(\d+)", tag)
    expected = f"{sys.version_info.major}{sys.version_info.minor}"
    if python and python.group(1) + python.group(2) != expected:
        raise ConfigProblem(f"{where}: image `{image}` is for Python {python.group(1)}.{python.group(2)}; the "
                            f"project runs on Python {sys.version_info.major}.{sys.version_info.minor}", path=path)


def _check_security_group(config: dict[str, Any], path: str) -> None:
    permissions = ((config.get("provider") or {}).get("security_group") or {}).get("IpPermissions") or []
    for permission in permissions:
        public = any(r.get("CidrIp") == "0.0.0.0/0" for r in permission.get("IpRanges") or []) or any(
            r.get("CidrIpv6") == "::/0" for r in permission.get("Ipv6Ranges") or [])
        low, high = permission.get("FromPort", 0), permission.get("ToPort", 65535)
        exposed = [f"{port} ({what})" for port, what in RAY_PORTS.items() if low <= port <= high]
        if public and exposed:
            raise ConfigProblem(f"`{path}`: `provider.security_group` opens {', '.join(exposed)} to the internet; "
                                "allow only the cluster's own security group or a trusted CIDR", path=path)
