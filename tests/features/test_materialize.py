"""Materialization leaves the online store (SQLite here, Redis in test_services.py) holding exactly the
point-in-time state of the table's current Delta version: changed rows rewritten, deleted entities removed,
only changes written when incremental, and skipped rows reported as a failure."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pytest
import yaml
from click.testing import CliRunner
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

from engine.cli.main import main
from engine.errors import FeatureStoreError
from engine.features import materialize as materialize_module
from engine.features.lineage import read_lineage
from engine.features.materialize import legacy_state_folder, materialize, state_folder
from engine.features.repo import render_config
from engine.layout import Layout
from engine.maintenance.pins import list_pins
from tests.features.conftest import REPO, store_over, table_path, write_table
from tests.features.faulty import FAULTY
from tests.features.synthetic import BASE, SLOT, customer, customer_rows, customer_view, latest_online

IDS = list(range(1, 47)) + [99]
END = BASE + 40 * SLOT
TABLE = "gold.customer_stats"


def online_values(store: Any) -> pl.DataFrame:
    """Spend and visits the online store returns for every id of `IDS` (nulls where it has none)."""
    values = store.get_online_features(features=["customer_stats:spend", "customer_stats:visits"],
                                       entity_rows=[{"customer_id": i} for i in IDS]).to_dict()
    return pl.DataFrame(values).select("customer_id", "spend", "visits")


def expected_values(root: Path, end: dt.datetime) -> pl.DataFrame:
    latest = latest_online(DeltaTable(table_path(root, TABLE)).to_pyarrow_table(), end)
    return pl.DataFrame({"customer_id": IDS}).join(latest.select("customer_id", "spend", "visits"),
                                                   on="customer_id", how="left")


def expected_changes(before: pl.DataFrame, after: pl.DataFrame) -> tuple[int, int]:
    """(rows to write, entities to delete) between two online states."""
    joined = after.join(before, on="customer_id", how="left", suffix="_old")
    differs = pl.any_horizontal([pl.col(c).ne_missing(pl.col(f"{c}_old")) for c in ("ts", "created", "spend", "visits")])
    written = joined.filter(pl.col("ts_old").is_null() | differs).height
    return written, before.join(after, on="customer_id", how="anti").height


def current(root: Path) -> Any:
    return DeltaTable(table_path(root, TABLE)).to_pyarrow_table()


def materializations(root: Path) -> list[tuple[str, int, int, list[str]]]:
    """The lineage rows materializations recorded: table, version read, rows written, views."""
    rows = read_lineage(str(root)).filter(pl.col("kind") == "materialize")
    return list(rows.select("table", "version", "rows", "views").iter_rows())


def test_incremental_materialization_writes_changes_and_removes_deleted_entities(
        ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    write_table(tmp_path, TABLE, customer_rows(rng))
    store = store_over(tmp_path, [customer, customer_view()], project="mat")

    [first] = materialize(store, end=END)
    before = latest_online(current(tmp_path), END)
    assert (first.written, first.deleted, first.online_rows, first.incremental) == (before.height, 0, before.height,
                                                                                     False)
    assert materializations(tmp_path) == [(TABLE, first.version, first.written, ["customer_stats"])]
    assert_frame_equal(online_values(store), expected_values(tmp_path, END), check_dtypes=False)

    table = DeltaTable(table_path(tmp_path, TABLE))
    in_window = before["customer_id"].to_list()
    changed, gone = in_window[:3], in_window[3:5]
    table.update(predicate=f"customer_id IN ({', '.join(map(str, changed))})", updates={"visits": "visits + 1"})
    table.delete(f"customer_id IN ({', '.join(map(str, gone))})")
    revert = in_window[5]
    table.delete(f"customer_id = {revert} AND ts = '{before.filter(pl.col('customer_id') == revert)['ts'][0]}'")
    write_table(tmp_path, TABLE, pl.DataFrame({
        "customer_id": [99], "ts": [END - SLOT], "created": [END - SLOT], "spend": [1.0], "visits": [1]},
        schema=pl.from_arrow(current(tmp_path)).schema).to_arrow())
    after = latest_online(current(tmp_path), END)
    written, deleted = expected_changes(before, after)

    with monkeypatch.context() as trap:  # the state is read and written by Ray tasks, not in this process
        trap.setattr(DeltaTable, "to_pyarrow_table", lambda *a, **k: pytest.fail("a table read whole here"))
        trap.setattr(materialize_module, "write_deltalake", lambda *a, **k: pytest.fail("the state written here"))
        [report] = materialize(store, end=END, incremental=True)

    assert report.incremental and report.version == DeltaTable(table_path(tmp_path, TABLE)).version()
    assert (report.written, report.deleted, report.online_rows) == (written, deleted, after.height)
    assert report.unchanged == after.height - written
    assert deleted >= len(gone) and written >= len(changed) + 1
    online = online_values(store)
    assert_frame_equal(online, expected_values(tmp_path, END), check_dtypes=False)
    assert online.filter(pl.col("customer_id").is_in(gone))["visits"].null_count() == len(gone)
    assert materializations(tmp_path)[-1] == (TABLE, report.version, report.written, ["customer_stats"])
    assert report.version > first.version

    write_table(tmp_path, TABLE, current(tmp_path), mode="overwrite")
    [rewritten] = materialize(store, end=END, incremental=True)
    assert (rewritten.written, rewritten.deleted, rewritten.unchanged) == (0, 0, after.height)

    later = END + 4 * SLOT
    [moved] = materialize(store, end=later, incremental=True)
    assert (moved.written, moved.deleted) == expected_changes(after, latest_online(current(tmp_path), later))
    assert moved.deleted > 0
    assert_frame_equal(online_values(store), expected_values(tmp_path, later), check_dtypes=False)

    historical = store.get_historical_features(
        entity_df=pd.DataFrame({"customer_id": IDS, "event_timestamp": [later] * len(IDS)}),
        features=["customer_stats:spend", "customer_stats:visits"]).to_df()
    assert_frame_equal(pl.from_pandas(historical).select("customer_id", "spend", "visits"),
                       online_values(store), check_dtypes=False)


def test_rows_missing_from_the_online_store_fail_the_materialization(ray_local: None, tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    write_table(tmp_path, TABLE, customer_rows(rng))
    store = store_over(tmp_path, [customer, customer_view()], project="tamper")
    [done] = materialize(store, end=END)
    with sqlite3.connect(f"{Layout.at(str(tmp_path)).features()}/online.db") as connection:
        connection.execute("DELETE FROM tamper_customer_stats WHERE entity_key = "
                           "(SELECT entity_key FROM tamper_customer_stats LIMIT 1)")

    with pytest.raises(FeatureStoreError, match=rf"`customer_stats` has {done.online_rows - 1} rows .* "
                                                rf"{done.online_rows} were expected"):
        materialize(store, end=END, incremental=True)

    [rebuilt] = materialize(store, end=END)
    assert rebuilt.online_rows == done.online_rows
    assert_frame_equal(online_values(store), expected_values(tmp_path, END), check_dtypes=False)


@pytest.mark.parametrize("fault", ["drop", "alter"])
def test_a_row_the_online_store_loses_or_alters_fails_the_materialization_and_records_nothing(
        ray_local: None, tmp_path: Path, fault: str) -> None:
    write_table(tmp_path, TABLE, customer_rows(np.random.default_rng(14)))
    damaged = latest_online(current(tmp_path), END)["customer_id"][0]
    settings = {"project": "faulty", "online_store": {"type": FAULTY, "path": str(tmp_path / "faulty.db"),
                                                      "damaged_key": damaged, "fault": fault}}
    store = store_over(tmp_path, [customer, customer_view()], **settings)
    overlay = tmp_path / "faulty.yaml"
    overlay.write_text(yaml.safe_dump(settings))
    failure = r"materializing `customer_stats`: 1 row\(s\) did not reach the online store as written"

    with pytest.raises(FeatureStoreError, match=failure):
        materialize(store, end=END)
    result = CliRunner().invoke(main, ["--root", str(tmp_path), "features", "--repo", str(REPO), "--feast-config",
                                       str(overlay), "materialize", "--end", END.isoformat()])

    assert result.exit_code == 1
    assert re.search(failure, " ".join(result.output.split()))
    assert materializations(tmp_path) == []
    assert not list(Path(Layout.at(str(tmp_path)).features(), "state").rglob("_delta_log"))
    assert store.get_feature_view("customer_stats", allow_registry_cache=False).materialization_intervals == []


def redis_config(root: Path, connection: str) -> Any:
    return render_config(str(root), overrides={"online_store": {"type": "redis", "connection_string": connection}})


def test_the_state_folder_names_the_online_store_without_its_password(tmp_path: Path) -> None:
    view = customer_view()
    folder = state_folder(redis_config(tmp_path, "redis:6379,db=1,password=hunter22,ssl=true"), view)

    assert state_folder(redis_config(tmp_path, "redis:6379,db=1,password=other-secret,ssl=true"), view) == folder
    assert state_folder(redis_config(tmp_path, "redis:6379,password=hunter22,db=1"), view) == folder
    assert "hunter22" not in folder
    for other in ("redis:6380,db=1,password=hunter22", "redis:6379,db=2,password=hunter22",
                  "cache:6379,db=1,password=hunter22"):
        assert state_folder(redis_config(tmp_path, other), view) != folder
    sqlite = render_config(str(tmp_path), overrides={"online_store": {"type": "sqlite", "path": "a.db"}})
    assert state_folder(sqlite, view) != state_folder(render_config(str(tmp_path)), view)


def test_an_incremental_run_takes_the_state_from_its_legacy_folder(ray_local: None, tmp_path: Path) -> None:
    """State kept under the legacy name (a hash of all the online store's settings, its password included) is
    moved to the new name, so the incremental run after an upgrade writes nothing instead of rebuilding."""
    write_table(tmp_path, TABLE, customer_rows(np.random.default_rng(15)))
    store = store_over(tmp_path, [customer, customer_view()], project="legacy")
    [first] = materialize(store, end=END)
    view = store.get_feature_view("customer_stats")
    folder, legacy = state_folder(store.config, view), legacy_state_folder(store.config, view)
    Path(legacy).parent.mkdir(parents=True)
    shutil.move(folder, legacy)

    [again] = materialize(store, end=END, incremental=True)

    assert (again.incremental, again.written, again.deleted, again.online_rows) == (True, 0, 0, first.online_rows)
    assert DeltaTable.is_deltatable(folder) and not Path(legacy).exists()
    assert_frame_equal(online_values(store), expected_values(tmp_path, END), check_dtypes=False)


def test_the_version_read_is_pinned_while_the_materialization_runs(ray_local: None, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A vacuum during a materialization keeps the files of the version it reads (vacuum honours pins)."""
    from engine.features import materialize as module

    write_table(tmp_path, TABLE, customer_rows(np.random.default_rng(13)))
    store = store_over(tmp_path, [customer, customer_view()], project="pinned")
    layout = Layout.at(str(tmp_path))
    seen: list[list[Any]] = []
    reading = module.latest_rows

    def observed(*args: Any, **kwargs: Any) -> Any:
        seen.append([(p.table, p.version, p.who, p.until is not None) for p in list_pins(layout)])
        return reading(*args, **kwargs)

    monkeypatch.setattr(module, "latest_rows", observed)
    [done] = materialize(store, end=END)
    assert seen == [[(TABLE, done.version, "materialization of feature view customer_stats", True)]]
    assert list_pins(layout) == []


def test_feast_materialize_api_runs_the_delta_engine_against_the_end_time_not_the_wall_clock(
        ray_local: None, tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    write_table(tmp_path, TABLE, customer_rows(rng))
    store = store_over(tmp_path, [customer, customer_view()], project="api")
    assert type(store._get_provider().batch_engine).__name__ == "DeltaRayComputeEngine"

    store.materialize(start_date=BASE - dt.timedelta(days=1), end_date=END)
    assert_frame_equal(online_values(store), expected_values(tmp_path, END), check_dtypes=False)

    DeltaTable(table_path(tmp_path, TABLE)).delete("customer_id < 20")
    store.materialize_incremental(end_date=END + SLOT)
    assert_frame_equal(online_values(store), expected_values(tmp_path, END + SLOT), check_dtypes=False)
    assert online_values(store).filter(pl.col("customer_id") < 20)["spend"].null_count() == 19
