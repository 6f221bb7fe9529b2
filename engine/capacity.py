"""Capacity ahead of a run: the backlog a run will process, turned into a request to the Ray autoscaler.

The autoscaler adds nodes when tasks are already waiting, one round at a time. A run that knows its
backlog (landing bytes not yet ingested, input versions its tables have not yet read) can ask for the nodes
of its largest step before it starts, with `ray.autoscaler.sdk.request_resources`, and clear the request
when it ends so that idle nodes are removed again.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from engine.config import Settings
from engine.ingest.checkpoint import files_to_ingest, ingestion_checkpoint
from engine.ingest.discovery import discover
from engine.ingest.sources import FileSource
from engine.layout import Layout
from engine.pipeline import Pipeline, TableDefinition
from engine.runtime import resolve_address
from engine.tables import delta
from engine.tables.built_from import consumed_versions
from engine.tables.delta_files import add_actions


@dataclass(frozen=True)
class StepBacklog:
    """The work one table of a run has waiting.

    Attributes:
        table: the table.
        bytes: input bytes the step will read: its new landing files, or the data files of its inputs it
            will read (only those added since it was built, for an incremental table whose inputs only grew).
        files: how many files that is.
        versions_behind: commits its inputs gained since it was last built (every version of them when it
            was never built; 0 for ingested tables).
        ray_options: the table's declared Ray options, the shape of its tasks.
        ingest: the step ingests landing files.
    """

    table: str
    bytes: int
    files: int
    versions_behind: int = 0
    ray_options: Mapping[str, Any] = field(default_factory=dict)
    ingest: bool = False


@dataclass(frozen=True)
class Backlog:
    """What a run of a selection will process, step by step, in run order."""

    steps: tuple[StepBacklog, ...]

    @property
    def landing_bytes(self) -> int:
        """Bytes of landing files not ingested yet."""
        return sum(s.bytes for s in self.steps if s.ingest)

    @property
    def largest(self) -> StepBacklog | None:
        """The step with the most input bytes, None when nothing is waiting."""
        waiting = [s for s in self.steps if s.bytes > 0]
        return max(waiting, key=lambda s: s.bytes) if waiting else None


@dataclass(frozen=True)
class Reservation:
    """Resources asked of the autoscaler for a run's largest step.

    Attributes:
        step: the step the request is sized for.
        bundles: one resource bundle per task that step can run at once.
    """

    step: StepBacklog
    bundles: tuple[Mapping[str, float], ...]

    def describe(self, planned: bool = False) -> str:
        """One line for the run's output; `planned` words it as what a run would ask for."""
        shape = ", ".join(f"{k} {v:g}" for k, v in self.bundles[0].items())
        asked = "a run asks the autoscaler for" if planned else "asked the autoscaler for"
        return (f"capacity: {asked} {len(self.bundles)} task(s) of {{{shape}}} ahead of "
                f"`{self.step.table}` ({self.step.bytes / 2**20:.1f} MiB in {self.step.files} file(s))")


def task_shape(ray_options: Mapping[str, Any]) -> dict[str, float]:
    """The resources one task with `ray_options` occupies (`num_cpus` defaults to 1, as in Ray)."""
    shape = {"CPU": float(ray_options.get("num_cpus", 1))}
    if ray_options.get("num_gpus"):
        shape["GPU"] = float(ray_options["num_gpus"])
    if ray_options.get("memory"):
        shape["memory"] = float(ray_options["memory"])
    shape.update({name: float(amount) for name, amount in (ray_options.get("resources") or {}).items()})
    return {name: amount for name, amount in shape.items() if amount}


def measure_backlog(pipeline: Pipeline, layout: Layout, selection: str | None = None) -> Backlog:
    """The backlog of the selected tables under a storage root, read from landing folders and Delta logs only.

    Tables whose inputs are at the versions they were last built from have no step; tables reading inputs
    that do not exist yet count no bytes (the landing files upstream stand for that work).
    """
    definitions = pipeline.resolve()
    steps = []
    for name in pipeline.select(selection):
        definition = definitions[name]
        step = _ingest_step(definition, layout) if definition.source else _transform_step(definition, layout)
        if step is not None:
            steps.append(step)
    return Backlog(tuple(steps))


def plan(backlog: Backlog, bytes_per_task: int) -> Reservation | None:
    """One bundle of the largest step's task shape (one CPU unless the table declares another) per
    `bytes_per_task` of its input; None when idle."""
    step = backlog.largest
    if step is None:
        return None
    tasks = math.ceil(step.bytes / bytes_per_task)
    return Reservation(step, tuple(task_shape(step.ray_options) for _ in range(tasks)))


def request(reservation: Reservation | None) -> None:
    """Ask the autoscaler of the connected cluster for `reservation`, replacing any earlier request; None clears
    it. The request persists until replaced: clear it when the work is done, or idle nodes stay."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[dict(b) for b in reservation.bundles] if reservation else [])


@contextmanager
def reserved_capacity(
    pipeline: Pipeline,
    settings: Settings,
    selection: str | None = None,
) -> Iterator[Reservation | None]:
    """Reserve capacity for a run on a named cluster while the block runs, and clear the request after.

    Ray must be initialised. On a private local instance (no cluster address) nothing is requested and None is
    yielded: there is no autoscaler to ask.
    """
    if resolve_address(settings.ray) is None:
        yield None
        return
    reservation = plan(measure_backlog(pipeline, Layout.at(settings.storage.root), selection),
                       settings.ray.bytes_per_task)
    if reservation is None:
        yield None
        return
    request(reservation)
    try:
        yield reservation
    finally:
        request(None)


def _ingest_step(definition: TableDefinition, layout: Layout) -> StepBacklog | None:
    if not isinstance(definition.source, FileSource):  # a database source's backlog is in its server's WAL
        return None
    landed = discover(layout.landing(definition.source.directory), definition.source)
    checkpoint = ingestion_checkpoint(layout.table(definition.name), definition.name, [f.name for f in landed])
    new, _ = files_to_ingest(landed, checkpoint, definition.source)
    if not new:
        return None
    return StepBacklog(definition.name, sum(f.size - f.start for f in new), len(new), 0, definition.ray_options,
                       ingest=True)


def _transform_step(definition: TableDefinition, layout: Layout) -> StepBacklog | None:
    uri = layout.table(definition.name)
    latest = {t: delta.latest_version(layout.table(t)) for t in definition.dependencies}
    built_from = consumed_versions(uri, definition.name, definition.dependencies) or {}
    if latest == built_from:
        return None
    behind = sum(v - built_from[t] if built_from.get(t) is not None else v + 1
                 for t, v in latest.items() if v is not None)
    sizes = [_input_files(layout.table(t), t, latest[t], built_from.get(t) if definition.incremental else None)
             for t in definition.inputs if latest[t] is not None]
    return StepBacklog(definition.name, sum(sum(s) for s in sizes), sum(len(s) for s in sizes), behind,
                       definition.ray_options)


def _input_files(uri: str, table: str, version: int, since: int | None) -> list[int]:
    """Sizes of the data files a step reads from an input at `version`: those added after `since` when the
    input only grew since, else all of them."""
    now = _file_sizes(uri, table, version)
    if since is None or since == version:
        return list(now.values()) if since is None else []
    before = _file_sizes(uri, table, since)
    if not before.keys() <= now.keys():
        return list(now.values())
    return [size for path, size in now.items() if path not in before]


def _file_sizes(uri: str, table: str, version: int) -> dict[str, int]:
    actions = add_actions(delta.open_table(uri, table, version))
    return dict(zip(actions.column("path").to_pylist(), actions.column("size_bytes").to_pylist()))
