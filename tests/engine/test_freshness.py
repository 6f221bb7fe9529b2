"""Freshness targets: durations, table age from data commits or event time, partition age, `status --late`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable, write_deltalake
from deltalake.transaction import CommitProperties

from engine.cli.main import main
from engine.errors import PipelineDefinitionError
from engine.freshness import Freshness, parse_duration
from engine.ingest.sources import FileSource
from engine.pipeline import Pipeline
from engine.staleness import TableFreshness, table_freshness
from engine.tables import delta
from engine.tables.delta_age import last_data_commit
from engine.tables.files import DataFile
from engine.tables.formats import DeltaStore

UTC = dt.UTC
DAY = dt.timedelta(days=1)


def commit(uri: Path, rows: pa.Table, operation: str | None = "run", mode: str = "append",
           **options: Any) -> int:
    """Write `rows` with deltalake as a commit carrying `medallion.operation` (none when None)."""
    metadata = {} if operation is None else {"medallion.operation": operation, "medallion.pipeline": "p"}
    write_deltalake(str(uri), rows, mode=mode, commit_properties=CommitProperties(custom_metadata=metadata),
                    **options)
    return DeltaTable(str(uri)).version()


def committed_at(uri: Path, version: int) -> dt.datetime:
    entry = next(c for c in DeltaTable(str(uri)).history() if c["version"] == version)
    return dt.datetime.fromtimestamp(entry["timestamp"] / 1000, UTC)


def orders(*days: dt.date, hour: int = 12) -> pa.Table:
    return pa.table({
        "order_id": pa.array(range(len(days)), pa.int64()),
        "order_date": pa.array(days, pa.date32()),
        "order_ts": pa.array([dt.datetime.combine(d, dt.time(hour), UTC) for d in days], pa.timestamp("us", "UTC")),
    })


@pytest.mark.parametrize(("text", "expected"), [
    ("30m", dt.timedelta(minutes=30)), ("6h", dt.timedelta(hours=6)), ("1d", DAY), (" 2W ", dt.timedelta(weeks=2)),
    ("90s", dt.timedelta(seconds=90)), ("1.5h", dt.timedelta(minutes=90)), (dt.timedelta(hours=3), dt.timedelta(hours=3)),
])
def test_durations_parse(text: Any, expected: dt.timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["6", "h", "6 hours", "-1h", "0m", "1d2h", "", 6, dt.timedelta(0)])
def test_bad_durations_are_a_definition_error_naming_the_value(bad: Any) -> None:
    with pytest.raises(PipelineDefinitionError, match="max_age"):
        Freshness(max_age=bad)


def test_bad_targets_are_rejected_when_declared() -> None:
    with pytest.raises(PipelineDefinitionError, match="partition_column and partition_max_age together"):
        Freshness(max_age="1h", partition_column="order_date")
    with pytest.raises(PipelineDefinitionError, match="give max_age"):
        Freshness()
    with pytest.raises(PipelineDefinitionError, match="partition_max_age `'yesterday'`"):
        Freshness(partition_column="order_date", partition_max_age="yesterday")
    pipeline = Pipeline("p")
    with pytest.raises(PipelineDefinitionError, match="table `bronze.a`: freshness must be a Freshness"):
        pipeline.ingest("bronze.a", FileSource("a", "jsonl"), freshness="6h")  # type: ignore[arg-type]
    declared = pipeline.ingest("bronze.b", FileSource("b", "jsonl"), freshness=Freshness(max_age="6h"))
    assert declared.freshness == Freshness(max_age=dt.timedelta(hours=6))


def test_fresh_then_late_by_the_age_of_the_last_data_commit(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    commit(uri, orders(dt.date(2026, 1, 1)))
    at = committed_at(uri, 0)
    target = Freshness(max_age="6h")
    fresh = table_freshness(DeltaStore(), str(uri), "silver.t", target, now=at + dt.timedelta(hours=5))
    assert fresh.state == "fresh" and fresh.age == dt.timedelta(hours=5) and fresh.reasons == ()
    late = table_freshness(DeltaStore(), str(uri), "silver.t", target, now=at + dt.timedelta(hours=7))
    assert late.state == "late" and late.age == dt.timedelta(hours=7)
    assert late.reason == f"data commit v0 at {at.isoformat()} is 7h old, target 6h"
    assert late.summary() == "late by 1 h" and late.details() == "age 7h of 6h"


def test_maintenance_restore_protect_and_backfill_commits_do_not_count(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    commit(uri, orders(dt.date(2026, 1, 1)))
    commit(uri, orders(dt.date(2026, 1, 2)))                   # v1: the newest data
    commit(uri, orders(dt.date(2026, 1, 3)), "backfill")        # v2: a backfill re-commits old days
    table = DeltaTable(str(uri))
    table.optimize.compact(commit_properties=CommitProperties(custom_metadata={"medallion.operation": "optimize"}))
    table = DeltaTable(str(uri))
    table.alter.set_table_properties({"delta.dataSkippingStatsColumns": "order_id"},
                                     commit_properties=CommitProperties(custom_metadata={"medallion.operation": "protect"}))
    commit(uri, orders(dt.date(2026, 1, 4)), None, mode="overwrite")   # v5: another writer: counts
    DeltaTable(str(uri)).restore(4, commit_properties=CommitProperties(
        custom_metadata={"medallion.operation": "restore", "medallion.restored_to": 4}))   # v6 undoes v5
    commits = {c["version"]: c for c in DeltaTable(str(uri)).history()}
    assert [commits[v]["operation"] for v in (3, 4, 6)] == ["OPTIMIZE", "SET TBLPROPERTIES", "RESTORE"]
    found = last_data_commit(str(uri), "silver.t")
    assert found is not None and found["version"] == 1
    later = committed_at(uri, 6) + dt.timedelta(hours=1)
    freshness = table_freshness(DeltaStore(), str(uri), "silver.t", Freshness(max_age="1h"), now=later)
    assert freshness.age_source.startswith("data commit v1 ")  # type: ignore[union-attr]
    assert freshness.age == later - committed_at(uri, 1)
    assert last_data_commit(str(uri), "silver.t", version=5)["version"] == 5  # type: ignore[index]


def test_metadata_only_and_empty_run_commits_do_not_count(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    commit(tmp_path / "t", orders(dt.date(2026, 1, 1)))
    assert delta.commit_files(uri, [], mode="append", metadata={"operation": "run"}, commit_empty=True) == 1
    assert last_data_commit(uri, "silver.t")["version"] == 0  # type: ignore[index]
    assert table_freshness(DeltaStore(), uri, "silver.t", Freshness(max_age="1h")).age_source.startswith("data commit v0 ")  # type: ignore[union-attr]


def test_a_table_without_data_commits_or_never_built_is_unknown(tmp_path: Path) -> None:
    never = table_freshness(DeltaStore(), str(tmp_path / "nothing"), "gold.x", Freshness(max_age="1h"))
    assert never.state == "unknown" and never.reason == "never built"
    uri = tmp_path / "t"
    commit(uri, orders(dt.date(2026, 1, 1)), "backfill")
    only_backfill = table_freshness(DeltaStore(), str(uri), "gold.t", Freshness(max_age="1h"))
    assert only_backfill.state == "unknown" and "no commit brought data" in only_backfill.reason
    untracked = table_freshness(DeltaStore(), str(uri), "gold.t", None)
    assert untracked.state == "untracked" and untracked.age is None


def test_event_time_column_measures_the_age_so_a_recommit_of_old_data_is_not_fresh(tmp_path: Path) -> None:
    uri = tmp_path / "t"
    commit(uri, orders(dt.date(2026, 1, 1), dt.date(2026, 1, 3), dt.date(2026, 1, 2)))
    now = dt.datetime(2026, 1, 3, 20, tzinfo=UTC)
    target = Freshness(max_age="6h", time_column="order_ts")
    assert table_freshness(DeltaStore(), str(uri), "gold.t", target, now=now).age == dt.timedelta(hours=8)
    commit(uri, orders(dt.date(2025, 12, 1)), mode="overwrite")        # a run re-committing old data
    late = table_freshness(DeltaStore(), str(uri), "gold.t", target, now=now)
    assert late.state == "late" and late.age_source == "newest order_ts 2025-12-01T12:00:00+00:00"
    missing = table_freshness(DeltaStore(), str(uri), "gold.t", Freshness(max_age="6h", time_column="nope"), now=now)
    assert missing.state == "unknown" and "`nope` is not a column of the table" in missing.reason


def test_event_time_without_log_statistics_comes_from_the_parquet_footers(tmp_path: Path) -> None:
    """The engine's writer keeps min/max of integer and date columns only; timestamps come from footers."""
    uri = tmp_path / "t"
    uri.mkdir()
    rows = orders(dt.date(2026, 1, 1), dt.date(2026, 1, 4))
    pq.write_table(rows, uri / "part-0.parquet")
    stats = '{"numRecords": 2, "nullCount": {}, "minValues": {"order_id": 0}, "maxValues": {"order_id": 1}}'
    data = DataFile("part-0.parquet", (uri / "part-0.parquet").stat().st_size, 2, stats, 0, rows.schema)
    delta.commit_files(str(uri), [data], mode="append", metadata={"operation": "run"})
    actions = pa.table(DeltaTable(str(uri)).get_add_actions(flatten=True))
    assert "max.order_ts" not in actions.column_names or actions.column("max.order_ts").null_count == 1
    now = dt.datetime(2026, 1, 5, tzinfo=UTC)
    freshness = table_freshness(DeltaStore(), str(uri), "gold.t", Freshness(max_age="1d", time_column="order_ts"), now=now)
    assert freshness.age == dt.timedelta(hours=12) and freshness.state == "fresh"


