"""A table's code is read when a run first needs it, not as the pipeline module is imported (a Ray worker that
imports the module to run a table's tasks never needs it), and a run reads it for every table it builds before
it calls any table function."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import engine.source_code
from engine import Runner, load_settings
from tests.engine.changes.test_definition_changes import load

SOURCE = '''
import ray.data

from engine import FileSource, Overwrite, Pipeline

pipeline = Pipeline("limits")
pipeline.ingest("bronze.orders", FileSource("orders", "jsonl"))

LIMIT = 5


@pipeline.table("silver.first", kind=Overwrite())
def first(bronze_orders: ray.data.Dataset) -> ray.data.Dataset:
    global LIMIT
    LIMIT = 6  # a call that rebinds a constant of the project another table's code reads
    return bronze_orders


@pipeline.table("silver.second", kind=Overwrite())
def second(silver_first: ray.data.Dataset) -> ray.data.Dataset:
    return silver_first.limit(LIMIT)
'''


def test_importing_a_pipeline_reads_no_code_and_a_run_reads_it_as_declared(
        tmp_path: Path, ray_local: None, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    code_text = engine.source_code.code_text

    def counted(function: Any) -> str:
        read.append(function.__qualname__)
        return code_text(function)

    monkeypatch.setattr(engine.source_code, "code_text", counted)
    root = tmp_path / "root"
    (root / "landing" / "orders").mkdir(parents=True)
    (root / "landing" / "orders" / "1.jsonl").write_text("".join(f'{{"order_id": {i}}}\n' for i in range(10)))
    module = load(SOURCE, tmp_path)
    assert read == [], "the tables' code was read as the module was imported"

    result = Runner(module.pipeline, load_settings(overrides={"storage": {"root": str(root)}})).run()
    assert result.succeeded, [r.error for r in result.records if r.error]
    assert sorted(read) == ["first", "second"]
    assert module.LIMIT == 6
    saved = [json.loads(p.read_text()) for p in (root / "_meta" / "definitions" / "silver.second").glob("*.json")]
    assert len(saved) == 1
    assert "LIMIT = 5" in json.dumps(saved[0]), "the code holds the constant as declared, before `first` ran"
