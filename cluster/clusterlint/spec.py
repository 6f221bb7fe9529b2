"""What a valid configuration declares: its node types and the cluster they make up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


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
