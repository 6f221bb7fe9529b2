"""A bad-input corpus through the real retail pipeline.

Each case lands a tiny hand-written valid baseline, injects one defect and runs only the tables it needs.
Every case checks that the run returns, that every landing record is accounted for (bronze rows = records,
silver rows in = written + quarantined + duplicates) and that a person can see why a record was set aside.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
import ray.data
from deltalake import DeltaTable

from engine import FileSource, Merge, Overwrite, Pipeline, Runner, RunResult
from engine.columns import REJECTED_REASON, RESCUED_DATA, SOURCE_FILE
from engine.layout import Layout
from engine.quality.checks import Expect, Quality
from engine.runlog import RunRecord, read_records
from engine.tables.delta import table_exists
from pipelines.retail.pipeline import retail
from pipelines.retail.transforms import UNPARSEABLE
from tests.conftest import settings_at

pytestmark = pytest.mark.usefixtures("ray_local")

EXTENSIONS = {"customers": "jsonl", "products": "csv", "orders": "jsonl", "order_items": "csv", "events": "jsonl"}


def _device(system: str, browser: str) -> dict[str, str]:
    return {"os": system, "browser": browser}


BASELINE: dict[str, list[dict[str, Any]]] = {
    "customers": [
        {"op": "c", "customer_id": 1, "email": "ann@example.com", "first_name": "Ann", "last_name": "Lee",
         "country": "DE", "segment": "retail", "signup_date": "2025-12-01", "updated_at": "2026-01-01T08:00:00Z"},
        {"op": "c", "customer_id": 2, "email": "bob@example.com", "first_name": "Bob", "last_name": "Roy",
         "country": "FR", "segment": "business", "signup_date": "2025-12-02", "updated_at": "2026-01-01T09:00:00Z"},
        {"op": "c", "customer_id": 3, "email": "cy@example.com", "first_name": "Cy", "last_name": "Ng",
         "country": "US", "segment": "retail", "signup_date": "2025-12-03", "updated_at": "2026-01-01T10:00:00Z"},
    ],
    "products": [
        {"product_id": 1, "name": "Mug", "category": "kitchen", "price": 9.5, "updated_at": "2026-01-01T00:00:00Z"},
        {"product_id": 2, "name": "Lamp", "category": "home", "price": 25.0, "updated_at": "2026-01-01T00:00:00Z"},
        {"product_id": 3, "name": "Pen", "category": "office", "price": 1.25, "updated_at": "2026-01-01T00:00:00Z"},
    ],
    "orders": [
        {"order_id": 1, "customer_id": 1, "status": "paid", "order_ts": "2026-01-02T10:00:00Z",
         "updated_at": "2026-01-02T11:00:00Z"},
        {"order_id": 2, "customer_id": 2, "status": "placed", "order_ts": "2026-01-03T09:30:00Z",
         "updated_at": "2026-01-03T09:30:00Z"},
        {"order_id": 3, "customer_id": 3, "status": "shipped", "order_ts": "2026-01-03T12:00:00Z",
         "updated_at": "2026-01-04T08:00:00Z"},
    ],
    "order_items": [
        {"order_id": 1, "line_number": 1, "product_id": 1, "quantity": 2, "unit_price": 9.5,
         "updated_at": "2026-01-02T10:00:00Z"},
        {"order_id": 1, "line_number": 2, "product_id": 3, "quantity": 1, "unit_price": 1.25,
         "updated_at": "2026-01-02T10:00:00Z"},
        {"order_id": 2, "line_number": 1, "product_id": 2, "quantity": 1, "unit_price": 25.0,
         "updated_at": "2026-01-03T09:30:00Z"},
        {"order_id": 3, "line_number": 1, "product_id": 1, "quantity": 4, "unit_price": 9.5,
         "updated_at": "2026-01-03T12:00:00Z"},
    ],
    "events": [
        {"event_id": "e1", "customer_id": 1, "session_id": "s1", "event_type": "page_view",
         "event_ts": "2026-01-02T09:55:00Z",
         "payload": {"page": "/products/1", "product_id": 1, "device": _device("ios", "safari")}},
        {"event_id": "e2", "customer_id": 1, "session_id": "s1", "event_type": "search",
         "event_ts": "2026-01-02T09:57:00Z", "payload": {"page": "/search", "query": "mug",
                                                         "device": _device("ios", "safari")}},
        {"event_id": "e3", "customer_id": None, "session_id": "s2", "event_type": "add_to_cart",
         "event_ts": "2026-01-03T14:00:00Z",
         "payload": {"page": "/products/2", "product_id": 2, "device": _device("linux", "firefox")}},
    ],
}
"""A tiny valid landing data set, three or four records per source, in the formats of docs/retail.md."""

NEW_RECORD: dict[str, dict[str, Any]] = {
    "customers": {"op": "c", "customer_id": 4, "email": "di@example.com", "first_name": "Di", "last_name": "Kim",
                  "country": "GB", "segment": "retail", "signup_date": "2025-12-04",
                  "updated_at": "2026-01-01T11:00:00Z"},
    "products": {"product_id": 4, "name": "Cup", "category": "kitchen", "price": 3.5,
                 "updated_at": "2026-01-01T00:00:00Z"},
    "orders": {"order_id": 4, "customer_id": 1, "status": "placed", "order_ts": "2026-01-05T10:00:00Z",
               "updated_at": "2026-01-05T10:00:00Z"},
    "order_items": {"order_id": 3, "line_number": 2, "product_id": 2, "quantity": 1, "unit_price": 25.0,
                    "updated_at": "2026-01-03T12:00:00Z"},
    "events": {"event_id": "e4", "customer_id": 2, "session_id": "s3", "event_type": "checkout",
               "event_ts": "2026-01-03T09:29:00Z",
               "payload": {"page": "/checkout", "device": _device("mac", "chrome")}},
}
"""One more valid record per source, with a key the baseline does not use: the carrier of a defect."""


# Landing files


def line(source: str, record: dict[str, Any]) -> str:
    """`record` as one landing line of `source` (a JSON object, or CSV fields in baseline column order)."""
    if EXTENSIONS[source] == "jsonl":
        return json.dumps(record, ensure_ascii=False)
    return ",".join("" if value is None else str(value) for value in record.values())


def new_line(source: str, **changes: Any) -> str:
    """The landing line of the new record of `source` with `changes` applied."""
    return line(source, NEW_RECORD[source] | changes)


def baseline_lines(source: str) -> list[str]:
    """The baseline landing lines of `source`, the CSV header first."""
    header = [",".join(BASELINE[source][0])] if EXTENSIONS[source] == "csv" else []
    return header + [line(source, record) for record in BASELINE[source]]


def file_name(source: str, number: int = 1) -> str:
    """`<source>-<number>.<ext>`, the landing file naming of docs/retail.md (JSON lines for other sources)."""
    return f"{source}-{number:04d}.{EXTENSIONS.get(source, 'jsonl')}"


def land(root: Path, source: str, content: Sequence[str] | bytes, number: int = 1) -> Path:
    """Write landing file `number` of `source`: `content` lines, or exactly `content` bytes."""
    folder = root / "landing" / source
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name(source, number)
    path.write_bytes(content if isinstance(content, bytes) else "".join(f"{text}\n" for text in content).encode())
    return path


def landed(root: Path, **first_files: Sequence[str]) -> Path:
    """`root` with file 0001 of every source: the baseline, or the lines given for that source."""
    for source in EXTENSIONS:
        land(root, source, first_files.get(source, baseline_lines(source)))
    return root


# Runs and tables


def run(root: Path, *tables: str) -> RunResult:
    """Run the retail pipeline on `root` for `tables` and everything upstream of them."""
    return Runner(retail, settings_at(root)).run(select=" ".join(f"+{table}" for table in tables))


def record(result: RunResult, table: str) -> RunRecord:
    """The run record of `table` in `result`."""
    return next(r for r in result.records if r.table == table)


def read(root: Path, table: str) -> pa.Table:
    """The latest version of `table`."""
    return DeltaTable(Layout.at(str(root)).table(table)).to_pyarrow_table()


def frame(root: Path, table: str) -> pl.DataFrame:
    """The latest version of `table` as a polars frame."""
    data = pl.from_arrow(read(root, table))
    assert isinstance(data, pl.DataFrame)
    return data


def quarantine(root: Path, table: str) -> pa.Table:
    """The quarantined rows of `table`; an empty table when none was ever quarantined."""
    uri = Layout.at(str(root)).quarantine(table)
    if not table_exists(uri):
        return pa.table({REJECTED_REASON: pa.array([], pa.string())})
    return DeltaTable(uri).to_pyarrow_table()


def assert_accounted(
    root: Path, result: RunResult, table: str, *, landed: int, written: int, quarantined: int = 0, duplicate: int = 0
) -> RunRecord:
    """Bronze holds the `landed` records; silver `table` wrote, quarantined and dropped exactly the rest."""
    bronze = "bronze." + table.split(".")[1]
    ingest = record(result, bronze)
    assert ingest.status == "succeeded", ingest.error
    assert ingest.rows_in == ingest.rows_written == read(root, bronze).num_rows == landed
    silver = record(result, table)
    assert silver.status == "succeeded", silver.error
    assert silver.rows_in == silver.rows_written + silver.rows_quarantined + silver.rows_duplicate
    counts = (silver.rows_in, silver.rows_written, silver.rows_quarantined, silver.rows_duplicate)
    assert counts == (landed, written, quarantined, duplicate)
    assert quarantine(root, table).num_rows == quarantined
    assert read(root, table).num_rows == written
    return silver


def reasons(root: Path, table: str) -> list[str]:
    """The `_rejected_reason` of every quarantined row of `table`."""
    return quarantine(root, table).column(REJECTED_REASON).to_pylist()


# One defective record in a baseline file


@dataclass(frozen=True)
class Defect:
    """One bad landing line appended to the baseline file of `source`.

    Attributes:
        source: the landing source.
        line: the line as it lands.
        reason: the exact `_rejected_reason` silver gives the record.
        rescued: the line cannot be parsed, so bronze keeps its raw text in `_rescued_data`.
    """

    source: str
    line: str
    reason: str
    rescued: bool = False


FUTURE, BEFORE_1970 = "2100-01-01T00:00:00Z", "1969-12-31T23:59:59Z"

DEFECTS = {
    "malformed-json": Defect("orders", '{"order_id": 4, "status": "placed"', UNPARSEABLE, rescued=True),
    "json-array": Defect("orders", '[4, 1, "placed"]', UNPARSEABLE, rescued=True),
    "json-bare-number": Defect("orders", "42", UNPARSEABLE, rescued=True),
    "csv-too-many-fields": Defect("order_items", new_line("order_items") + ",surplus", UNPARSEABLE,
                                  rescued=True),
    "csv-too-few-fields": Defect("order_items", "3,2,2", UNPARSEABLE, rescued=True),
    "quantity-two": Defect("order_items", new_line("order_items", quantity="two"),
                           "quantity: not an integer ('two')"),
    "price-n/a": Defect("products", new_line("products", price="N/A"), "price: not a number ('N/A')"),
    "json-id-as-word": Defect("orders", new_line("orders", customer_id="two"), "customer_id: not an integer ('two')"),
    "csv-price-NaN": Defect("products", new_line("products", price="NaN"), "price: not a number ('NaN')"),
    "csv-price-inf": Defect("products", new_line("products", price="inf"), "price: not a number ('inf')"),
    "csv-unit-price--inf": Defect("order_items", new_line("order_items", unit_price="-inf"),
                                  "unit_price: not a number ('-inf')"),
    "json-null-key": Defect("orders", new_line("orders", order_id=None), "order_id: missing"),
    "csv-empty-key": Defect("order_items", new_line("order_items", order_id=None), "order_id: missing"),
    "order-status-lost": Defect("orders", new_line("orders", status="lost"), "status: unknown value ('lost')"),
    "order-in-2100": Defect("orders", new_line("orders", order_ts=FUTURE, updated_at=FUTURE),
                            "failed checks: order_ts_not_in_future"),
    "order-before-1970": Defect("orders", new_line("orders", order_ts=BEFORE_1970),
                                "failed checks: order_ts_after_2000"),
    "event-in-2100": Defect("events", new_line("events", event_ts=FUTURE), "failed checks: event_ts_not_in_future"),
    "event-before-1970": Defect("events", new_line("events", event_ts=BEFORE_1970),
                                "failed checks: event_ts_after_2000"),
    "customer-in-2100": Defect("customers", new_line("customers", updated_at=FUTURE),
                               "failed checks: updated_at_not_in_future"),
    "customer-before-1970": Defect("customers", new_line("customers", updated_at=BEFORE_1970),
                                   "failed checks: updated_at_after_2000"),
}


@pytest.mark.parametrize("defect", DEFECTS.values(), ids=DEFECTS.keys())
def test_a_defective_record_is_kept_in_bronze_and_quarantined_in_silver_with_its_reason(
    tmp_path: Path, defect: Defect
) -> None:
    """The record lands in bronze (raw text rescued when unparseable) and in silver's quarantine only."""
    root = landed(tmp_path, **{defect.source: [*baseline_lines(defect.source), defect.line]})
    table = f"silver.{defect.source}"
    result = run(root, table)
    records = len(BASELINE[defect.source]) + 1
    assert_accounted(root, result, table, landed=records, written=records - 1, quarantined=1)
    assert reasons(root, table) == [defect.reason]
    assert quarantine(root, table).column(SOURCE_FILE).to_pylist() == [file_name(defect.source)]
    rescued = read(root, f"bronze.{defect.source}").column(RESCUED_DATA).to_pylist()
    assert rescued == [None] * (records - 1) + [defect.line if defect.rescued else None]


