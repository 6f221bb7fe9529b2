"""Tables of a run built at the same time: a table starts once the tables it reads have finished, no more than
`run.concurrent_tables` at once; a failure still keeps to its table and what reads it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
import ray.data
from deltalake import DeltaTable

from engine import Overwrite, Pipeline, Runner, load_settings
from engine.config import Settings
from engine.run.schedule import TableQueue
from engine.source_code import code_text
from tests.threads import all_at_once

WAIT_S = 60.0
"""How long a table function waits for the others it meets; only a run that never starts them waits that long."""


def settings(root: Path, concurrent: int) -> Settings:
    return load_settings(overrides={"storage": {"root": str(root)}, "run": {"concurrent_tables": concurrent}})


def one_row(value: int) -> ray.data.Dataset:
    return ray.data.from_arrow(pa.table({"value": [value]}))


def meeting_pipeline(parties: int, tables: int, state: dict[str, int]) -> Pipeline:
    """`tables` independent gold tables whose functions meet `parties` at a time at a barrier, and one table
    reading all of them; `state` counts the functions in flight and their most at once."""
    pipeline = Pipeline("meet")
    barrier = threading.Barrier(parties, timeout=WAIT_S)
    lock = threading.Lock()

    def meet(value: int) -> ray.data.Dataset:
        with lock:
            state["in_flight"] += 1
            state["most"] = max(state["most"], state["in_flight"])
        try:
            barrier.wait()
        finally:
            with lock:
                state["in_flight"] -= 1
        return one_row(value)

    def part(number: int) -> Callable[[], ray.data.Dataset]:
        return lambda: meet(number)

    for number in range(tables):
        pipeline.table(f"gold.part_{number}", kind=Overwrite())(part(number))

    def total(**parts: ray.data.Dataset) -> ray.data.Dataset:
        return ray.data.from_arrow(pa.table({"value": [sum(p.sum("value") for p in parts.values())]}))

    inputs = ", ".join(f"gold_part_{n}: ray.data.Dataset" for n in range(tables))
    namespace: dict[str, object] = {"ray": ray, "total": total}
    exec(f"def combined({inputs}) -> ray.data.Dataset:\n    return total(**locals())", namespace)  # noqa: S102
    pipeline.table("gold.total", kind=Overwrite())(namespace["combined"])
    return pipeline


@pytest.mark.usefixtures("ray_local")
def test_independent_tables_are_built_at_once_and_no_more_than_the_setting_allows(tmp_path: Path) -> None:
    state = {"in_flight": 0, "most": 0}
    result = Runner(meeting_pipeline(parties=2, tables=4, state=state), settings(tmp_path, 2)).run()

    assert result.succeeded, [r.error for r in result.records]
    assert state["most"] == 2  # two met at the barrier, so they ran at once; a third never joined them
    assert DeltaTable(str(tmp_path / "gold" / "total")).to_pyarrow_table()["value"].to_pylist() == [0 + 1 + 2 + 3]
    finished = [r.table for r in result.records]
    assert finished.index("gold.total") == len(finished) - 1  # read its inputs only once all were committed


@pytest.mark.usefixtures("ray_local")
def test_one_table_at_a_time_when_the_setting_says_one(tmp_path: Path) -> None:
    state = {"in_flight": 0, "most": 0}
    pipeline = meeting_pipeline(parties=1, tables=3, state=state)
    result = Runner(pipeline, settings(tmp_path, 1)).run()

    assert result.succeeded and state["most"] == 1
    assert [r.table for r in result.records] == pipeline.select()


@pytest.mark.usefixtures("ray_local")
def test_a_failure_skips_what_reads_it_while_independent_tables_running_at_the_same_time_commit(
        tmp_path: Path) -> None:
    pipeline = Pipeline("mixed")
    started = threading.Event()

    @pipeline.table("silver.slow", kind=Overwrite())
    def slow() -> ray.data.Dataset:
        started.set()
        return one_row(1)

    @pipeline.table("silver.broken", kind=Overwrite())
    def broken() -> ray.data.Dataset:
        if not started.wait(WAIT_S):
            raise AssertionError("silver.slow never started")
        raise ValueError("broken on purpose")

    @pipeline.table("gold.after_broken", kind=Overwrite())
    def after_broken(silver_broken: ray.data.Dataset) -> ray.data.Dataset:
        return silver_broken

    @pipeline.table("gold.after_slow", kind=Overwrite())
    def after_slow(silver_slow: ray.data.Dataset) -> ray.data.Dataset:
        return silver_slow

    result = Runner(pipeline, settings(tmp_path, 4)).run()
    status = {r.table: r.status for r in result.records}

    assert status == {"silver.slow": "succeeded", "silver.broken": "failed", "gold.after_broken": "skipped",
                      "gold.after_slow": "succeeded"}
    assert DeltaTable(str(tmp_path / "gold" / "after_slow")).to_pyarrow_table()["value"].to_pylist() == [1]
    assert not (tmp_path / "gold" / "after_broken").exists()


@pytest.mark.usefixtures("ray_local")
def test_a_stop_lets_the_running_tables_commit_and_records_the_rest_interrupted(tmp_path: Path) -> None:
    state = {"in_flight": 0, "most": 0}
    pipeline = meeting_pipeline(parties=2, tables=2, state=state)
    asked = {"times": 0}

    def stop() -> bool:  # no stop before the first two tables start; asked again once they have finished
        asked["times"] += 1
        return asked["times"] > 1

    result = Runner(pipeline, settings(tmp_path, 4)).run(stop=stop)

    assert result.stopped
    assert sorted(r.table for r in result.records) == ["gold.part_0", "gold.part_1"]
    assert all(r.status == "succeeded" for r in result.records)
    assert not (tmp_path / "gold" / "total").exists()
    from engine.layout import Layout
    from engine.runlog import read_records

    recorded = read_records(Layout.at(str(tmp_path)).runs())
    assert dict(zip(recorded["table"], recorded["status"], strict=True))["gold.total"] == "interrupted"


def test_the_queue_starts_the_longest_chain_first_and_waits_for_every_dependency() -> None:
    order = ["bronze.a", "bronze.b", "silver.a", "silver.b", "gold.b"]
    queue = TableQueue(order, {"silver.a": ["bronze.a"], "silver.b": ["bronze.b"], "gold.b": ["silver.b", "bronze.a"],
                               "bronze.a": ["landing.outside"]}, limit=1)

    assert queue.ready() == ["bronze.b"]  # two tables in a chain below it, against one below bronze.a
    queue.start("bronze.b")
    assert queue.ready() == []  # the limit
    queue.finish("bronze.b")
    assert queue.ready() == ["bronze.a"]  # as long a chain as silver.b's, and first in the selection
    queue.limit = 3
    queue.start("bronze.a")
    assert queue.ready() == ["silver.b"]  # silver.a and gold.b wait for bronze.a
    queue.start("silver.b")
    queue.finish("silver.b")
    assert queue.ready() == []  # gold.b still waits for bronze.a
    queue.finish("bronze.a")
    assert queue.ready() == ["silver.a", "gold.b"]
    assert queue.pending == ["silver.a", "gold.b"] and not queue.running


def test_code_text_is_the_same_when_threads_ask_at_once() -> None:
    from pipelines.retail.pipeline import retail

    functions = [d.function for d in retail.tables.values() if d.function is not None]
    expected = [code_text(f) for f in functions]
    results: list[list[str]] = []

    assert not all_at_once(lambda: results.append([code_text(f) for f in functions]), 6)
    assert results == [expected] * 6


@pytest.mark.usefixtures("ray_local")
def test_by_default_as_many_tables_at_once_as_the_cluster_has_cpus(tmp_path: Path) -> None:
    import ray

    cpus = int(ray.cluster_resources()["CPU"])
    state = {"in_flight": 0, "most": 0}
    pipeline = meeting_pipeline(parties=cpus, tables=2 * cpus, state=state)
    result = Runner(pipeline, load_settings(overrides={"storage": {"root": str(tmp_path)}})).run()

    assert result.succeeded, [r.error for r in result.records]
    assert state["most"] == cpus


@pytest.mark.usefixtures("ray_local")
def test_a_run_that_fails_between_tables_lets_the_running_ones_commit_before_it_raises(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import runner as runner_module

    pipeline = Pipeline("broken_records")
    recorded = threading.Event()

    @pipeline.table("silver.quick", kind=Overwrite())
    def quick() -> ray.data.Dataset:
        return one_row(1)

    @pipeline.table("silver.slow", kind=Overwrite())
    def slow() -> ray.data.Dataset:
        if not recorded.wait(WAIT_S):
            raise AssertionError("the quick table's record was never written")
        return one_row(2)

    def failing_append(*_: object) -> None:
        recorded.set()
        raise OSError("the run records cannot be written")

    monkeypatch.setattr(runner_module, "append_records", failing_append)
    with pytest.raises(OSError, match="cannot be written"):
        Runner(pipeline, settings(tmp_path, 2)).run()

    assert DeltaTable(str(tmp_path / "silver" / "slow")).to_pyarrow_table()["value"].to_pylist() == [2]
