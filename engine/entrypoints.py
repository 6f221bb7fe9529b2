"""Finding pipelines and landing-data generators by name."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from engine.errors import PipelineDefinitionError
from engine.pipeline import Pipeline

PIPELINES_GROUP = "medallion.pipelines"
GENERATORS_GROUP = "medallion.generators"
TRAINING_GROUP = "medallion.training"


def _load(reference: str, group: str, what: str) -> Any:
    if ":" in reference:
        module_name, _, attribute = reference.partition(":")
        _importable_from_working_directory()
        try:
            return getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as err:
            raise PipelineDefinitionError(f"cannot load {what} `{reference}`: {err}") from None
    found = {ep.name: ep for ep in entry_points(group=group)}
    if reference not in found:
        known = ", ".join(sorted(found)) or "none"
        raise PipelineDefinitionError(
            f"no {what} named `{reference}`; installed: {known}; or give `package.module:attribute`"
        )
    return found[reference].load()


def _importable_from_working_directory() -> None:
    """Put the working directory first on the import path, as `python -m` does, so that a `module:attribute`
    reference finds a module of the current folder (and Ray's workers, started later, find it too)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def load_pipeline(reference: str) -> Pipeline:
    """The pipeline registered as `reference`, or at `package.module:attribute` (the working directory first on
    the import path)."""
    pipeline = _load(reference, PIPELINES_GROUP, "pipeline")
    if not isinstance(pipeline, Pipeline):
        raise PipelineDefinitionError(f"`{reference}` is a {type(pipeline).__name__}, not an engine Pipeline")
    return pipeline


def load_generator(reference: str) -> Callable[..., Any]:
    """The landing-data generator registered as `reference`, or at `package.module:attribute`."""
    return _load(reference, GENERATORS_GROUP, "generator")


def load_training_jobs(reference: str) -> dict[str, Any]:
    """The training jobs (by name) registered for pipeline `reference`, or at `package.module:attribute`."""
    jobs = _load(reference, TRAINING_GROUP, "training module")
    if not isinstance(jobs, dict):
        raise PipelineDefinitionError(f"`{reference}` is a {type(jobs).__name__}, not a dict of training jobs")
    return jobs
