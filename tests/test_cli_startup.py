"""The `medallion` command starts light: its help, and the help of every command, load none of the engine's
heavy libraries, and reading commands load Ray only when they run something on it. Timings are measured by
`benchmarks/cli.py`; here the cause of a slow start (a heavy import at a module's top) is what fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("ray", "pyarrow", "deltalake", "pandas", "polars", "pandera", "pydantic", "duckdb", "mlflow", "feast",
         "pyiceberg", "sklearn", "prometheus_client")
"""Libraries `--help` must not load."""


def loaded_after(code: str, cwd: Path) -> list[str]:
    """The modules of `HEAVY` loaded once `code` has run in a fresh interpreter."""
    script = f"""
import json, sys
{code}
print(json.dumps(sorted(name for name in {HEAVY!r} if name in sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_help_of_every_command_loads_no_heavy_library(tmp_path: Path) -> None:
    code = """
import click
from engine.cli.main import main

def helps(command, path):
    yield path
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from helps(sub, [*path, name])

paths = list(helps(main, []))
for path in paths:
    try:
        main.main([*path, "--help"], prog_name="medallion", standalone_mode=False)
    except SystemExit:
        pass
assert len(paths) > 40, paths
"""
    assert loaded_after(code, tmp_path) == []


def test_a_mistyped_command_answers_without_loading_a_heavy_library(tmp_path: Path) -> None:
    code = """
from engine.cli.main import main
try:
    main.main(["statsu"], prog_name="medallion", standalone_mode=False)
except Exception as err:
    assert "statsu" in str(err), err
"""
    assert loaded_after(code, tmp_path) == []


def test_status_of_an_empty_root_loads_no_ray(tmp_path: Path) -> None:
    code = f"""
from engine.cli.main import main
main.main(["--root", {str(tmp_path / "lake")!r}, "status"], prog_name="medallion", standalone_mode=False)
"""
    assert "ray" not in loaded_after(code, tmp_path)
