"""pandera's data synthesis is left out of the engine's Ray workers and command line (hypothesis, which pandera
imports when it is installed, is not loaded there), and kept in any other process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import ray

REPO = Path(__file__).resolve().parents[2]
STRATEGIES_STATE = """
import pandera.backends.polars.builtin_checks
from pandera.strategies import base_strategies
print(json.dumps(["hypothesis" in sys.modules, base_strategies.HAS_HYPOTHESIS]))
"""


def run_python(code: str, cwd: Path) -> list[bool]:
    done = subprocess.run([sys.executable, "-c", f"import json, sys\n{code}\n{STRATEGIES_STATE}"], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@ray.remote
def strategies_in_a_worker() -> tuple[bool, bool, int]:
    import importlib
    import os
    import sys

    from engine.quality.validate import validate_batch  # what a write task loads to check rows

    assert validate_batch
    strategies = importlib.import_module("pandera.strategies.base_strategies")  # loaded once a batch is validated
    return "hypothesis" in sys.modules, strategies.HAS_HYPOTHESIS, os.getpid()


@pytest.mark.usefixtures("ray_local")
def test_a_ray_worker_validates_without_loading_hypothesis() -> None:
    fresh = {"env_vars": {"MEDALLION_TEST_WORKER": uuid.uuid4().hex}}  # a worker of its own, new for this test
    loaded, synthesis, pid = ray.get(strategies_in_a_worker.options(runtime_env=fresh).remote())
    assert pid != os.getpid()
    assert (loaded, synthesis) == (False, False)


def test_the_command_line_loads_pandera_without_hypothesis(tmp_path: Path) -> None:
    command = ("from engine.cli.main import main\n"
               f"main.main(['--root', {str(tmp_path)!r}, 'status'], prog_name='medallion', standalone_mode=False)")
    assert run_python(command, tmp_path) == [False, False]


def test_any_other_process_keeps_pandera_as_it_is(tmp_path: Path) -> None:
    assert run_python("import engine, pandera.polars", tmp_path) == [True, True]
