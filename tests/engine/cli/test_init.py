"""`medallion init NAME` writes a project that runs at once: `medallion run` in its folder builds the gold table,
and its own test passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

from engine.cli.scaffold import package_name

BIN = Path(sys.executable).parent
MEDALLION = str(BIN / "medallion")


def medallion(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items()
                   if name != "PYTHONPATH" and not name.startswith("MEDALLION__")}
    environment |= {"RAY_AUTH_MODE": "disabled", "MEDALLION__RAY__NUM_CPUS": "1"}
    return subprocess.run([MEDALLION, *args], capture_output=True, text=True, cwd=folder, env=environment,
                          timeout=300)


@pytest.mark.slow
def test_a_new_project_runs_shows_its_gold_table_and_passes_its_test(tmp_path: Path) -> None:
    created = medallion(tmp_path, "init", "shop")
    assert created.returncode == 0, created.stderr
    project = tmp_path / "shop"
    assert "medallion run shop.pipeline:pipeline" in created.stdout
    assert "medallion run shop.pipeline:pipeline" in (project / "README.md").read_text()
    ran = medallion(project, "run", "shop.pipeline:pipeline")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert DeltaTable(str(project / "lakehouse" / "gold" / "daily_revenue")).to_pyarrow_table().num_rows == 2
    shown = medallion(project, "status")
    assert shown.returncode == 0, shown.stderr
    gold = next(line for line in shown.stdout.splitlines() if "gold.daily_revenue" in line)
    assert "succeeded" in gold
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"],
                            capture_output=True, text=True, cwd=project, timeout=300,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "1 passed" in tested.stdout


def test_init_refuses_a_folder_that_is_not_empty_and_a_name_that_makes_no_package(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    refused = medallion(tmp_path, "init", "taken")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "error: `taken` already exists and is not an empty folder; choose another NAME"
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    numeric = medallion(tmp_path, "init", "42")
    assert numeric.returncode == 1 and numeric.stderr.startswith("error: cannot name a Python package after `42`")
    assert not (tmp_path / "42").exists()
    hiding = medallion(tmp_path, "init", "Engine")
    assert hiding.returncode == 1
    assert hiding.stderr.strip() == ("error: a module `engine` is installed already and the project's package would "
                                     "hide it; choose another NAME")
    (tmp_path / "empty").mkdir()
    assert medallion(tmp_path, "init", "empty").returncode == 0
    assert (tmp_path / "empty" / "empty" / "pipeline.py").exists()


@pytest.mark.parametrize(("name", "package"), [("shop", "shop"), ("My-Shop 2", "my_shop_2"), ("__x__", "x")])
def test_package_names(name: str, package: str) -> None:
    assert package_name(name) == package
