"""The engine on S3 object storage, against a real S3 HTTP endpoint (moto's server) on 127.0.0.1 (see conftest.py):
the retail demo and its commands, and the feature store and MLflow over its tables (the demo on Iceberg tables is in
test_s3_iceberg.py).

Credentials, endpoint and region come only from the standard AWS variables of the environment; delta-rs,
pyarrow and Ray workers read them there (`engine/storage.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from deltalake import DeltaTable

from engine.runlog import read_records
from engine.storage import delta_tables_under, files_under
from tests.conftest import RETAIL_AS_OF, RETAIL_TEST_SCALE, RetailBuild
from tests.storage.conftest import BUCKET, delta_rows, medallion, object_keys, subprocess_env

FEATURE_REPO = Path(__file__).resolve().parents[2] / "features"

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def retail_on_s3(s3: dict[str, str]) -> str:
    """The retail demo run once on the S3 endpoint, on the data of the session's `retail_build`; the root."""
    root = f"s3://{BUCKET}/retail"
    medallion(root, subprocess_env(s3), "demo", "--scale", str(RETAIL_TEST_SCALE), "--as-of", RETAIL_AS_OF.isoformat())
    return root


@pytest.mark.slow
def test_the_retail_pipeline_runs_on_s3_like_on_a_local_root(s3: dict[str, str], retail_on_s3: str,
                                                             retail_build: RetailBuild) -> None:
    # The local root: the session's build, which ran what `medallion demo` does (generate, then run) on the same
    # scale and as-of date.
    root, env, local_root = retail_on_s3, subprocess_env(s3), str(retail_build.root)
    on_s3 = delta_tables_under(root, skip=("_meta", "landing"))
    local = delta_tables_under(local_root, skip=("_meta", "landing"))
    assert [t.removeprefix(root) for t in on_s3] == [t.removeprefix(local_root) for t in local]
    assert any(t.endswith("/gold/customer_features") for t in on_s3)
    for table in ("gold/customer_features", "gold/fct_order_lines", "gold/dim_customer"):
        assert delta_rows(f"{root}/{table}").equals(delta_rows(f"{local_root}/{table}")), table
    assert not [f for f in files_under(f"{root}/_staging")], "staged files were left behind"
    assert not read_records(f"{root}/_meta/runs").filter(pl.col("status") == "failed").height
    assert DeltaTable(f"{root}/_meta/quality").version() >= 0

    again = medallion(root, env, "run", "retail")
    assert "unchanged" in again
    assert "gold.customer_features" in medallion(root, env, "status")
    medallion(root, env, "history", "silver.orders")
    medallion(root, env, "maintain", "optimize", "silver.orders")
    medallion(root, env, "maintain", "vacuum", "--dry-run")
    backup = f"s3://{BUCKET}/backups/one"
    medallion(root, env, "backup", "--to", backup)
    medallion(root, env, "backup", "verify", backup)  # exits non-zero when anything differs


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
    medallion(root, env, *features, "apply")
    gold = pl.from_arrow(DeltaTable(f"{root}/gold/customer_features").to_pyarrow_table())
    assert isinstance(gold, pl.DataFrame)
    end = gold["event_timestamp"].max()
    medallion(root, env, *features, "materialize", "--end", end.isoformat())

    assert f"{prefix}/_meta/features/registry.db" in object_keys(prefix)
    latest = gold.filter(pl.col("event_timestamp") == end).sort("customer_id").head(1)
    store = open_store(root, FEATURE_REPO, overlay=overlay)
    online = store.get_online_features(features=["customer_features:order_count_30d"],
                                       entity_rows=[{"customer_id": latest["customer_id"][0]}]).to_dict()
    assert online["order_count_30d"] == latest["order_count_30d"].to_list()

    trained = medallion(root, env, "train", "--repo", str(FEATURE_REPO), "--feast-config", str(overlay))
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
