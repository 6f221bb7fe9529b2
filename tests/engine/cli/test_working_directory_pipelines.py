"""A `module:attribute` pipeline reference finds a module of the current folder without PYTHONPATH, as
`python -m` does, through the installed command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MEDALLION = str(Path(sys.executable).with_name("medallion"))

MODULE = '''
import ray.data

from engine import FileSource, Overwrite, Pipeline

pipeline = Pipeline("local_shop")
pipeline.ingest("bronze.orders", FileSource("orders", "jsonl"))


@pipeline.table("silver.orders", kind=Overwrite())
def orders(bronze_orders: ray.data.Dataset) -> ray.data.Dataset:
    return bronze_orders
'''


def medallion(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    return subprocess.run([MEDALLION, "--root", str(folder / "lake"), *args], capture_output=True, text=True,
                          cwd=folder, env=environment, timeout=120)


def test_a_module_of_the_working_directory_is_found_by_plan_and_catalog(tmp_path: Path) -> None:
    (tmp_path / "mymodule.py").write_text(MODULE)
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "pipeline.py").write_text(MODULE)
    landing = tmp_path / "lake" / "landing" / "orders"
    landing.mkdir(parents=True)
    (landing / "1.jsonl").write_text('{"id": 1}\n')
    planned = medallion(tmp_path, "plan", "mymodule:pipeline")
    assert planned.returncode == 0, planned.stderr
    assert "silver.orders" in planned.stdout and "local_shop" in planned.stdout
    listed = medallion(tmp_path, "catalog", "--pipeline", "shop.pipeline:pipeline")
    assert listed.returncode == 0, listed.stderr
    assert "silver.orders" in listed.stdout
    missing = medallion(tmp_path, "plan", "elsewhere:pipeline")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: cannot load pipeline `elsewhere:pipeline`: No module named 'elsewhere'"
