"""Cluster-launcher configs checked as `ray up` checks them before it contacts the cloud, then by the project's
rules; what they declare."""

from __future__ import annotations

import copy
import difflib
import logging
import re
from typing import Any

from clusterlint.launcher_fields import launcher_images, start_commands
from clusterlint.problem import ConfigProblem
from clusterlint.rules import check_launcher_rules
from clusterlint.spec import ClusterSpec, NodeType

TEST_PROVIDERS = frozenset({"fake_multinode"})
"""Providers of configurations that only run on one machine in tests: Ray ships no defaults for them, so
their files must be complete, and the production rules (token auth) do not apply."""


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
        raise ConfigProblem(f"`{path}`: {_describe_ray_error(err)}", path=path) from None
    finally:
        ray_log.setLevel(level)
    check_launcher_rules(prepared, path, ray_version, production=provider not in TEST_PROVIDERS)
    return _launcher_spec(prepared, path)


def _check_worker_bounds(config: dict[str, Any], path: str) -> None:
    """`min_workers > max_workers` per node type and globally; Ray itself only compares their sums."""
    node_types = config.get("available_node_types")
    pairs = [("", config)]
    if isinstance(node_types, dict):
        pairs += [(f"available_node_types.{name}.", spec) for name, spec in node_types.items() if isinstance(spec, dict)]
    for prefix, spec in pairs:
        low, high = spec.get("min_workers"), spec.get("max_workers")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            raise ConfigProblem(
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


def _launcher_spec(config: dict[str, Any], path: str) -> ClusterSpec:
    node_types = config.get("available_node_types") or {}
    head_name = config.get("head_node_type", "")
    images = dict(launcher_images(config))
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
    token = bool(start_commands(config)) and all(
        "RAY_AUTH_MODE=token" in c for _, c in start_commands(config) if "ray start" in c)
    return ClusterSpec(path, "launcher", str(config.get("cluster_name", "")), provider, head, workers,
                       None if minutes is None else float(minutes) * 60, config.get("upscaling_speed"), token)
