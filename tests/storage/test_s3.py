"""The engine on S3 object storage, against a real S3 HTTP endpoint (moto's server) on 127.0.0.1 (see conftest.py):
the retail demo, its commands, the feature store and MLflow, and the demo on Iceberg tables.

Credentials, endpoint and region come only from the standard AWS variables of the environment; delta-rs,
pyarrow and Ray workers read them there (`engine/storage.py`).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

from engine.runlog import read_records
from engine.runner import Runner
from engine.storage import delta_tables_under, files_under
from pipelines.retail.generate import generate
from pipelines.retail.pipeline import retail
from tests.conftest import settings_at
from tests.storage.conftest import BUCKET, comparable, iceberg_rows, object_keys, subprocess_env

FEATURE_REPO = Path(__file__).resolve().parents[2] / "features"

pytestmark = pytest.mark.services

SCALE = "0.02"
AS_OF = date(2026, 5, 30)


def _medallion(root: str, env: dict[str, str], *args: str) -> str:
    command = [str(Path(sys.executable).with_name("medallion")), "--root", root, *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _gold(uri: str) -> pl.DataFrame:
    frame = pl.from_arrow(DeltaTable(uri).to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    columns = [c for c in frame.columns if not c.startswith("_")]
    return frame.select(columns).sort(columns)


@pytest.fixture(scope="module")
def retail_on_s3(s3: dict[str, str]) -> str:
    """The retail demo run once on the S3 endpoint; the root."""
    root = f"s3://{BUCKET}/retail"
    _medallion(root, subprocess_env(s3), "demo", "--scale", SCALE, "--as-of", AS_OF.isoformat())
    return root


@pytest.mark.slow
def test_the_retail_pipeline_runs_on_s3_like_on_a_local_root(ray_local: None, s3: dict[str, str], retail_on_s3: str,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, env = retail_on_s3, subprocess_env(s3)
    # The local root gets what `medallion demo` does there (generate, then run), in this process on the session's
    # Ray instead of in a new process starting one of its own.
    monkeypatch.setenv("MEDALLION_PII_KEY", env["MEDALLION_PII_KEY"])
    generate(tmp_path / "landing", scale=float(SCALE), as_of=AS_OF)
    local_run = Runner(retail, settings_at(tmp_path)).run()
    assert local_run.succeeded, [r.error for r in local_run.records if r.error]

    on_s3 = delta_tables_under(root, skip=("_meta", "landing"))
    local = delta_tables_under(str(tmp_path), skip=("_meta", "landing"))
    assert [t.removeprefix(root) for t in on_s3] == [t.removeprefix(str(tmp_path)) for t in local]
    assert any(t.endswith("/gold/customer_features") for t in on_s3)
    for table in ("gold/customer_features", "gold/fct_order_lines", "gold/dim_customer"):
        assert _gold(f"{root}/{table}").equals(_gold(f"{tmp_path}/{table}")), table
    assert not [f for f in files_under(f"{root}/_staging")], "staged files were left behind"
    assert not read_records(f"{root}/_meta/runs").filter(pl.col("status") == "failed").height
    assert DeltaTable(f"{root}/_meta/quality").version() >= 0

    again = _medallion(root, env, "run", "retail")
    assert "unchanged" in again
    assert "gold.customer_features" in _medallion(root, env, "status")
    _medallion(root, env, "history", "silver.orders")
    _medallion(root, env, "maintain", "optimize", "silver.orders")
    _medallion(root, env, "maintain", "vacuum", "--dry-run")
    backup = f"s3://{BUCKET}/backups/one"
    _medallion(root, env, "backup", "--to", backup)
    _medallion(root, env, "backup", "verify", backup)  # exits non-zero when anything differs


@pytest.mark.slow
def test_the_feature_store_and_mlflow_artifacts_live_on_the_same_object_store(
        s3: dict[str, str], retail_on_s3: str, redis_online: dict[str, Any], tmp_path: Path) -> None:
    import mlflow

    from engine.features.repo import open_store

    root, prefix = retail_on_s3, retail_on_s3.removeprefix(f"s3://{BUCKET}/")
    overlay = tmp_path / "online.yaml"
    overlay.write_text(yaml.safe_dump(redis_online))
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    env = subprocess_env(s3) | {"MLFLOW_TRACKING_URI": tracking}
    features = ["features", "--repo", str(FEATURE_REPO), "--feast-config", str(overlay)]
    _medallion(root, env, *features, "apply")
    gold = pl.from_arrow(DeltaTable(f"{root}/gold/customer_features").to_pyarrow_table())
    assert isinstance(gold, pl.DataFrame)
    end = gold["event_timestamp"].max()
    _medallion(root, env, *features, "materialize", "--end", end.isoformat())

    assert f"{prefix}/_meta/features/registry.db" in object_keys(prefix)
    latest = gold.filter(pl.col("event_timestamp") == end).sort("customer_id").head(1)
    store = open_store(root, FEATURE_REPO, overlay=overlay)
    online = store.get_online_features(features=["customer_features:order_count_30d"],
                                       entity_rows=[{"customer_id": latest["customer_id"][0]}]).to_dict()
    assert online["order_count_30d"] == latest["order_count_30d"].to_list()

    trained = _medallion(root, env, "train", "--repo", str(FEATURE_REPO), "--feast-config", str(overlay))
    assert "registered version 1" in trained
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(tracking)  # a test run earlier in this process may have set another registry
    experiment = mlflow.get_experiment_by_name("retail/churn")
    assert experiment is not None
    assert experiment.artifact_location == f"{root}/_meta/mlflow/artifacts/retail-churn"
    assert any(key.endswith("/MLmodel") for key in object_keys(f"{prefix}/_meta/mlflow/artifacts/"))
    assert not (tmp_path / "artifacts").exists()
    model = mlflow.pyfunc.load_model("models:/retail_churn/1")
    example = model.input_example
    assert example is not None and len(model.predict(example)) == len(example)


@pytest.mark.slow
def test_the_retail_pipeline_on_iceberg_on_s3_gives_the_gold_of_the_delta_run(
        s3: dict[str, str], retail_on_s3: str, postgres_catalog: str) -> None:
    root = f"s3://{BUCKET}/retail-iceberg"
    env = subprocess_env(s3) | {"MEDALLION__STORAGE__TABLE_FORMAT": "iceberg",
                                 "MEDALLION__STORAGE__ICEBERG_CATALOG_URI": postgres_catalog}
    _medallion(root, env, "demo", "--scale", SCALE, "--as-of", AS_OF.isoformat())
    assert not delta_tables_under(root, skip=("_meta", "landing", "quarantine", "_changes"))
    for table in ("gold.customer_features", "gold.customer_daily", "gold.fct_order_lines", "gold.dim_customer",
                  "gold.dim_product"):
        delta_gold = comparable(_gold(f"{retail_on_s3}/{table.replace('.', '/')}"))
        assert_frame_equal(iceberg_rows(postgres_catalog, table), delta_gold, check_exact=False, rel_tol=1e-9,
                           abs_tol=1e-9)