def test_the_quarantined_row_of_an_unparseable_line_shows_its_raw_text(tmp_path: Path) -> None:
    """Whoever reads the quarantine sees the line that could not be parsed, not only `order_id: missing`."""
    bad = '{"order_id": 4, "status": "placed"'
    root = landed(tmp_path, orders=[*baseline_lines("orders"), bad])
    run(root, "silver.orders")
    row = quarantine(root, "silver.orders").to_pylist()[0]
    assert any(isinstance(value, str) and bad in value for value in row.values())


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_json_nan_or_infinity_literal_is_read_leniently_and_rejected_in_silver(tmp_path: Path, literal: str) -> None:
    """Like Python's json module, the reader accepts NaN/Infinity literals: bronze keeps the text, silver
    rejects it as no integer, naming the value."""
    bad = new_line("orders").replace('"customer_id": 1', f'"customer_id": {literal}')
    root = landed(tmp_path, orders=[*baseline_lines("orders"), bad])
    result = run(root, "silver.orders")
    assert_accounted(root, result, "silver.orders", landed=4, written=3, quarantined=1)
    assert read(root, "bronze.orders").column("customer_id").to_pylist()[-1] in (literal, literal.replace("inity", ""))
    [reason] = reasons(root, "silver.orders")
    assert reason.startswith("customer_id: not an integer (")