@pytest.mark.parametrize("partitioned", [True, False])
def test_a_backfill_of_an_old_partition_does_not_hide_a_stale_recent_partition(tmp_path: Path,
                                                                                 partitioned: bool) -> None:
    uri = tmp_path / "t"
    options = {"partition_by": ["order_date"]} if partitioned else {}
    commit(uri, orders(dt.date(2026, 1, 8), dt.date(2026, 1, 10), dt.date(2026, 1, 9)), **options)
    target = Freshness(max_age="30d", partition_column="order_date", partition_max_age="36h")
    now = dt.datetime(2026, 1, 11, 10, tzinfo=UTC)
    fresh = table_freshness(DeltaStore(), str(uri), "gold.t", target, now=now)
    assert fresh.state == "fresh" and fresh.partition_age == dt.timedelta(hours=34)
    assert fresh.newest_partition == dt.date(2026, 1, 10)
    assert fresh.summary() == "fresh" and fresh.details().endswith(", order_date 1d 10h of 1d 12h")
    later = dt.datetime(2026, 1, 13, 10, tzinfo=UTC)
    commit(uri, orders(dt.date(2026, 1, 2)), "backfill", **options)   # commits now, for an old day
    stale = table_freshness(DeltaStore(), str(uri), "gold.t", target, now=later)
    assert stale.state == "late" and stale.newest_partition == dt.date(2026, 1, 10)
    assert stale.reasons == ("newest partition order_date=2026-01-10 is 3d 10h old, target 1d 12h",)
    assert stale.summary() == "late by 1 d 22 h"


