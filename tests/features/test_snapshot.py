"""Reading one version of a Delta table through its log: partitioned tables, removed files, refusals."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import ray
from deltalake import DeltaTable, write_deltalake

from engine.errors import FeatureStoreError
from engine.features.snapshot import open_snapshot, read_snapshot
from tests.features.conftest import table_path


def test_partitioned_table_is_read_at_its_current_and_pinned_versions(ray_local: None, tmp_path: Path) -> None:
    path = table_path(tmp_path, "gold.scores")
    write_deltalake(path, pa.table({"id": [1, 2, 3], "part": ["a b", "z/%", "a b"], "score": [1.0, 2.0, 3.0]}),
                    partition_by=["part"])
    write_deltalake(path, pa.table({"id": [4], "part": ["a b"], "score": [4.0]}), partition_by=["part"],
                    mode="overwrite", predicate="part = 'a b'")

    def read(version: int | None) -> list[tuple[int, str, float]]:
        snapshot = open_snapshot(str(tmp_path), "gold.scores", version)
        rows = pa.concat_tables(ray.get(read_snapshot(snapshot, ["id", "part", "score"]).to_arrow_refs()))
        return sorted(zip(*(rows.column(c).to_pylist() for c in ("id", "part", "score"))))

    assert read(None) == [(2, "z/%", 2.0), (4, "a b", 4.0)]
    assert read(0) == [(1, "a b", 1.0), (2, "z/%", 2.0), (3, "a b", 3.0)]
    assert DeltaTable(path).version() == 1


def test_missing_table_unknown_version_and_deletion_vectors_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FeatureStoreError, match="`gold.nothing` has no Delta table"):
        open_snapshot(str(tmp_path), "gold.nothing")
    write_deltalake(table_path(tmp_path, "gold.dv"), pa.table({"id": [1]}),
                    configuration={"delta.enableDeletionVectors": "true"})
    with pytest.raises(FeatureStoreError, match="no version 5"):
        open_snapshot(str(tmp_path), "gold.dv", 5)
    with pytest.raises(FeatureStoreError, match="deletionVectors"):
        open_snapshot(str(tmp_path), "gold.dv")