# Duplicates


@pytest.mark.parametrize("duplicate", [
    BASELINE["orders"][0],
    BASELINE["orders"][0] | {"status": "placed", "updated_at": BASELINE["orders"][0]["order_ts"]},
], ids=["exact-duplicate", "same-key-older-updated-at"])
def test_a_duplicate_key_keeps_the_latest_change_and_counts_the_other(
    tmp_path: Path, duplicate: dict[str, Any]
) -> None:
    """The duplicate arrives after the newer change; silver keeps the newer one and counts one duplicate."""
    root = landed(tmp_path, orders=[*baseline_lines("orders"), line("orders", duplicate)])
    result = run(root, "silver.orders")
    assert_accounted(root, result, "silver.orders", landed=4, written=3, duplicate=1)
    statuses = dict(frame(root, "silver.orders").select("order_id", "status").iter_rows())
    assert statuses == {1: "paid", 2: "placed", 3: "shipped"}


# Whole files

NOT_UTF8 = {
    "invalid-utf8-byte": new_line("customers", last_name="Grxn").encode().replace(b"Grxn", b"Gr\xffn") + b"\n",
    "latin-1": (new_line("customers", first_name="Jos\u00e9") + "\n").encode("latin-1"),
}
"""A second customers file that is not UTF-8, by the defect's name."""

