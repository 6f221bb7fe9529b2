"""Hyper-parameter search with Ray Tune: each trial fits on the older part of the training rows and is
scored on the newer part (never on the holdout), within the job's declared resources."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ray

from engine.errors import TrainingError
from engine.training.dataset import split_in_task
from engine.training.fit import fit
from engine.training.job import TrainingJob

AIR_NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"


@dataclass(frozen=True)
class Trial:
    """One trial's parameters and validation metrics."""

    params: dict[str, Any]
    metrics: dict[str, float]


def _trial(config: Mapping[str, Any], job: TrainingJob, base: Mapping[str, Any],
           sides: tuple[ray.ObjectRef, ray.ObjectRef], numeric: Sequence[str], categorical: Sequence[str]) -> None:
    """Fit on the first side (train) and report the metrics on the second (validation), both fetched from the
    object store."""
    from ray import tune

    train, validation = ray.get(list(sides))
    fitted = fit(job, {**base, **config}, train, validation, numeric, categorical)
    tune.report(fitted.metrics)


@contextmanager
def _tune_output(verbose: bool) -> Iterator[None]:
    """Tune's progress output for the block: its default one when `verbose`, else the legacy one, which prints
    nothing at verbosity 0 (the default one prints its experiment banner at any verbosity)."""
    previous = os.environ.get(AIR_NEW_OUTPUT_ENV)
    os.environ[AIR_NEW_OUTPUT_ENV] = "1" if verbose else "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[AIR_NEW_OUTPUT_ENV]
        else:
            os.environ[AIR_NEW_OUTPUT_ENV] = previous


def search(job: TrainingJob, params: Mapping[str, Any], rows: ray.ObjectRef, numeric: Sequence[str],
           categorical: Sequence[str], *, trials: int, storage: str, name: str, seed: int = 0,
           verbose: bool = False) -> list[Trial]:
    """Run `trials` samples of `job.search_space` (each a Ray Tune trial reserving `job.resources`) on the
    training `rows` in the object store, split by time in a Ray task, ranked by validation AUC, best first.
    Tune prints its experiment banner and progress only when `verbose`.

    Raises:
        TrainingError: the job declares no search space, or every trial failed.
    """
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if not job.search_space:
        raise TrainingError(f"training job `{job.name}` declares no `search_space`; add one or train without "
                            "--trials", job=job.name)
    split = split_in_task(rows, job)
    resources = {"cpu": job.resources.get("num_cpus", 1), "memory": job.resources.get("memory", 0)}
    trainable = tune.with_resources(
        tune.with_parameters(_trial, job=job, base=dict(params), sides=(split.train, split.holdout),
                             numeric=list(numeric), categorical=list(categorical)),
        {k: v for k, v in resources.items() if v})
    tuner = tune.Tuner(
        trainable,
        param_space={key: tune.choice(list(values)) for key, values in job.search_space.items()},
        tune_config=tune.TuneConfig(num_samples=trials, metric="auc", mode="max",
                                    search_alg=BasicVariantGenerator(random_state=seed)),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=1 if verbose else 0),
    )
    with _tune_output(verbose):
        results = tuner.fit()
    done = [Trial(dict(r.config), {k: float(v) for k, v in r.metrics.items() if k in ("auc", "log_loss", "brier",
                                                                                       "ece")})
            for r in results if r.error is None and r.metrics and "auc" in r.metrics]
    if not done:
        errors = [str(r.error) for r in results if r.error is not None]
        raise TrainingError(f"every trial of the search for `{job.name}` failed: {errors[:1]}", job=job.name)
    return sorted(done, key=lambda t: -t.metrics["auc"])
