"""`train`'s driver does not grow with the training set, nor does the driver of a retrieval saved as Parquet:
the same job trained, and the same retrieval saved, on data 10x apart, each size by a driver process of its own
attached to the test's Ray. The larger training set and saved retrieval each weigh about 160 MiB, which a
driver that built, split or scored the one, or collected the other, would hold. The fingerprint the run records
is recomputed here from the tables, independently of the engine, and so are the saved rows."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from deltalake import DeltaTable

from engine.layout import Layout
from tests.training import budget_training

REPO = Path(__file__).resolve().parents[2]
GROWTH_MIB = 150
SMALL, LARGE = 4_000, 40_000


def expected_fingerprint(root: Path) -> str:
    """SHA-256 of the training set as its documented order and columns say it is: the examples ordered by
    time, key and then each other column, with the score (as of each example's time) after them."""
    examples = DeltaTable(Layout.at(str(root)).table(budget_training.EXAMPLES_TABLE)).to_pyarrow_table(
        columns=["account_id", "event_timestamp", "label", "note"])
    examples = examples.set_column(3, "note", examples.column("note").cast(pa.large_string()))  # Delta's Arrow type
    ids = examples.column("account_id").to_numpy()
    rows = examples.append_column("score", pa.array(ids * 7 % 100, pa.int64()))
    rows = rows.sort_by([("event_timestamp", "ascending"), ("account_id", "ascending"), ("label", "ascending"),
                         ("note", "ascending"), ("score", "ascending")]).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


@pytest.mark.slow
def test_the_driver_of_a_training_run_or_a_saved_retrieval_does_not_grow_with_the_data(
        ray_local: None, tmp_path: Path) -> None:
    peaks = {}
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    (tmp_path / "repo").mkdir()
    for rows in (SMALL, LARGE):
        root = tmp_path / f"root-{rows}"
        budget_training.prepare(root, rows)
        out = tmp_path / f"saved-{rows}"
        done = subprocess.run([sys.executable, "-m", "tests.training.budget_training", str(root),
                               ray.get_runtime_context().gcs_address, str(tmp_path / "repo"), str(out)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        peaks[rows] = report["peak_mib"]
        assert report["rows"] == rows and report["model_version"] == "1"
        assert report["fingerprint"] == expected_fingerprint(root)
        assert report["auc"] > 0.7, report  # the score decides six labels in seven
        saved = pq.read_table(out).sort_by("account_id")
        assert saved.column("score").to_pylist() == (np.arange(rows) * 7 % 100).tolist()
        assert saved.column("note").to_pylist() == ["n" * budget_training.NOTE_BYTES] * rows
    assert peaks[LARGE] - peaks[SMALL] < GROWTH_MIB, peaks
