"""Tests of engine.ingest.drift: schema drift of landing files read as strings, and the drift policies."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from engine.columns import INGESTED_AT, RESCUED_DATA, RUN_ID, SOURCE_FILE
from engine.errors import IngestError, SchemaDriftError
from engine.ingest.drift import SchemaDrift, apply_policy, detect_drift, json_value_types
from engine.ingest.readers import json_field_types, read_landing_file
from engine.ingest.sources import FileSource, LandingFile

JSONL = FileSource("orders", "jsonl")
CSV = FileSource("customers", "csv")


def landing(path: Path, content: str) -> LandingFile:
    """`content` written to `path`, described as a landing file."""
    path.write_text(content, encoding="utf-8")
    stat = path.stat()
    return LandingFile(path.name, str(path), stat.st_size, stat.st_mtime_ns)


def drift_of(
    tmp_path: Path,
    name: str,
    content: str,
    expected: list[str],
    source: FileSource = JSONL,
    expected_types: dict[str, str] | None = None,
) -> tuple[pa.Table, SchemaDrift]:
    """The table read from landing file `name` holding `content`, and its drift against `expected`."""
    file = landing(tmp_path / name, content)
    table = read_landing_file(file, source)
    found_types = json_value_types(file, source) if expected_types else None
    return table, detect_drift(file.name, table, expected, expected_types, found_types)


# detection


def test_no_drift(tmp_path: Path) -> None:
    _, drift = drift_of(tmp_path, "o.jsonl", '{"id": 1, "status": "new"}\n{"id": 2}\n', ["id", "status"],
                        expected_types={"id": "number", "status": "string"})
    assert drift == SchemaDrift("o.jsonl")
    assert drift.is_empty
    assert drift.describe() == "o.jsonl: no schema drift"


def test_engine_columns_are_ignored() -> None:
    table = pa.table({"id": ["1"], RESCUED_DATA: [None], SOURCE_FILE: ["f"], INGESTED_AT: ["t"], RUN_ID: ["r"]},
                     schema=pa.schema([(name, pa.string()) for name in
                                       ["id", RESCUED_DATA, SOURCE_FILE, INGESTED_AT, RUN_ID]]))
    assert detect_drift("f", table, ["id", RESCUED_DATA]).is_empty


def test_added_and_missing_columns(tmp_path: Path) -> None:
    _, drift = drift_of(tmp_path, "o.jsonl", '{"id": 1, "coupon": "X", "quantity": 2}\n',
                        ["id", "status", "qty"])
    assert drift.added == ("coupon", "quantity")
    assert drift.missing == ("status", "qty")
    assert drift.renamed == () and drift.type_changes == ()
    assert drift.describe() == ("o.jsonl: new column `coupon`; new column `quantity`; "
                                "missing column `status`; missing column `qty`")


def test_rename_by_normalised_name(tmp_path: Path) -> None:
    _, drift = drift_of(tmp_path, "o.jsonl",
                        '{"OrderId": 1, "customer-id": 7, "Line Number": 1, "coupon": "X", "gift": true}\n',
                        ["order_id", "customer_id", "line_number", "status"])
    assert drift.renamed == (("order_id", "OrderId"), ("customer_id", "customer-id"),
                             ("line_number", "Line Number"))
    assert drift.added == ("coupon", "gift")
    assert drift.missing == ("status",)


def test_rename_of_the_single_leftover_pair(tmp_path: Path) -> None:
    _, drift = drift_of(tmp_path, "o.jsonl", '{"id": 1, "CustomerID": 7, "quantity": 2}\n',
                        ["id", "customer_id", "qty"])
    assert drift.renamed == (("customer_id", "CustomerID"), ("qty", "quantity"))
    assert drift.added == () and drift.missing == ()
    assert drift.describe() == "o.jsonl: `customer_id` renamed to `CustomerID`?; `qty` renamed to `quantity`?"


def test_no_single_pair_rename_when_json_types_differ(tmp_path: Path) -> None:
    _, drift = drift_of(tmp_path, "o.jsonl", '{"id": 1, "note": "hi"}\n', ["id", "qty"],
                        expected_types={"id": "number", "qty": "number"})
    assert drift.renamed == ()
    assert (drift.added, drift.missing) == (("note",), ("qty",))


def test_ambiguous_normalised_names_are_no_rename(tmp_path: Path) -> None:
    _, drift = drift_of(tmp_path, "o.jsonl", '{"userId": 1, "USER_ID": 2}\n', ["user_id"])
    assert drift.renamed == ()
    assert (drift.added, drift.missing) == (("userId", "USER_ID"), ("user_id",))


def test_json_type_changes_object_and_number_to_string(tmp_path: Path) -> None:
    content = ('{"id": 1, "qty": "3", "payload": "{\\"page\\": \\"/\\"}", "ok": true}\n'
               '{"id": 2, "qty": "4", "payload": null, "ok": false}\n')
    table, drift = drift_of(tmp_path, "o.jsonl", content, ["id", "qty", "payload", "ok"],
                            expected_types={"id": "number", "qty": "number", "payload": "object", "ok": "boolean"})
    assert drift.type_changes == (("qty", "number", "string"), ("payload", "object", "string"))
    assert drift.added == () and drift.missing == () and drift.renamed == ()
    assert drift.describe() == "o.jsonl: `qty` changed from number to string; `payload` changed from object to string"
    assert table.column("payload").to_pylist() == ['{"page": "/"}', None]


def test_type_change_of_a_renamed_column(tmp_path: Path) -> None:
    _, drift = drift_of(tmp_path, "o.jsonl", '{"Unit-Price": "9.5"}\n', ["unit_price"],
                        expected_types={"unit_price": "number"})
    assert drift.renamed == (("unit_price", "Unit-Price"),)
    assert drift.type_changes == (("Unit-Price", "number", "string"),)


def test_json_field_types_dominant_type() -> None:
    text = ('{"a": 1, "b": "x", "n": null, "o": {"k": 1}, "l": [1], "t": true}\n'
            '{"a": "2", "b": 3}\nnot json\n[{"a": 1}]\n'
            '{"a": "3", "b": 4.5e1, "n": null}\n{"b": "y"}\n{"b": 7}\n')
    assert json_field_types(text) == {"a": "string", "b": "number", "l": "array", "o": "object", "t": "boolean"}
    assert json_field_types('{"a": 1}\n{"a": "x"}\n') == {"a": "number"}
    assert json_field_types('{"a": "x"}\n{"a": 1}\n') == {"a": "string"}
    assert json_field_types("") == {}


def test_json_value_types_of_files(tmp_path: Path) -> None:
    jsonl = landing(tmp_path / "o.jsonl", '{"id": 123456789012345678901234567890, "p": {"x": [1]}}\n')
    assert json_value_types(jsonl, JSONL) == {"id": "number", "p": "object"}
    csv_file = landing(tmp_path / "c.csv", "id,name\n1,ann\n")
    assert json_value_types(csv_file, CSV) == {}
    with pytest.raises(IngestError):
        json_value_types(LandingFile("gone.jsonl", str(tmp_path / "gone.jsonl"), 0, 0), JSONL)


def test_csv_header_drift(tmp_path: Path) -> None:
    table, drift = drift_of(tmp_path, "customers-0002.csv", "id,full_name,Email,phone\n1,Ann,a@x,555\n",
                            ["id", "name", "email"], CSV)
    assert drift.renamed == (("email", "Email"),)
    assert drift.added == ("full_name", "phone")
    assert drift.missing == ("name",)
    assert drift.describe() == ("customers-0002.csv: new column `full_name`; new column `phone`; "
                                "missing column `name`; `email` renamed to `Email`?")
    assert apply_policy(table, drift, "rescue", source="customers").to_pylist() == [
        {"id": "1", RESCUED_DATA: '{"full_name":"Ann","Email":"a@x","phone":"555"}'},
    ]


def test_csv_single_pair_rename(tmp_path: Path) -> None:
    _, drift = drift_of(tmp_path, "c.csv", "id,surname\n1,Lee\n", ["id", "last_name"], CSV)
    assert drift.renamed == (("last_name", "surname"),)


# policies

ORDERS = ('{"id": 1, "Quantity": 2, "coupon": "X", "status": "new"}\n'
          '{"id": 2, "status": "paid"}\n'
          "not json\n"
          '{"id": 3, "coupon": null, "Quantity": 5}\n')


def test_evolve_keeps_the_table(tmp_path: Path) -> None:
    table, drift = drift_of(tmp_path, "o.jsonl", ORDERS, ["id", "quantity", "status", "channel"])
    assert apply_policy(table, drift, "evolve", source="orders") is table
    assert table.column_names == ["id", "Quantity", "coupon", "status", RESCUED_DATA]


def test_rescue_moves_added_and_renamed_columns(tmp_path: Path) -> None:
    table, drift = drift_of(tmp_path, "o.jsonl", ORDERS, ["id", "quantity", "status"])
    assert drift.renamed == (("quantity", "Quantity"),)
    assert drift.added == ("coupon",) and drift.missing == ()
    rescued = apply_policy(table, drift, "rescue", source="orders")
    assert rescued.schema == pa.schema([("id", pa.string()), ("status", pa.string()), (RESCUED_DATA, pa.string())])
    assert rescued.to_pylist() == [
        {"id": "1", "status": "new", RESCUED_DATA: '{"Quantity":"2","coupon":"X"}'},
        {"id": "2", "status": "paid", RESCUED_DATA: None},
        {"id": None, "status": None, RESCUED_DATA: "not json"},
        {"id": "3", "status": None, RESCUED_DATA: '{"Quantity":"5","coupon":null}'},
    ]


def test_rescue_wraps_earlier_rescued_text() -> None:
    table = pa.table({"id": ["1", "2", "3"], "coupon": ["X", None, 'say "hi"'],
                      RESCUED_DATA: ["raw line", "other", None]})
    drift = SchemaDrift("f", added=("coupon",))
    assert apply_policy(table, drift, "rescue", source="s").to_pylist() == [
        {"id": "1", RESCUED_DATA: '{"coupon":"X","_line":"raw line"}'},
        {"id": "2", RESCUED_DATA: "other"},
        {"id": "3", RESCUED_DATA: '{"coupon":"say \\"hi\\""}'},
    ]


def test_rescue_appends_rescued_column_when_absent() -> None:
    table = pa.table({"id": ["1", "2"], "coupon": ["X", None]})
    rescued = apply_policy(table, SchemaDrift("f", added=("coupon",)), "rescue", source="s")
    assert rescued.to_pylist() == [{"id": "1", RESCUED_DATA: '{"coupon":"X"}'}, {"id": "2", RESCUED_DATA: None}]


def test_rescue_keeps_type_changed_and_missing_columns_as_they_are(tmp_path: Path) -> None:
    table, drift = drift_of(tmp_path, "o.jsonl", '{"id": 1, "qty": "3"}\n', ["id", "qty", "status"],
                            expected_types={"id": "number", "qty": "number"})
    assert drift.type_changes == (("qty", "number", "string"),) and drift.missing == ("status",)
    assert apply_policy(table, drift, "rescue", source="orders") is table


def test_rescue_loses_nothing(tmp_path: Path) -> None:
    rows = [{"id": i} | ({"coupon": f'c"{i}é\\'} if i % 3 else {}) | ({"gift": i % 2 == 0} if i % 5 else {})
            | ({"meta": {"n": i}} if i % 7 == 0 else {}) for i in range(1, 301)]
    content = "".join(json.dumps(row) + "\n" for row in rows) + "broken {\n"
    table, drift = drift_of(tmp_path, "o.jsonl", content, ["id"])
    assert drift.added == ("coupon", "gift", "meta")
    rescued = apply_policy(table, drift, "rescue", source="orders")
    assert rescued.num_rows == table.num_rows == 301
    assert rescued.column_names == ["id", RESCUED_DATA]
    for before, after in zip(table.to_pylist(), rescued.column(RESCUED_DATA).to_pylist(), strict=True):
        moved = {name: before[name] for name in drift.added}
        if any(value is not None for value in moved.values()):
            assert json.loads(after) == moved
        else:
            assert after == before[RESCUED_DATA]
    assert rescued.column(RESCUED_DATA).to_pylist()[-1] == "broken {"


def test_fail_raises_with_every_change_and_the_fix(tmp_path: Path) -> None:
    content = '{"id": 1, "coupon": "X", "quantity": 2, "payload": "text"}\n'
    table, drift = drift_of(tmp_path, "orders-0004.jsonl", content, ["id", "status", "qty", "payload"],
                            expected_types={"id": "number", "payload": "object"})
    with pytest.raises(SchemaDriftError) as caught:
        apply_policy(table, drift, "fail", source="orders")
    message = str(caught.value)
    assert isinstance(caught.value, IngestError)
    assert caught.value.path == "orders-0004.jsonl"
    for part in ["source `orders`", "orders-0004.jsonl", "new column `coupon`", "new column `quantity`",
                 "missing column `status`", "missing column `qty`", "`payload` changed from object to string",
                 "declare", "`evolve`", "`rescue`", RESCUED_DATA]:
        assert part in message


def test_fail_without_drift_returns_the_table(tmp_path: Path) -> None:
    table, drift = drift_of(tmp_path, "o.jsonl", '{"id": 1}\n', ["id"])
    assert apply_policy(table, drift, "fail", source="orders") is table


def test_unknown_policy_is_refused() -> None:
    table = pa.table({"id": ["1"]})
    with pytest.raises(ValueError, match="drop"):
        apply_policy(table, SchemaDrift("f"), "drop", source="s")  # type: ignore[arg-type]