EMPTY_FILES = {
    "jsonl-zero-bytes": ("orders", b""),
    "jsonl-blank-lines": ("orders", b"\n  \n\n"),
    "csv-zero-bytes": ("products", b""),
    "csv-header-only": ("products", (baseline_lines("products")[0] + "\n").encode()),
}
"""A second landing file without records: (source, content), by the defect's name."""

SHAPELESS_FILES = {name: file for name, file in EMPTY_FILES.items() if name != "csv-header-only"}
"""The empty files that do not even name their columns."""


@pytest.mark.parametrize("content", NOT_UTF8.values(), ids=NOT_UTF8.keys())
def test_a_file_that_is_not_utf8_is_quarantined_whole_by_name_and_a_re_export_is_ingested(
    tmp_path: Path, content: bytes
) -> None:
    """The file is not ingested in part or silently skipped: it is quarantined whole with its bytes, named in the
    run record, and every other file still ingests; a re-export under a new name is ingested."""
    root = landed(tmp_path)
    land(root, "customers", content, number=2)
    result = run(root, "silver.customers", "silver.products")
    ingest = assert_accounted(root, result, "silver.customers", landed=3, written=3)
    [quarantined] = record(result, "bronze.customers").details["files_quarantined"]
    assert quarantined.startswith("customers-0002.jsonl: ") and "not valid UTF-8" in quarantined
    held = DeltaTable(Layout.at(str(root)).quarantine("bronze.customers")).to_pyarrow_table()
    assert held.select([SOURCE_FILE, "_raw_file"]).to_pylist() == [{SOURCE_FILE: "customers-0002.jsonl",
                                                                     "_raw_file": content}]
    assert ingest.rows_written == 3
    assert_accounted(root, result, "silver.products", landed=3, written=3)

    land(root, "customers", content.decode("latin-1").encode("utf-8"), number=3)
    fixed = run(root, "silver.customers")
    assert record(fixed, "bronze.customers").rows_written == 1
    assert read(root, "bronze.customers").num_rows == read(root, "silver.customers").num_rows == 4
    assert DeltaTable(Layout.at(str(root)).quarantine("bronze.customers")).to_pyarrow_table().num_rows == 1


