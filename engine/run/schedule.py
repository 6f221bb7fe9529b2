"""Which tables of a run may start now: a table starts once every table it depends on in the selection has
finished, at most `limit` at a time, the table with the longest chain of dependent tables below it first (so
the critical path starts early), and in the selection's order among equals."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence


class TableQueue:
    """The selected tables of one run, each pending, running or finished.

    Args:
        order: the selection, upstream before downstream.
        dependencies: each table's dependencies; those outside the selection are taken as built.
        limit: how many tables may run at once (at least 1).
    """

    def __init__(self, order: Sequence[str], dependencies: Mapping[str, Collection[str]], limit: int) -> None:
        selected = set(order)
        self._upstream = {name: {d for d in dependencies.get(name, ()) if d in selected and d != name}
                          for name in order}
        downstream: dict[str, list[str]] = {name: [] for name in order}
        for name, upstream in self._upstream.items():
            for parent in upstream:
                downstream[parent].append(name)
        depth: dict[str, int] = {}
        for name in reversed(order):  # upstream before downstream: every child's depth is known
            depth[name] = 1 + max((depth[child] for child in downstream[name]), default=0)
        position = {name: index for index, name in enumerate(order)}
        self._priority = {name: (-depth[name], position[name]) for name in order}
        self._pending = list(order)
        self._running: set[str] = set()
        self._finished: set[str] = set()
        self.limit = max(1, limit)

    @property
    def pending(self) -> list[str]:
        """Tables not started, in the selection's order."""
        return list(self._pending)

    @property
    def running(self) -> frozenset[str]:
        """Tables started and not finished."""
        return frozenset(self._running)

    def upstream(self, name: str) -> set[str]:
        """The selected tables `name` depends on."""
        return set(self._upstream[name])

    def ready(self) -> list[str]:
        """Pending tables whose selected dependencies have all finished, as many as may start now, first first."""
        free = self.limit - len(self._running)
        if free <= 0:
            return []
        startable = [name for name in self._pending if self._upstream[name] <= self._finished]
        return sorted(startable, key=self._priority.__getitem__)[:free]

    def start(self, name: str) -> None:
        """Mark `name` running."""
        self._pending.remove(name)
        self._running.add(name)

    def finish(self, name: str) -> None:
        """Mark `name` finished, whatever its outcome."""
        self._running.discard(name)
        self._finished.add(name)
