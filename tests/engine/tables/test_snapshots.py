"""A run opens an input once for its latest version, rows and row count, and looks for a table it found no more;
what it learnt is dropped when it ends, so a table deleted and built again is read anew."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from engine import Runner
from engine.layout import Layout
from engine.tables import delta, snapshots
from tests.conftest import settings_at
from tests.engine.test_runner import build_pipeline, land_orders, table, write_orders

pytestmark = pytest.mark.usefixtures("ray_local")


class Opens:
    """Every Delta table this process opens, by location and whether at a given version, and every check that
    one exists."""

    def __init__(self) -> None:
        self.at_version: Counter[str] = Counter()
        self.latest: Counter[str] = Counter()
        self.exists: Counter[str] = Counter()


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> Iterator[Opens]:
    seen = Opens()
    original_init, original_exists = DeltaTable.__init__, DeltaTable.is_deltatable

    def counting_init(self: DeltaTable, table_uri: str, version: int | None = None, **options: object) -> None:
        (seen.latest if version is None else seen.at_version)[str(table_uri)] += 1
        original_init(self, table_uri, version=version, **options)  # type: ignore[arg-type]

    def counting_exists(table_uri: str, storage_options: dict[str, str] | None = None) -> bool:
        seen.exists[str(table_uri)] += 1
        return original_exists(table_uri, storage_options)

    monkeypatch.setattr(DeltaTable, "__init__", counting_init)
    monkeypatch.setattr(DeltaTable, "is_deltatable", staticmethod(counting_exists))
    yield seen


def test_a_run_reads_its_inputs_from_the_snapshots_that_found_their_versions(tmp_path: Path, opens: Opens) -> None:
    land_orders(tmp_path)
    settings = settings_at(tmp_path)
    Runner(build_pipeline(), settings).run()
    write_orders(tmp_path, "orders-3.jsonl", [{"order_id": 3, "status": "placed", "updated_at": "2026-01-03T00:00:00Z"}])
    opens.at_version.clear(), opens.latest.clear(), opens.exists.clear()

    result = Runner(build_pipeline(), settings).run()

    assert [r.status for r in result.records] == ["succeeded"] * 4
    layout = Layout.at(str(tmp_path))
    inputs = [layout.table(name) for name in ("bronze.orders", "silver.orders", "gold.status_counts")]
    assert opens.at_version == Counter({inputs[0]: 1}), "only the version silver.orders was built from, to find " \
        "the files added to its incremental input since"
    assert all(opens.exists[uri] <= 1 for uri in inputs), opens.exists
    counts = dict(pl.from_arrow(table(tmp_path, "gold.status_counts")).iter_rows())
    assert counts == {"paid": 1, "placed": 2}, "the inputs were read whole at the versions found"


def test_what_a_run_learnt_is_dropped_when_it_ends(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    write_deltalake(uri, pa.table({"a": [1]}))
    with snapshots.kept():
        with snapshots.kept():
            assert delta.latest_version(uri) == 0 and delta.table_exists(uri)
        assert snapshots.at_version(uri, 0) is not None, "kept until the outer block ends"
        shutil.rmtree(uri)
        assert delta.table_exists(uri), "a run deletes no table: known to exist for the rest of the block"
    assert snapshots.at_version(uri, 0) is None and not delta.table_exists(uri)
    write_deltalake(uri, pa.table({"a": [2, 3]}))
    assert delta.row_count(uri, "t", 0) == 2
    outside = delta.latest_version(uri)
    assert outside == 0 and snapshots.at_version(uri, 0) is None, "nothing is kept outside a block"


def test_a_table_deleted_and_built_again_between_runs_is_read_anew(tmp_path: Path) -> None:
    land_orders(tmp_path)
    settings = settings_at(tmp_path)
    Runner(build_pipeline(), settings).run()
    for folder in ("bronze", "silver", "gold"):
        shutil.rmtree(tmp_path / folder)
    shutil.rmtree(tmp_path / "landing" / "orders")
    write_orders(tmp_path, "orders-9.jsonl", [{"order_id": 9, "status": "shipped", "updated_at": "2026-02-01T00:00:00Z"}])

    result = Runner(build_pipeline(), settings).run(force=True)

    assert result.succeeded, [r.error for r in result.records if r.error]
    assert pl.from_arrow(table(tmp_path, "silver.orders"))["order_id"].to_list() == [9]
    assert dict(pl.from_arrow(table(tmp_path, "gold.status_counts")).iter_rows()) == {"shipped": 1}
