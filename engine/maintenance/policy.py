"""A table's maintenance declaration: how it is laid out when compacted, and how often."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import PipelineDefinitionError


@dataclass(frozen=True)
class Maintenance:
    """How the engine compacts a table (`Pipeline.table(..., maintenance=Maintenance(...))`).

    Attributes:
        z_order: columns to cluster the data files by (a Z-order curve over them), so that reads filtering
            on them skip files; empty: compaction only.
        target_file_mb: size of compacted files (default `storage.target_file_mb`).
        optimize_every: commits after which the table is compacted after a run (default
            `maintenance.optimize_after_commits`).
    """

    z_order: tuple[str, ...] = ()
    target_file_mb: int | None = None
    optimize_every: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.z_order, str):
            object.__setattr__(self, "z_order", (self.z_order,))
        for name in ("target_file_mb", "optimize_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise PipelineDefinitionError(f"Maintenance({name}={value}): give a positive number or leave it out")
