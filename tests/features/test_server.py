"""Online features over real HTTP from Feast's feature server behind the request guard: good requests
return what the Delta tables say, bad ones a structured 4xx, never a 500."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from feast.value_type import ValueType
from pydantic import BaseModel

from engine.features.problems import RequestProblem
from engine.features.server import build_app, validation_problem
from engine.features.validation import Catalog, check_request
from tests.features.conftest import REPO, RETAIL_END, RetailFeatures, serving, store_over, write_table
from tests.features.synthetic import customer, customer_rows, customer_view

MAX_BODY = 8192
MAX_ROWS = 50
REVENUE = ["customer_features:revenue_30d", "customer_features:avg_order_value_30d", "customer_profile:country"]


@pytest.fixture(scope="module")
def server(retail_features: RetailFeatures) -> Iterator[int]:
    """The guarded feature server on a free local port, in a thread of the test process."""
    with serving(build_app(retail_features.store, max_body=MAX_BODY, max_rows=MAX_ROWS)) as port:
        yield port


def call(port: int, method: str, path: str, body: bytes | dict[str, Any] | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One HTTP request; the status and the decoded JSON answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    payload = json.dumps(body).encode() if isinstance(body, dict | list) else body
    connection.request(method, path, body=payload, headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    raw = response.read()
    connection.close()
    return response.status, json.loads(raw) if raw else None


def as_columns(answer: dict[str, Any]) -> dict[str, list[Any]]:
    """Feast's response as feature name -> values."""
    names = answer["metadata"]["feature_names"]
    return {name: result["values"] for name, result in zip(names, answer["results"])}


def expected_online(root: Any, customers: list[int]) -> pl.DataFrame:
    """From the gold table: each customer's latest row at RETAIL_END within the two-day TTL."""
    features = pl.read_delta(str(root / "gold" / "customer_features"))
    latest = (features.filter(pl.col("event_timestamp").is_between(RETAIL_END - pl.duration(days=2), RETAIL_END))
              .sort("event_timestamp").group_by("customer_id").last())
    return pl.DataFrame({"customer_id": customers}).join(latest, on="customer_id", how="left")


def test_online_features_over_http_match_python_and_the_delta_table(server: int,
                                                                    retail_features: RetailFeatures) -> None:
    customers = [1, 2, 3, 10_000]
    status, answer = call(server, "POST", "/get-online-features",
                          {"features": REVENUE, "entities": {"customer_id": customers}})

    assert status == 200
    served = as_columns(answer)
    local = retail_features.store.get_online_features(
        features=REVENUE, entity_rows=[{"customer_id": c} for c in customers]).to_dict()
    assert served["revenue_30d"] == local["revenue_30d"]
    assert served["country"] == local["country"]
    expected = expected_online(retail_features.root, customers)
    assert served["revenue_30d"] == expected["revenue_30d"].to_list()
    assert served["avg_order_value_30d"] == expected["avg_order_value_30d"].to_list()
    assert served["revenue_30d"][-1] is None


def test_feature_service_computes_on_demand_features_from_request_data(server: int,
                                                                       retail_features: RetailFeatures) -> None:
    status, answer = call(server, "POST", "/get-online-features", {
        "feature_service": "customer_training",
        "entities": {"customer_id": [1, 2, 3], "cart_value": [50.0, 10, 0.0]}})

    assert status == 200
    served = as_columns(answer)
    for cart, average, ratio in zip([50.0, 10.0, 0.0], served["avg_order_value_30d"],
                                    served["cart_to_avg_order_value"]):
        assert ratio == (pytest.approx(cart / average) if average else None)
    assert {"country", "segment", "sessions_7d", "revenue_share_7d"} <= set(served)


