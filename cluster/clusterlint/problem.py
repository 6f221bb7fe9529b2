"""The one exception clusterlint raises."""

from __future__ import annotations


class ConfigProblem(Exception):
    """A cluster configuration is unreadable, invalid for Ray or KubeRay, or breaks a project rule; the message
    names the file, the key and how to fix it.

    Attributes:
        path: the file concerned.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path
