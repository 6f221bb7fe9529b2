"""Fixtures of the training tests: copies of the retail gold tables the churn job reads, with the feature
repository applied (and, for the shared copy, materialized), and MLflow tracking in a folder of each test."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.config import Settings
from tests.conftest import RetailBuild, settings_at
from tests.features.conftest import REPO, RETAIL_END, copy_gold, postgres_registry  # noqa: F401

LABEL_TABLES = ("fct_order_lines",)


@dataclass(frozen=True)
class ChurnRoot:
    """A storage root with the gold tables of the churn job and the feature repository applied."""

    root: Path
    store: Any

    @property
    def settings(self) -> Settings:
        """Default settings at this root."""
        return settings_at(self.root)


def churn_root(build: RetailBuild, destination: Path) -> ChurnRoot:
    """Copy the churn job's gold tables from `build` to `destination` and apply the feature repository."""
    from engine.features.repo import apply_repo, load_definitions, open_store

    copy_gold(build, destination)
    for name in LABEL_TABLES:
        shutil.copytree(build.root / "gold" / name, destination / "gold" / name)
    store = open_store(str(destination), REPO)
    apply_repo(store, load_definitions(REPO))
    return ChurnRoot(destination, store)


@pytest.fixture(scope="session")
def churn_materialized(retail_build: RetailBuild, tmp_path_factory: pytest.TempPathFactory) -> ChurnRoot:
    """A shared churn root (read-only), materialized as of `RETAIL_END`."""
    from engine.features.materialize import materialize

    churn = churn_root(retail_build, tmp_path_factory.mktemp("churn"))
    materialize(churn.store, end=RETAIL_END)
    return churn


@pytest.fixture
def churn(retail_build: RetailBuild, tmp_path: Path) -> ChurnRoot:
    """A churn root of the test's own, which it may change."""
    return churn_root(retail_build, tmp_path / "lake")


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite tracking URI of the test's own (and no `MLFLOW_TRACKING_URI` from outside)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlflow").mkdir()
    return f"sqlite:///{tmp_path}/mlflow/mlflow.db"