def test_status_shows_freshness_and_late_exits_non_zero(tmp_path: Path) -> None:
    now = dt.datetime.now(UTC)
    layer = tmp_path / "gold"
    commit(layer / "recent", orders(now.date()))
    commit(layer / "stale", orders(dt.date(2020, 1, 1)))
    reference = f"{__name__}:STATUS_PIPELINE"
    runner = CliRunner()
    result = runner.invoke(main, ["--root", str(tmp_path), "status", "--pipeline", reference])
    assert result.exit_code == 0, result.output
    assert "freshness" in result.output and "late: gold.stale: newest order_ts 2020-01-01T12:00:00+00:00" in result.output
    assert "gold.recent" in result.output and "late: gold.recent" not in result.output
    assert "gold.unbuilt" in result.output and "freshness unknown: gold.unbuilt: never built" in result.output
    assert "unknown (never built)" in result.output and "fresh " in result.output and "ages" not in result.output
    result = runner.invoke(main, ["--root", str(tmp_path), "status", "--pipeline", reference, "--details"])
    assert result.exit_code == 0 and "ages" in result.output and " of 3d" in result.output, result.output
    result = runner.invoke(main, ["--root", str(tmp_path), "status", "--pipeline", reference, "--late"])
    assert result.exit_code == 1, result.output
    (layer / "stale" / "_delta_log").rename(layer / "stale" / "_gone")
    result = runner.invoke(main, ["--root", str(tmp_path), "status", "--pipeline", reference, "--late"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("age", "partition_age", "expected"), [
    (dt.timedelta(hours=9), None, "late by 3 h"),
    (dt.timedelta(days=2, hours=10, minutes=5), None, "late by 2 d 4 h"),
    (dt.timedelta(hours=1), dt.timedelta(hours=45, seconds=40), "late by 9 h 40 s"),
    (dt.timedelta(hours=5), dt.timedelta(hours=30), "fresh"),
])
def test_summary_says_in_words_how_late(age: dt.timedelta, partition_age: dt.timedelta | None,
                                         expected: str) -> None:
    target = Freshness(max_age="6h", partition_column="day", partition_max_age="36h")
    state = "fresh" if expected == "fresh" else "late"
    assert TableFreshness("gold.t", target, state, age, partition_age=partition_age).summary() == expected
    never = table_freshness(DeltaStore(), "/nonexistent/t", "gold.t", target)
    assert (never.summary(), never.details()) == ("unknown (never built)", "")


def _status_pipeline() -> Pipeline:
    pipeline = Pipeline("status_check")
    target = Freshness(max_age="3d", time_column="order_ts")
    pipeline.ingest("gold.recent", FileSource("recent", "jsonl"), freshness=target)
    pipeline.ingest("gold.stale", FileSource("stale", "jsonl"), freshness=target)
    pipeline.ingest("gold.unbuilt", FileSource("unbuilt", "jsonl"), freshness=target)
    return pipeline


STATUS_PIPELINE = _status_pipeline()
