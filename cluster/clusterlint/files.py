"""A configuration file read and dispatched: a cluster-launcher YAML, or Kubernetes objects."""

from __future__ import annotations

from pathlib import Path

import yaml

from clusterlint.kuberay import validate_manifests
from clusterlint.launcher import validate_launcher
from clusterlint.problem import ConfigProblem
from clusterlint.spec import ClusterSpec


def validate_file(path: str | Path, ray_version: str | None = None) -> list[ClusterSpec]:
    """Check a cluster-launcher YAML or a KubeRay manifest file; returns what it declares.

    Args:
        path: the file.
        ray_version: the Ray version images and pins must carry; the installed Ray's by default.

    Raises:
        ConfigProblem: the file is unreadable, invalid for Ray or KubeRay, or breaks a project rule;
            the message names the file, the key and how to fix it.
    """
    where = str(path)
    version = ray_version or _installed_ray_version()
    try:
        documents = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    except OSError as err:
        raise ConfigProblem(f"`{where}`: cannot read the file: {err}", path=where) from None
    except yaml.YAMLError as err:
        raise ConfigProblem(f"`{where}`: not valid YAML: {err}", path=where) from None
    if not documents or not all(isinstance(d, dict) for d in documents):
        raise ConfigProblem(f"`{where}`: expected a YAML mapping (a launcher config or Kubernetes objects)",
                            path=where)
    if "apiVersion" in documents[0] or "kind" in documents[0]:
        return validate_manifests(documents, where, version)
    if len(documents) > 1:
        raise ConfigProblem(f"`{where}`: a cluster-launcher config is one YAML document, found "
                            f"{len(documents)}", path=where)
    return [validate_launcher(documents[0], where, version)]


def _installed_ray_version() -> str:
    import ray

    return ray.__version__