@pytest.mark.parametrize(("source", "content"), EMPTY_FILES.values(), ids=EMPTY_FILES.keys())
def test_an_empty_landing_file_adds_no_rows_and_fails_nothing(tmp_path: Path, source: str, content: bytes) -> None:
    """An empty file next to a baseline file is ingested as zero records."""
    root = landed(tmp_path)
    land(root, source, content, number=2)
    result = run(root, f"silver.{source}")
    assert result.succeeded, [r.error for r in result.failures()]
    assert_accounted(root, result, f"silver.{source}", landed=3, written=3)
    assert record(result, f"bronze.{source}").details["files_new"] == 2


def test_a_file_read_error_names_the_table_and_carries_no_remote_traceback(tmp_path: Path) -> None:
    """The bronze error reads like every other table error: the table, then the cause."""
    root = landed(tmp_path)
    land(root, "customers", NOT_UTF8["latin-1"], number=2)
    pipeline = Pipeline("strict")
    pipeline.ingest("bronze.customers", FileSource("customers", "jsonl", on_unreadable="fail"))
    error = record(Runner(pipeline, settings_at(root)).run(), "bronze.customers").error or ""
    assert "`bronze.customers`" in error and "customers-0002.jsonl" in error
    assert "\x1b[" not in error and 'File "' not in error and "\n" not in error


@pytest.mark.parametrize(("source", "content"), SHAPELESS_FILES.values(), ids=SHAPELESS_FILES.keys())
def test_an_empty_landing_file_is_not_schema_drift(tmp_path: Path, source: str, content: bytes) -> None:
    """A file with no records says nothing about the source's columns."""
    root = landed(tmp_path)
    land(root, source, content, number=2)
    details = record(run(root, f"bronze.{source}"), f"bronze.{source}").details
    assert "schema_drift" not in details


