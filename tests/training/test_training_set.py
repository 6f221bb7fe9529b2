"""The training set built in the cluster: the same rows and fingerprint however the examples come (a Ray Dataset
in any block order, or a table), and each way it can be unusable refused with a `TrainingError` that names it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import ray.data

from engine.errors import TrainingError
from engine.features.offline import collect
from engine.features.repo import open_store
from engine.training.dataset import TableReader, build_training_set, split_in_task
from engine.training.job import ENTITY_TIME, TableSource, TrainingJob
from tests.training import budget_training

ACCOUNTS = 300
JOB = budget_training.jobs["accounts"]
COLUMNS = ["account_id", ENTITY_TIME, "label", "note"]


def as_table(reader: TableSource, params: Mapping[str, Any]) -> pa.Table:
    return collect(reader.read(budget_training.EXAMPLES_TABLE, COLUMNS))


def shuffled(reader: TableSource, params: Mapping[str, Any]) -> ray.data.Dataset:
    return reader.read(budget_training.EXAMPLES_TABLE, COLUMNS).random_shuffle(seed=5).repartition(7)


def none(reader: TableSource, params: Mapping[str, Any]) -> ray.data.Dataset:
    return reader.read(budget_training.EXAMPLES_TABLE, COLUMNS).filter(expr="account_id < 0")


def frame(reader: TableSource, params: Mapping[str, Any]) -> Any:
    return as_table(reader, params).to_pandas()


def built(root: Path, job: TrainingJob) -> Any:
    return build_training_set(open_store(str(root)), job, TableReader(str(root)), {})


@pytest.fixture(scope="module")
def root(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("training-set")
    budget_training.prepare(folder, ACCOUNTS)
    return folder


def test_examples_as_a_dataset_in_any_order_or_as_a_table_give_one_training_set(root: Path) -> None:
    first = built(root, JOB)
    rows = first.to_arrow()
    assert rows.column_names == [*COLUMNS, "score"] and first.num_rows == rows.num_rows == ACCOUNTS
    assert (first.numeric, first.categorical) == (["score"], [])
    assert set(first.versions) == {budget_training.EXAMPLES_TABLE, "gold.account_scores"}
    assert rows.column("score").to_pylist() == [i * 7 % 100 for i in rows.column("account_id").to_pylist()]
    times = rows.column(ENTITY_TIME).to_pylist()
    assert times == sorted(times) and (first.start, first.end) == (times[0], times[-1])
    for examples in (shuffled, as_table):
        again = built(root, dataclasses.replace(JOB, examples=examples))
        assert again.fingerprint == first.fingerprint and again.to_arrow().equals(rows), examples.__name__


def test_unusable_training_sets_are_refused_with_the_job_named(root: Path) -> None:
    with pytest.raises(TrainingError, match="training job `accounts` produced no examples from tables "
                                            r"\['gold.account_examples'\]"):
        built(root, dataclasses.replace(JOB, examples=none))
    with pytest.raises(TrainingError, match="`examples` returned a DataFrame; it must return a ray.data.Dataset"):
        built(root, dataclasses.replace(JOB, examples=frame))
    whole = built(root, JOB)
    with pytest.raises(TrainingError, match=r"training job `accounts`: 0 training rows and a holdout .*a smaller "
                                            "`holdout_fraction` / `gap`"):
        split_in_task(whole.rows, dataclasses.replace(JOB, gap=dt.timedelta(days=365)))
    split = split_in_task(whole.rows, JOB)
    assert split.rows_train + split.rows_holdout == ACCOUNTS and split.example.num_rows == 5
    with pytest.raises(TrainingError, match=r"table `gold.account_examples` \(version 0\) has no column\(s\) "
                                            r"\['nope'\]"):
        TableReader(str(root)).read(budget_training.EXAMPLES_TABLE, ["account_id", "nope"])
