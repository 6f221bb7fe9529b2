"""`python -m benchmarks.report --steps ...`: only the chosen steps are measured again, the others keep their
results, and the page says when and under what load each re-measured step ran."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import report


def test_chosen_steps_are_measured_again_and_the_others_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "performance.json"
    previous = json.loads(report.RAW.read_text())
    previous["failed"] = {"merge": "RuntimeError: out of disk"}
    raw.write_text(json.dumps(previous))
    ran: list[str] = []

    def steps(_: argparse.Namespace) -> dict[str, Any]:
        def measured(name: str) -> Any:
            ran.append(name)
            return {"startup": {"import_s": 9.5, "noop_run_s": 7.25}}.get(name, previous.get(name))
        return {name: (lambda name=name: measured(name)) for name in report.STEPS}

    monkeypatch.setattr(report, "step_functions", steps)
    results = report.measure_all(argparse.Namespace(steps=["startup", "merge"]), raw)

    assert ran == ["startup", "merge"]
    assert results["startup"] == {"import_s": 9.5, "noop_run_s": 7.25}
    assert results["tpch"] == previous["tpch"] and results["date"] == previous["date"]
    assert "merge" not in results.get("failed", {}), "a step measured again forgets its earlier failure"
    assert set(results["measured"]) == set(previous.get("measured", {})) | {"startup", "merge"}
    assert json.loads(raw.read_text()) == results
    page = report.render(results)
    merge_section = page.split("## Distributed merge")[1].split("## Feature store")[0]
    assert f"Measured on {results['measured']['merge']['date']} (`--steps merge`)" in merge_section
    assert "importing the engine's CLI: 9.5 s" in page


def test_an_unknown_step_is_refused_with_the_known_ones() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="unknown step.*mege.*the steps are tpch, large, startup"):
        report._steps("merge,mege")