def test_a_source_whose_only_file_is_empty_fails_nothing(tmp_path: Path) -> None:
    """The first delivery of a source is an empty file: nothing to build yet, and nothing fails."""
    land(tmp_path, "orders", b"")
    result = run(tmp_path, "silver.orders")
    assert result.succeeded, [r.error for r in result.failures()]


def test_a_one_megabyte_value_is_kept_in_bronze_and_valid_in_silver(tmp_path: Path) -> None:
    """`first_name` has no length rule, so a 1 MiB name is stored as is in bronze, and masked in silver."""
    name = "N" * 2**20
    root = landed(tmp_path, customers=[*baseline_lines("customers"), new_line("customers", first_name=name)])
    result = run(root, "silver.customers")
    assert_accounted(root, result, "silver.customers", landed=4, written=4)
    assert read(root, "bronze.customers").column("first_name").to_pylist()[-1] == name
    assert frame(root, "silver.customers").filter(pl.col("customer_id") == 4)["first_name"].item() == "N***"


# Enumerations


def test_an_unknown_event_type_is_kept_and_counted_by_its_warn_check(tmp_path: Path) -> None:
    """`event_type` is a `warn` check: the row is written and the failure is counted in the run record."""
    root = landed(tmp_path, events=[*baseline_lines("events"), new_line("events", event_type="hover")])
    result = run(root, "silver.events")
    silver = assert_accounted(root, result, "silver.events", landed=4, written=4)
    check = next(c for c in silver.checks if c.check.startswith("event_type:isin"))
    assert (check.action, check.rows_checked, check.rows_failed) == ("warn", 4, 1)
    assert check.example is not None and '"event_type": "hover"' in check.example
    events = dict(frame(root, "silver.events").select("event_id", "event_type").iter_rows())
    assert events["e4"] == "hover"
    runs = read_records(Layout.at(str(root)).runs()).filter(pl.col("table") == "silver.events")
    assert json.loads(runs["details"].item())["checks"][check.check]["rows_failed"] == 1


# Schema drift


def test_an_extra_column_is_recorded_as_drift_and_kept_in_bronze(tmp_path: Path) -> None:
    """Under the default `evolve` policy bronze widens; silver ignores the column."""
    root = landed(tmp_path)
    land(root, "orders", [new_line("orders", channel="web")], number=2)
    result = run(root, "silver.orders")
    assert record(result, "bronze.orders").details["schema_drift"] == ["orders-0002.jsonl: new column `channel`"]
    assert_accounted(root, result, "silver.orders", landed=4, written=4)
    assert read(root, "bronze.orders").column("channel").to_pylist() == [None, None, None, "web"]


def test_a_missing_column_is_recorded_as_drift_and_left_null(tmp_path: Path) -> None:
    """`customer_id` is nullable in silver, so the order is valid without it."""
    root = landed(tmp_path)
    land(root, "orders", [line("orders", {k: v for k, v in NEW_RECORD["orders"].items() if k != "customer_id"})],
         number=2)
    result = run(root, "silver.orders")
    drift = record(result, "bronze.orders").details["schema_drift"]
    assert drift == ["orders-0002.jsonl: missing column `customer_id`"]
    assert_accounted(root, result, "silver.orders", landed=4, written=4)
    customers = dict(frame(root, "silver.orders").select("order_id", "customer_id").iter_rows())
    assert customers == {1: 1, 2: 2, 3: 3, 4: None}


def test_a_csv_file_with_another_delimiter_lands_as_one_column_and_is_rejected_in_silver(tmp_path: Path) -> None:
    """`;` in a `,` source: each line is one field under a header-named column, recorded as drift; silver
    finds no `product_id` and quarantines the rows."""
    header = ";".join(NEW_RECORD["products"])
    rows = [";".join(map(str, (NEW_RECORD["products"] | {"product_id": i}).values())) for i in (4, 5)]
    root = landed(tmp_path)
    land(root, "products", [header, *rows], number=2)
    result = run(root, "silver.products")
    missing = "; ".join(f"missing column `{name}`" for name in NEW_RECORD["products"])
    assert record(result, "bronze.products").details["schema_drift"] == [
        f"products-0002.csv: new column `{header}`; {missing}"]
    assert_accounted(root, result, "silver.products", landed=5, written=3, quarantined=2)
    assert read(root, "bronze.products").column(header).to_pylist() == [None, None, None, *rows]
    assert reasons(root, "silver.products") == ["product_id: missing"] * 2
    assert set(quarantine(root, "silver.products").column(SOURCE_FILE).to_pylist()) == {"products-0002.csv"}


