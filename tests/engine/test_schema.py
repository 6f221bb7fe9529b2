"""Schema evolution: the change detection and policy, and migrations applied by the runner."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import ray.data
from deltalake import DeltaTable

from engine import Append, Merge, Overwrite, Pipeline, Runner, SchemaEvolution
from engine.errors import SchemaEvolutionError
from engine.schema import changes_between, is_widening, migrate
from tests.conftest import settings_at

CURRENT = pa.schema([("id", pa.int32()), ("amount", pa.float64()), ("name", pa.string())])


def changes(incoming: pa.Schema, **policy: object) -> list[str]:
    return [c.describe() for c in changes_between("gold.t", CURRENT, incoming, SchemaEvolution(**policy))]


def test_widening_rules() -> None:
    assert is_widening(pa.int32(), pa.int64()) and is_widening(pa.int16(), pa.float64())
    assert is_widening(pa.float32(), pa.float64()) and is_widening(pa.date32(), pa.timestamp("us", tz="UTC"))
    assert is_widening(pa.decimal128(10, 2), pa.decimal128(12, 2))
    assert not is_widening(pa.int64(), pa.int32()) and not is_widening(pa.float64(), pa.int64())
    assert not is_widening(pa.decimal128(10, 2), pa.decimal128(10, 1))


def test_added_and_widened_columns_are_accepted_by_default() -> None:
    incoming = pa.schema([("id", pa.int64()), ("amount", pa.float64()), ("name", pa.string()), ("tier", pa.string())])
    assert changes(incoming) == ["`id` widened from int32 to int64", "`tier` added (string)"]


@pytest.mark.parametrize(("incoming", "policy", "message"), [
    (pa.schema([("id", pa.int32()), ("amount", pa.float64())]), {}, r"`name` \(string\) is no longer produced"),
    (pa.schema([("id", pa.int32()), ("amount", pa.float32()), ("name", pa.string())]), {},
     "`amount` changes type from double to float"),
    (pa.schema([("id", pa.int64()), ("amount", pa.float64()), ("name", pa.string())]), {"widening": "fail"},
     "`id` changes type from int32 to int64"),
    (pa.schema([("id", pa.int32()), ("amount", pa.float64()), ("full_name", pa.string())]), {},
     r"table `gold.t`: `name` \(string\) is no longer produced"),
])
def test_drops_narrowing_and_undeclared_renames_fail_naming_the_column(
    incoming: pa.Schema, policy: dict[str, object], message: str
) -> None:
    with pytest.raises(SchemaEvolutionError, match=message):
        changes(incoming, **policy)


def test_declared_migrations_are_accepted_and_applied_to_rows() -> None:
    incoming = pa.schema([("id", pa.int32()), ("amount", pa.int64()), ("full_name", pa.string())])
    found = changes_between("gold.t", CURRENT, incoming, SchemaEvolution(rename={"name": "full_name"},
                                                                          retype=("amount",)))
    assert [c.describe() for c in found] == ["`amount` retyped from double to int64", "`name` renamed to `full_name`"]
    rows = pa.table({"id": pa.array([1], pa.int32()), "amount": [2.0], "name": ["ann"]})
    assert migrate(rows, found, incoming).to_pylist() == [{"id": 1, "amount": 2, "full_name": "ann"}]
    dropped = changes_between("gold.t", CURRENT, pa.schema([("id", pa.int32())]), SchemaEvolution(drop=("amount", "name")))
    assert migrate(rows, dropped, pa.schema([("id", pa.int32())])).column_names == ["id"]


def one_table(kind: Append | Overwrite | Merge, rows: list[dict[str, object]], schema: pa.Schema,
              evolution: SchemaEvolution | None = None) -> Pipeline:
    pipeline = Pipeline("evolving")

    @pipeline.table("gold.t", kind=kind, evolution=evolution)
    def t() -> ray.data.Dataset:
        return ray.data.from_arrow(pa.Table.from_pylist(rows, schema=schema))

    return pipeline


def run(root: Path, pipeline: Pipeline) -> str | None:
    """Run `pipeline`, whose rows are its definition, as a forward-only change: existing rows stay, migrated."""
    result = Runner(pipeline, settings_at(root)).run(force=True, change_kind="forward-only")
    return result.records[0].error


def versions(root: Path) -> list[int | None]:
    return [c.get("medallion.schema_version") for c in reversed(DeltaTable(str(root / "gold" / "t")).history())]


@pytest.mark.usefixtures("ray_local")
def test_an_overwrite_that_drops_a_column_fails_unless_declared(tmp_path: Path) -> None:
    two = pa.schema([("id", pa.int64()), ("name", pa.string())])
    one = pa.schema([("id", pa.int64())])
    assert run(tmp_path, one_table(Overwrite(), [{"id": 1, "name": "a"}], two)) is None
    error = run(tmp_path, one_table(Overwrite(), [{"id": 2}], one))
    assert error is not None and "`name` (string) is no longer produced" in error
    assert DeltaTable(str(tmp_path / "gold" / "t")).to_pyarrow_table().to_pylist() == [{"id": 1, "name": "a"}]
    assert run(tmp_path, one_table(Overwrite(), [{"id": 2}], one, SchemaEvolution(drop=("name",)))) is None
    assert DeltaTable(str(tmp_path / "gold" / "t")).to_pyarrow_table().to_pylist() == [{"id": 2}]
    assert versions(tmp_path) == [1, 2]


@pytest.mark.usefixtures("ray_local")
def test_merge_table_rename_and_widening_migrate_existing_rows(tmp_path: Path) -> None:
    kind = Merge(keys=["id"])
    before = pa.schema([("id", pa.int64()), ("qty", pa.int32()), ("name", pa.string())])
    after = pa.schema([("id", pa.int64()), ("qty", pa.int64()), ("full_name", pa.string())])
    assert run(tmp_path, one_table(kind, [{"id": 1, "qty": 5, "name": "ann"}], before)) is None
    undeclared = run(tmp_path, one_table(kind, [{"id": 1, "qty": 6, "full_name": "bob"}], after))
    assert undeclared is not None and "`name` (string) is no longer produced" in undeclared
    assert run(tmp_path, one_table(kind, [{"id": 2, "qty": 7, "full_name": "cid"}], after,
                                   SchemaEvolution(rename={"name": "full_name"}))) is None
    table = DeltaTable(str(tmp_path / "gold" / "t")).to_pyarrow_table()
    assert table.schema.field("qty").type == pa.int64()
    assert sorted(table.to_pylist(), key=lambda r: r["id"]) == [{"id": 1, "qty": 5, "full_name": "ann"},
                                                                 {"id": 2, "qty": 7, "full_name": "cid"}]
    assert versions(tmp_path) == [1, 2, 2]
