"""Lineage: OpenLineage events of every table run (to a file and to an HTTP endpoint), and `medallion
lineage` walking from landing files through the tables to feature views and the MLflow runs that used them."""

from __future__ import annotations

import json
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine import Runner
from engine.cli.main import main
from engine.config import load_settings
from engine.layout import Layout
from engine.lineage.graph import Lineage, Node, mlflow_search
from engine.runlog import read_records
from tests.conftest import RetailBuild
from tests.engine.test_runner import build_pipeline, write_orders
from tests.features.conftest import REPO, RETAIL_END

pytestmark = pytest.mark.usefixtures("ray_local")
CUSTOMER = "7"


@pytest.fixture(scope="module")
def lake(retail_build: RetailBuild, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the retail build with the features materialized and the churn model trained on it."""
    from engine.features.materialize import materialize
    from engine.features.repo import apply_repo, load_definitions, open_store
    from engine.training.trainer import train

    root = tmp_path_factory.mktemp("lineage") / "lake"
    shutil.copytree(retail_build.root, root)
    store = open_store(str(root), REPO)
    apply_repo(store, load_definitions(REPO))
    materialize(store, end=RETAIL_END)
    settings = load_settings(overrides={"storage": {"root": str(root)},
                                        "training": {"tracking_uri": f"sqlite:///{root}/_meta/mlflow/mlflow.db"}})
    train("retail/churn", settings, repo=str(REPO))
    return root


def events_of(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(Layout.at(str(root)).lineage_events()).read_text().splitlines()]


def test_every_table_run_sends_an_openlineage_event_with_the_versions_it_read_and_wrote(
        retail_build: RetailBuild) -> None:
    events = {e["job"]["name"]: e for e in events_of(retail_build.root)}
    records = read_records(Layout.at(str(retail_build.root)).runs())
    assert len(events) == records.height == len(retail_build.result.records)
    for record in records.iter_rows(named=True):
        event = events[f"retail.{record['table']}"]
        assert event["eventType"] == "COMPLETE" and event["producer"] and event["schemaURL"].startswith("https://")
        assert uuid.UUID(event["run"]["runId"]) and event["run"]["facets"]["parent"]["job"]["name"] == "retail"
        output = event["outputs"][0]
        assert output["facets"]["version"]["datasetVersion"] == str(record["output_version"])
        assert output["facets"]["symlinks"]["identifiers"][0]["name"] == record["table"]
        assert output["outputFacets"]["outputStatistics"]["rowCount"] == record["rows_written"]
        assert output["name"] == Layout.at(str(retail_build.root)).table(record["table"]) and output["namespace"] == "file"
        read = {i["facets"]["symlinks"]["identifiers"][0]["name"]: int(i["facets"]["version"]["datasetVersion"])
                for i in event["inputs"] if "symlinks" in i["facets"]}
        assert read == json.loads(record["input_versions"])
    landing = {i["name"] for i in events["retail.bronze.orders"]["inputs"]}
    assert landing == {str(p) for p in (retail_build.root / "landing" / "orders").glob("*.jsonl")}


def files_mentioning(folder: Path, column: str, value: str) -> set[str]:
    pattern = re.compile(rf'"{column}"\s*:\s*"?{value}"?\s*[,}}]')
    return {p.name for p in folder.iterdir() if pattern.search(p.read_text(errors="replace"))}


def test_lineage_of_a_feature_row_reaches_the_landing_files_that_hold_its_customer(lake: Path) -> None:
    view = Lineage(str(lake)).feature_view("customer_features", ("customer_id", CUSTOMER))
    assert view.children[0].name == "gold.customer_features"
    bronze = {n.name: n for n in view.find("table") if n.name.startswith("bronze.")}
    assert {"bronze.orders", "bronze.events"} <= set(bronze)
    for table, folder in (("bronze.orders", "orders"), ("bronze.events", "events")):
        files = {n.name for n in bronze[table].children if n.kind == "landing"}
        assert files == files_mentioning(lake / "landing" / folder, "customer_id", CUSTOMER) != set()
        every = {p.name for p in (lake / "landing" / folder).iterdir()}
        assert files < every or len(every) == 1


def test_downstream_of_a_gold_version_names_the_feature_views_and_the_model_trained_on_it(lake: Path) -> None:
    graph = Lineage(str(lake), mlflow_search(f"sqlite:///{lake}/_meta/mlflow/mlflow.db"))
    version = graph.latest_version("gold.customer_features")
    down = graph.downstream("gold.customer_features", version)
    assert "customer_features" in {n.name for n in down.find("feature_view")}
    runs = down.find("mlflow_run")
    assert len(runs) == 1 and "model retail_churn v1" in runs[0].detail
    if version > 0:  # a run is linked to the exact version it read
        assert graph.downstream("gold.customer_features", version - 1).find("mlflow_run") == []
    silver = graph.downstream("silver.orders", graph.latest_version("silver.orders"))
    assert "gold.customer_features" in {n.name for n in silver.find("table")}


def test_the_lineage_command_walks_both_ways_and_answers_in_json(lake: Path) -> None:
    def invoke(*args: str) -> tuple[int, str]:
        done = CliRunner().invoke(main, ["--root", str(lake), "lineage", *args])
        return done.exit_code, done.output

    code, output = invoke("gold.customer_features", "--json")
    assert code == 0, output
    trees = {t["direction"]: t for t in json.loads(output)}

    def names(node: dict[str, Any], kind: str) -> set[str]:
        own = {node["name"]} if node["kind"] == kind else set()
        return own.union(*(names(c, kind) for c in node["children"]))

    assert {"silver.orders", "bronze.orders"} <= names(trees["upstream"], "table")
    assert names(trees["upstream"], "landing") and names(trees["downstream"], "mlflow_run")
    code, output = invoke("features.customer_features", "--key", f"customer_id={CUSTOMER}")
    assert code == 0 and "holds customer_id = 7" in output
    run_id = read_records(Layout.at(str(lake)).runs())["run_id"][0]
    code, output = invoke(run_id)
    assert code == 0 and "bronze.orders" in output
    code, output = invoke("gold.nope")
    assert code == 1 and "no run built `gold.nope`" in output
    code, output = invoke("gold.customer_features", "--key", "customer_id")
    assert code == 1 and "COLUMN=VALUE" in output


class Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, Any]]] = []

    def do_POST(self) -> None:  # noqa: N802 - the handler's protocol
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Collector.received.append((self.headers.get("Authorization", ""), json.loads(body)))
        self.send_response(201)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[str]:
    Collector.received = []
    server = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_the_lineage_command_on_a_root_nothing_was_trained_on_writes_nothing(
        retail_build: RetailBuild, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reading command leaves the root as it found it: no MLflow store created to look for runs in, when no
    tracking server is configured either."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # set by training earlier in this process
    root = tmp_path / "lake"
    shutil.copytree(retail_build.root, root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    done = CliRunner().invoke(main, ["--root", str(root), "lineage", "gold.customer_features", "--json"])
    assert done.exit_code == 0, done.output
    trees = {t["direction"]: t for t in json.loads(done.output)}
    assert trees["upstream"]["name"] == "gold.customer_features" and trees["downstream"]["children"] == []
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_events_go_to_an_http_endpoint_and_a_failure_sends_a_fail_event(tmp_path: Path, collector: str) -> None:
    write_orders(tmp_path, "orders-1.jsonl", [{"order_id": 1, "status": "placed", "updated_at": "2026-01-01T00:00:00Z"}])
    settings = load_settings(overrides={"storage": {"root": str(tmp_path)},
                                        "lineage": {"transport": "http", "url": collector, "api_key": "canary-key"}})
    result = Runner(build_pipeline(fail_gold=True), settings).run()
    statuses = {r.table: r.status for r in result.records}
    assert statuses["gold.status_counts"] == "failed" and statuses["gold.after_counts"] == "skipped"
    events = {body["job"]["name"]: (auth, body) for auth, body in Collector.received}
    assert set(events) == {"shop.bronze.orders", "shop.silver.orders", "shop.gold.status_counts"}
    assert {auth for auth, _ in events.values()} == {"Bearer canary-key"}
    failed = events["shop.gold.status_counts"][1]
    assert failed["eventType"] == "FAIL" and "boom" in failed["run"]["facets"]["errorMessage"]["message"]
    assert failed["outputs"] == [] and events["shop.bronze.orders"][1]["inputs"][0]["name"].endswith("orders-1.jsonl")
    assert not Path(Layout.at(str(tmp_path)).lineage_events()).exists()


def test_an_unreachable_endpoint_does_not_fail_the_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_orders(tmp_path, "orders-1.jsonl", [{"order_id": 1, "status": "placed", "updated_at": "2026-01-01T00:00:00Z"}])
    settings = load_settings(overrides={"storage": {"root": str(tmp_path)},
                                        "lineage": {"transport": "http", "url": "http://127.0.0.1:9", "timeout_s": 1}})
    assert Runner(build_pipeline(), settings).run().succeeded
    assert "OpenLineage events of run" in caplog.text and "were not sent" in caplog.text


def test_a_node_prints_its_kind_name_version_and_detail() -> None:
    assert Node("table", "gold.x", 3, "run r1").label() == "table gold.x v3 (run r1)"
    assert Node("landing", "a.csv").label() == "landing a.csv"
