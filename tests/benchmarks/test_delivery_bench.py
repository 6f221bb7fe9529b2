"""`python -m benchmarks.delivery`: a delivery is timed one-shot and as a warm micro-batch, each checked to have
reached gold, and the page's table says each way, its setting and target."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from benchmarks import delivery
from benchmarks.tpch.run import RunError
from engine.runner import Runner
from pipelines.retail.generate import generate
from pipelines.retail.pipeline import retail
from tests.conftest import settings_at

SCALE = 0.01
"""A small feed (a fifth of the retail tests' scale): its runs' time is mostly the fixed cost of each table, which a
larger feed only adds rows to."""


@pytest.mark.slow
def test_both_ways_of_running_a_delivery_are_measured_and_reach_gold(tmp_path: Path, ray_local: None) -> None:
    # The root of the earlier deliveries, built here on the session's Ray where the benchmark runs the command.
    base = tmp_path / f"delivery-{SCALE:g}" / "base"
    last = delivery.batches(SCALE)
    for batch in range(1, last - 1):
        generate(base / "landing", scale=SCALE, batch=batch, as_of=date.fromisoformat(delivery.AS_OF))
    assert Runner(retail, settings_at(base)).run().succeeded
    assert delivery.base_root(tmp_path, SCALE) == (base, last)

    results = delivery.measure(tmp_path, scale=SCALE, repeats=1, modes={"concurrent": 2}, ways=("one-shot",))
    # The warm micro-batch as its child process measures it, here on the session's Ray.
    root = delivery.fresh_copy(base, tmp_path / "watch")
    watch = delivery.warm_child(root, SCALE, last, 2)
    delivery._require_gold_committed(root)

    assert list(results["ways"]) == ["one-shot, concurrent"]
    [one_shot] = results["ways"].values()
    assert one_shot["wall_s"] > one_shot["runner_s"] > 0  # the process also imports, starts and stops Ray
    assert one_shot["target_s"] == 4.0 and one_shot["concurrent_tables"] == 2
    assert watch["wall_s"] >= watch["runner_s"] >= watch["critical_path_s"] > 0
    results["ways"]["watch, concurrent"] = {"way": "watch", "concurrent_tables": 2, "target_s": 1.5, **watch}
    lines = delivery.table(results)
    assert len(lines) == 4 and lines[2].startswith("| one-shot | 2 |") and lines[3].startswith("| watch | 2 |")
    assert lines[3].endswith(f"| {watch['critical_path_s']:.2f} | 1.5 |")


def test_a_delivery_that_does_not_reach_gold_is_no_measurement(tmp_path: Path) -> None:
    from engine.layout import Layout
    from engine.runlog import RunRecord, append_records

    now = datetime.now(UTC)
    append_records(Layout.at(str(tmp_path)).runs(), [RunRecord(
        run_id="r1", pipeline="retail", table="gold.customer_features", status="failed", started_at=now,
        finished_at=now, operation="run")])
    with pytest.raises(RunError, match="did not reach gold"):
        delivery._require_gold_committed(tmp_path)