FEATURES = {"features": ["customer_features:revenue_30d"]}
TRAINING = {"feature_service": "customer_training"}
BAD_REQUESTS = [
    ("empty body", b"", 400, "empty_body"),
    ("not json", b"{features: [", 400, "invalid_json"),
    ("not an object", b"[1, 2]", 400, "invalid_request"),
    ("misspelled field", {**FEATURES, "entity": {"customer_id": [1]}}, 400, "unknown_field"),
    ("neither features nor service", {"entities": {"customer_id": [1]}}, 400, "invalid_request"),
    ("features not a list", {"features": "customer_features:revenue_30d", "entities": {"customer_id": [1]}},
     422, "wrong_type"),
    ("unknown feature", {"features": ["customer_features:revenue_1y"], "entities": {"customer_id": [1]}},
     404, "unknown_feature"),
    ("unknown feature view", {"features": ["orders:total"], "entities": {"customer_id": [1]}},
     404, "unknown_feature_view"),
    ("unknown feature service", {"feature_service": "fraud", "entities": {"customer_id": [1]}},
     404, "unknown_feature_service"),
    ("unknown entity", {**FEATURES, "entities": {"customer_id": [1], "store_id": [4]}}, 400, "unknown_entity"),
    ("missing entity", {**FEATURES, "entities": {"product_id": [1]}}, 400, "missing_entity"),
    ("missing request data", {"feature_service": "customer_training", "entities": {"customer_id": [1]}},
     400, "missing_entity"),
    ("string key", {**FEATURES, "entities": {"customer_id": ["one"]}}, 422, "wrong_type"),
    ("boolean key", {**FEATURES, "entities": {"customer_id": [True]}}, 422, "wrong_type"),
    ("fractional key", {**FEATURES, "entities": {"customer_id": [1.5]}}, 422, "wrong_type"),
    ("key out of int64 range", {**FEATURES, "entities": {"customer_id": [2**70]}}, 422, "wrong_type"),
    ("null key", {**FEATURES, "entities": {"customer_id": [None]}}, 422, "wrong_type"),
    ("empty key list", {**FEATURES, "entities": {"customer_id": []}}, 422, "wrong_type"),
    ("text request data", {"feature_service": "customer_training",
                           "entities": {"customer_id": [1], "cart_value": ["ten"]}}, 422, "wrong_type"),
    ("lists of different lengths", {"feature_service": "customer_training",
                                    "entities": {"customer_id": [1, 2], "cart_value": [1.0]}}, 400,
     "length_mismatch"),
    ("too many rows", {**FEATURES, "entities": {"customer_id": list(range(MAX_ROWS + 1))}}, 413, "too_many_rows"),
    ("oversized body", {**FEATURES, "entities": {"customer_id": [1] * 4000}}, 413, "body_too_large"),
    ("repeated feature", {"features": ["customer_features:revenue_30d"] * 2, "entities": {"customer_id": [1]}},
     400, "feature_name_collision"),
    ("repeated feature with full names", {"features": ["customer_features:revenue_30d"] * 2,
                                          "entities": {"customer_id": [1]}, "full_feature_names": True},
     400, "feature_name_collision"),
    ("feature service not a string", {"feature_service": ["customer_training"], "entities": {"customer_id": [1]}},
     422, "wrong_type"),
    ("keys of mixed types", {**FEATURES, "entities": {"customer_id": [1, "2"]}}, 422, "wrong_type"),
    ("nested key list", {**FEATURES, "entities": {"customer_id": [[1]]}}, 422, "wrong_type"),
    ("key object", {**FEATURES, "entities": {"customer_id": {"id": 1}}}, 422, "wrong_type"),
    ("NaN request data", {**TRAINING, "entities": {"customer_id": [1], "cart_value": [float("nan")]}},
     422, "wrong_type"),
    ("infinite request data", {**TRAINING, "entities": {"customer_id": [1], "cart_value": [1e400]}},
     422, "wrong_type"),
    ("request data out of int64 range", {**TRAINING, "entities": {"customer_id": [1], "cart_value": [2**70]}},
     422, "wrong_type"),
    ("request data of 401 digits", {**TRAINING, "entities": {"customer_id": [1], "cart_value": [10**400]}},
     422, "wrong_type"),
    ("number of 5000 digits", b'{"features": ["customer_features:revenue_30d"], "entities": {"customer_id": ['
     + b"1" * 5000 + b"]}}", 400, "invalid_json"),
    ("deeply nested body", b'{"entities": {"customer_id": ' + b"[" * 3000 + b"]" * 3000 + b"}}", 400,
     "invalid_json"),
]


