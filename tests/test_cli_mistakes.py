"""Mistakes a user can make with the installed `medallion` command: each ends in one `error:` line naming the
file, option or table and the fix, with exit status 1 and no traceback; values holding rich markup print as
they are."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner
from deltalake import write_deltalake

from engine import status
from engine.cli.main import main
from engine.layout import Layout
from engine.quality.metrics import append_metrics
from engine.quality.results import CheckResult
from engine.runlog import RunRecord, append_records

MEDALLION = str(Path(sys.executable).parent / "medallion")
REPO = Path(__file__).resolve().parents[1]
ENVIRONMENT = os.environ | {"RAY_AUTH_MODE": "disabled"}
PROJECT = "mistakes"


def medallion(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`medallion ARGS` in its own process, run in `cwd` (so that no `medallion.yaml` is picked up)."""
    return subprocess.run([MEDALLION, *args], capture_output=True, text=True, env=ENVIRONMENT, cwd=cwd, timeout=300)


def one_error(cwd: Path, *args: str) -> str:
    """The single `error:` line `medallion ARGS` ends in with exit status 1, nothing else printed."""
    done = medallion(cwd, *args)
    output = done.stdout + done.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert done.returncode == 1, output
    assert "Traceback" not in output and len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def write_table(root: Path, table: str, data: pa.Table) -> None:
    write_deltalake(Layout.at(str(root)).table(table), data)


