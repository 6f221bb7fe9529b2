"""Offline checks of cluster configurations: Ray cluster-launcher YAMLs the way `ray up` checks them, KubeRay
manifests structurally, and the project's own rules (the locked Ray version, token authentication, nothing
reachable from outside the cluster)."""

from clusterlint.files import validate_file
from clusterlint.kuberay import validate_manifests
from clusterlint.launcher import validate_launcher
from clusterlint.problem import ConfigProblem
from clusterlint.spec import ClusterSpec, NodeType

__all__ = ["ClusterSpec", "ConfigProblem", "NodeType", "validate_file", "validate_launcher", "validate_manifests"]