@pytest.mark.parametrize(("body", "status", "code"), [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_requests_get_a_structured_4xx(server: int, body: Any, status: int, code: str) -> None:
    answered, answer = call(server, "POST", "/get-online-features", body)

    assert (answered, answer["error"]["code"]) == (status, code)
    assert answer["error"]["message"]


def test_features_of_different_views_under_one_name_are_refused_unless_named_in_full() -> None:
    keys = {"customer_id": ValueType.INT64}
    catalog = Catalog(views={"orders": ({"score"}, keys), "returns": ({"score", "rate"}, keys)})
    request = {"features": ["orders:score", "returns:rate", "returns:score"], "entities": {"customer_id": [1]}}

    with pytest.raises(RequestProblem) as refused:
        check_request(request, catalog)

    assert (refused.value.status, refused.value.code) == (400, "feature_name_collision")
    assert refused.value.details == {"refs": ["orders:score", "returns:score"]}
    assert "full_feature_names" in str(refused.value)
    check_request({**request, "full_feature_names": True}, catalog)


def test_string_keys_that_are_not_valid_unicode_are_refused() -> None:
    catalog = Catalog(views={"products": ({"price"}, {"product_id": ValueType.STRING})})
    request = {"features": ["products:price"], "entities": {"product_id": ["p01", "\ud800"]}}

    with pytest.raises(RequestProblem) as refused:
        check_request(request, catalog)

    assert (refused.value.status, refused.value.code, refused.value.details["index"]) == (422, "wrong_type", 1)


def test_wrong_media_type_method_path_and_streamed_oversized_body_are_refused(server: int) -> None:
    assert call(server, "POST", "/get-online-features", b"customer_id=1",
                {"Content-Type": "text/plain"})[0] == 415
    assert call(server, "GET", "/get-online-features")[0] == 405
    assert call(server, "POST", "/push", {"df": {}})[1]["error"]["code"] == "not_found"
    assert call(server, "POST", "/materialize", {})[0] == 404
    assert call(server, "GET", "/health")[0] == 200

    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=60)
    connection.request("POST", "/get-online-features", body=iter([b"{" + b" " * MAX_BODY, b"}"]),
                       headers={"Content-Type": "application/json"}, encode_chunked=True)
    response = connection.getresponse()
    assert (response.status, json.loads(response.read())["error"]["code"]) == (413, "body_too_large")
    connection.close()


class Lookup(BaseModel):
    """A request model of the validation handler's test."""

    entities: dict[str, list[int]]


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The guarded feature server over one small feature view (`customer_stats`), nothing materialized."""
    import numpy as np

    root = tmp_path_factory.mktemp("small-server")
    write_table(root, "gold.customer_stats", customer_rows(np.random.default_rng(3)))
    with serving(build_app(store_over(root, [customer, customer_view()], project="small"))) as port:
        yield port


def raw_call(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """One POST with exactly `headers` (no Content-Type unless given); the status and the raw answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", path, body=body, headers=headers)
    response = connection.getresponse()
    answer = response.read()
    connection.close()
    return response.status, answer


def test_a_body_without_content_type_or_of_another_type_gets_the_documented_415(small_server: int) -> None:
    """Without a Content-Type, Feast's FastAPI would answer 422 with the whole body."""
    body = json.dumps({"features": ["customer_stats:spend"], "entities": {"customer_id": ["x" * 10_000]}}).encode()

    for headers in ({}, {"Content-Type": "text/plain"}, {"Content-Type": "application/jsonx"}):
        status, answer = raw_call(small_server, "/get-online-features", body, headers)
        assert (status, json.loads(answer)["error"]["code"]) == (415, "unsupported_media_type"), headers
        assert len(answer) < 1000


@pytest.mark.parametrize(("request_body", "status", "code", "said"), [
    ({"features": ["v" * 500_000 + ":spend"], "entities": {"customer_id": [1]}}, 404, "unknown_feature_view",
     "no feature view `vvv"),
    ({"features": ["customer_stats:" + "f" * 500_000], "entities": {"customer_id": [1]}}, 404, "unknown_feature",
     "feature view `customer_stats` has no feature `fff"),
    ({"features": ["customer_stats:spend"], "entities": {"customer_id": ["k" * 500_000]}}, 422, "wrong_type",
     "`entities.customer_id[0]` is \"kkk"),
    ({"features": ["customer_stats:spend"], "entities": {"customer_id": [1], "e" * 500_000: [1]}}, 400,
     "unknown_entity", "['eee"),
    ({"features": ["customer_stats:spend"], "entities": {"customer_id": [1]}, "x" * 500_000: 1}, 400,
     "unknown_field", "unknown request field(s) ['xxx"),
], ids=["view name", "feature name", "key value", "entity name", "field name"])
def test_error_documents_echo_at_most_a_few_hundred_characters_of_the_request(
        small_server: int, request_body: dict[str, Any], status: int, code: str, said: str) -> None:
    answered, answer = raw_call(small_server, "/get-online-features", json.dumps(request_body).encode(),
                                {"Content-Type": "application/json"})

    assert (answered, json.loads(answer)["error"]["code"]) == (status, code)
    assert len(answer) < 3000
    message = json.loads(answer)["error"]["message"]
    assert message.startswith(said) and "characters)" in message


def test_feasts_request_validation_errors_become_bounded_error_documents() -> None:
    """FastAPI's own 422 repeats every invalid value whole; the handler the server installs names the field."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError

    app = FastAPI()
    app.add_exception_handler(RequestValidationError, validation_problem)

    @app.post("/lookup")
    async def lookup(request: Lookup) -> dict[str, Any]:
        return {}

    with serving(app) as port:
        status, answer = raw_call(port, "/lookup", json.dumps({"entities": {"k": ["x" * 500_000]}}).encode(),
                                  {"Content-Type": "application/json"})

    assert status == 422 and len(answer) < 2000
    error = json.loads(answer)["error"]
    assert error["code"] == "wrong_type"
    assert error["details"]["errors"][0]["field"] == "body.entities.k.0"
    assert "body.entities.k.0" in error["message"] and "xxx" not in answer.decode()


def test_medallion_features_serve_answers_over_http(retail_features: RetailFeatures) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).parent / "medallion"), "--root", str(retail_features.root), "features",
               "--repo", str(REPO), "serve", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if call(port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""

        status, answer = call(port, "POST", "/get-online-features",
                              {"features": REVENUE, "entities": {"customer_id": [1, 2]}})
        assert status == 200
        expected = expected_online(retail_features.root, [1, 2])
        assert as_columns(answer)["revenue_30d"] == expected["revenue_30d"].to_list()
        assert call(port, "POST", "/get-online-features", {"features": ["customer_features:nope"],
                                                           "entities": {"customer_id": [1]}})[0] == 404
    finally:
        process.terminate()
        process.wait(timeout=30)