# A `fail` check


def _typed_payments(batch: pa.Table) -> pa.Table:
    typed = pl.DataFrame(batch).select(pl.col("payment_id").cast(pl.Int64), pl.col("amount").cast(pl.Float64))
    return typed.to_arrow()


def payments_pipeline(kind: Overwrite | Merge | None = None) -> Pipeline:
    """bronze.payments -> silver.payments (an `amount >= 0` check that fails the table) -> gold.payments.

    `silver.payments` is an `Overwrite` table unless another `kind` is given.
    """
    pipeline = Pipeline("payments")
    pipeline.ingest("bronze.payments", FileSource("payments", "jsonl"))
    guarded = Quality(expectations=(Expect("amount_not_negative", "amount >= 0", action="fail"),))

    @pipeline.table("silver.payments", kind=kind or Overwrite(), quality=guarded)
    def payments(bronze_payments: ray.data.Dataset) -> ray.data.Dataset:
        return bronze_payments.map_batches(_typed_payments, batch_format="pyarrow")

    @pipeline.table("gold.payments", kind=Overwrite())
    def gold_payments(silver_payments: ray.data.Dataset) -> ray.data.Dataset:
        return silver_payments

    return pipeline


def parquet_files(folder: str) -> set[str]:
    """Every Parquet file under a table folder, outside its Delta log."""
    return {str(p) for p in Path(folder).rglob("*.parquet") if "_delta_log" not in p.parts}


def test_a_fail_check_aborts_the_commit_and_skips_downstream(tmp_path: Path) -> None:
    """The table keeps its version, its staged files are removed, the error shows the check and the row."""
    land(tmp_path, "payments", [json.dumps({"payment_id": i, "amount": amount}) for i, amount in ((1, 10.0), (2, 0))])
    settings = settings_at(tmp_path)
    assert Runner(payments_pipeline(), settings).run().succeeded
    land(tmp_path, "payments", [json.dumps({"payment_id": 3, "amount": -5.5})], number=2)
    result = Runner(payments_pipeline(), settings).run()

    assert record(result, "bronze.payments").status == "succeeded"
    failed = record(result, "silver.payments")
    assert failed.status == "failed" and failed.output_version is None and failed.error is not None
    for part in ("`silver.payments`", "`amount_not_negative`", "1 of 3 rows", '"payment_id": 3', '"amount": -5.5',
                 "stays at version 0"):
        assert part in failed.error
    skipped = record(result, "gold.payments")
    assert skipped.status == "skipped" and "`silver.payments`" in (skipped.error or "")
    layout = Layout.at(str(tmp_path))
    silver = DeltaTable(layout.table("silver.payments"))
    assert silver.version() == 0
    assert parquet_files(layout.table("silver.payments")) == {uri.removeprefix("file://") for uri in silver.file_uris()}
    assert sorted(silver.to_pyarrow_table().column("payment_id").to_pylist()) == [1, 2]
    assert DeltaTable(layout.table("gold.payments")).version() == 0
    runs = read_records(layout.runs()).filter(pl.col("run_id") == result.run_id)
    assert dict(runs.select("table", "status").iter_rows()) == {
        "bronze.payments": "succeeded", "silver.payments": "failed", "gold.payments": "skipped"}


def test_a_fail_check_on_a_merge_table_leaves_no_staging_folder(tmp_path: Path) -> None:
    """The change files of an aborted merge go, with their folder."""
    land(tmp_path, "payments", [json.dumps({"payment_id": 1, "amount": -5.5})])
    result = Runner(payments_pipeline(Merge(keys=["payment_id"])), settings_at(tmp_path)).run()
    assert record(result, "silver.payments").status == "failed"
    assert not (tmp_path / "_staging").exists()
