"""`python -m benchmarks.commands`: every everyday command it times runs to its end on a built root, and the
page's table names each with its target."""

from __future__ import annotations

from pathlib import Path

from deltalake import DeltaTable

from benchmarks import commands
from engine.layout import Layout
from tests.conftest import RetailBuild


def test_every_command_is_measured_on_a_built_root(retail_build: RetailBuild, tmp_path: Path) -> None:
    (tmp_path / "demo").symlink_to(retail_build.root)  # stands for the demo: the retail pipeline, built
    runs = DeltaTable(Layout.at(str(retail_build.root)).runs()).version()
    results = commands.measure_commands(tmp_path, repeats=1)
    assert DeltaTable(Layout.at(str(retail_build.root)).runs()).version() == runs  # the run had nothing to do
    assert list(results) == list(commands.COMMANDS)
    assert all(r["wall_s"] > 0 and r["cpu_s"] > 0 and r["runs"] == 1 for r in results.values())
    assert {name: r["target_s"] for name, r in results.items()} == {
        "--help": 0.5, "status": 1.0, "history": 1.0, "catalog": 1.0, "show": None, "run, nothing new": 2.5}
    lines = commands.table(results)
    assert lines[2].startswith("| `medallion --help` |") and lines[2].endswith("| 0.5 |")
    assert len(lines) == 2 + len(commands.COMMANDS)
