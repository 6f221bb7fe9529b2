"""What a cluster-launcher config runs: its container images and its setup and start commands."""

from __future__ import annotations

from typing import Any


def start_commands(config: dict[str, Any]) -> list[tuple[str, str]]:
    """The head's and workers' Ray start commands, each with its key."""
    return [(key, str(command)) for key in ("head_start_ray_commands", "worker_start_ray_commands")
            for command in config.get(key) or []]


def all_commands(config: dict[str, Any]) -> list[str]:
    """Every command a node runs: initialization, setup and start, global and per node type."""
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    commands = [str(c) for key in keys for c in config.get(key) or []]
    for spec in (config.get("available_node_types") or {}).values():
        commands += [str(c) for key in ("initialization_commands", "worker_setup_commands")
                     for c in spec.get(key) or []]
    return commands


def launcher_images(config: dict[str, Any]) -> list[tuple[str, str]]:
    """Every Docker image the config names, each with its dotted key."""
    docker = config.get("docker") or {}
    images = [(f"docker.{key}", docker[key]) for key in ("image", "head_image", "worker_image") if docker.get(key)]
    for name, spec in (config.get("available_node_types") or {}).items():
        image = (spec.get("docker") or {}).get("worker_image")
        if image:
            images.append((f"available_node_types.{name}.docker.worker_image", image))
    return images