def test_a_settings_file_that_is_not_valid_yaml_is_named_with_where_it_stops(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("storage:\n  root: [unclosed\n")
    line = one_error(tmp_path, "--config", "broken.yaml", "status")
    assert "config file `broken.yaml` is not valid YAML at line 3" in line and "fix the YAML" in line


def test_a_settings_file_holding_a_list_is_named_with_the_shape_it_needs(tmp_path: Path) -> None:
    (tmp_path / "listed.yaml").write_text("- storage\n- run\n")
    line = one_error(tmp_path, "--config", "listed.yaml", "status")
    assert "config file `listed.yaml` holds a list" in line and "mapping of sections" in line


def test_a_version_past_the_newest_names_the_newest(tmp_path: Path) -> None:
    write_table(tmp_path, "silver.orders", pa.table({"order_id": [1, 2]}))
    line = one_error(tmp_path, "--root", str(tmp_path), "show", "silver.orders", "--as-of", "99")
    assert line == ("error: table `silver.orders` has no version 99: its newest is version 0; give a version up to "
                    "0 or an ISO-8601 time")


@pytest.mark.parametrize("command", [("show",), ("history",), ("diff", "--from", "0"), ("restore", "--version", "0"),
                                     ("maintain", "pin"), ("backfill", "--from", "2026-01-01", "--to", "2026-01-02")],
                         ids=lambda command: command[0])
def test_a_mistyped_table_names_the_closest_tables(tmp_path: Path, command: tuple[str, ...]) -> None:
    for table in ("silver.orders", "silver.order_items", "gold.revenue"):
        write_table(tmp_path, table, pa.table({"id": [1]}))
    name, *options = command
    arguments = [name, "silver.ordrs", *options] if name != "maintain" else ["maintain", "pin", "silver.ordrs",
                                                                            "--who", "a reader"]
    line = one_error(tmp_path, "--root", str(tmp_path), *arguments)
    assert line.startswith(f"error: no table `silver.ordrs` under {tmp_path}; did you mean `silver.orders`")
    assert "gold.revenue" not in line


def test_a_run_over_an_empty_root_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    root = tmp_path / "lakehuose"
    line = one_error(tmp_path, "--root", str(root), "run", "retail")
    assert line == (f"error: no landing files under {root}/landing; run `medallion generate retail` or point --root "
                    "at your lakehouse")
    assert not root.exists()


@pytest.fixture(scope="module")
def feature_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with one small customer feature table and a Feast registry (project `mistakes`) applied over it."""
    from tests.features.conftest import store_over
    from tests.features.synthetic import BASE, customer, customer_view

    root = tmp_path_factory.mktemp("features")
    write_table(root, "gold.customer_stats", pa.table({
        "customer_id": [1], "ts": [BASE], "created": [BASE], "spend": [1.5], "visits": [2]}))
    store_over(root, [customer, customer_view()], project=PROJECT)
    (root / "overlay.yaml").write_text(f"project: {PROJECT}\n")
    return root


def feature_lookup(root: Path, *args: str) -> str:
    return one_error(root, "--root", str(root), "features", "--repo", str(REPO / "features"), "--feast-config",
                     str(root / "overlay.yaml"), "get", *args)


def test_an_unknown_feature_service_is_named_with_the_known_ones(feature_root: Path) -> None:
    line = feature_lookup(feature_root, "--service", "nope", "--entity", "customer_id=1")
    assert line == (f"error: --service `nope`: no such feature service in project `{PROJECT}` (known: none); define "
                    "it and run `medallion features apply`")


def test_an_entity_value_of_the_wrong_type_names_the_option_and_the_type(feature_root: Path) -> None:
    line = feature_lookup(feature_root, "--feature", "customer_stats:spend", "--entity", "customer_id=abc")
    assert line == "error: --entity customer_id=abc: `customer_id` is a key of type int64; pass a value of that type"


def test_a_cell_holding_markup_is_shown_as_it_is(tmp_path: Path) -> None:
    write_table(tmp_path, "silver.notes", pa.table({"note": ["[/]", "[bold]loud[/bold]"]}))
    done = medallion(tmp_path, "--root", str(tmp_path), "show", "silver.notes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[/]" in done.stdout and "[bold]loud[/bold]" in done.stdout


def test_lineage_and_quality_of_a_mistyped_table_name_the_closest_recorded_ones(tmp_path: Path) -> None:
    layout = Layout.at(str(tmp_path))
    now = datetime.now(UTC)
    append_records(layout.runs(), [RunRecord("run-1", "shop", table, "succeeded", now, now, output_version=0)
                                   for table in ("silver.orders", "silver.order_items", "gold.revenue")])
    append_metrics(layout.quality(), "shop", "run-1", [
        CheckResult(table=table, check="id:not_null", action="warn", rows_checked=1, rows_failed=0)
        for table in ("silver.orders", "gold.revenue")])
    for command, start in ((("lineage", "silver.ordrs"), "no run built `silver.ordrs`"),
                           (("quality", "silver.ordrs"), "no check results recorded for table `silver.ordrs`")):
        line = one_error(tmp_path, "--root", str(tmp_path), *command)
        assert line.startswith(f"error: {start}") and "did you mean `silver.orders`" in line, line
        assert "gold.revenue" not in line


def test_a_check_pattern_holding_brackets_is_shown_as_it_is(tmp_path: Path) -> None:
    check = "sku:regexp_matches(sku, '[a-z0-9]+')"
    append_metrics(Layout.at(str(tmp_path)).quality(), "shop", "run-1", [
        CheckResult(table="silver.products", check=check, action="warn", rows_checked=10, rows_failed=1)])
    done = medallion(tmp_path, "--root", str(tmp_path), "quality")
    assert done.returncode == 0, done.stdout + done.stderr
    assert check in done.stdout


def test_an_unexpected_exception_ends_in_one_line_and_its_traceback_is_shown_with_verbose(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("the [bold]disk[/bold] is gone")

    monkeypatch.setattr(status, "table_statuses", broken)
    quiet = CliRunner().invoke(main, ["--root", str(tmp_path), "status"])
    assert quiet.exit_code == 1 and quiet.output.splitlines() == [
        "error: unexpected RuntimeError: the [bold]disk[/bold] is gone; run with `medallion --verbose ...` for the "
        "traceback"]
    verbose = CliRunner().invoke(main, ["--root", str(tmp_path), "--verbose", "status"])
    assert isinstance(verbose.exception, RuntimeError)
