"""Tests of the retail landing-data generator (``pipelines.retail.generate``)."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from engine.errors import LandingFileExists
from pipelines.retail.generate import SOURCES, GeneratedSource, generate

SCALE = 0.05
CSV_HEADERS = {
    "products": ["product_id", "name", "category", "price", "updated_at"],
    "order_items": ["order_id", "line_number", "product_id", "quantity", "unit_price", "updated_at"],
}


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, GeneratedSource]]:
    root = tmp_path_factory.mktemp("landing")
    return root, generate(root, scale=SCALE, seed=42)


def _files(root: Path, source: str) -> list[Path]:
    return sorted((root / source).glob(f"{source}-*.{SOURCES[source]}"))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _json(root: Path, source: str) -> list[list[dict]]:
    """Records per file, in file order."""
    return [[json.loads(line) for line in _lines(path)] for path in _files(root, source)]


def _csv(root: Path, source: str) -> list[list[dict]]:
    out = []
    for path in _files(root, source):
        with path.open(newline="") as handle:
            out.append(list(csv.DictReader(handle)))
    return out


def _flat(per_file: list[list[dict]]) -> list[dict]:
    return [record for records in per_file for record in records]


def _ts(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    generate(tmp_path / "a", scale=SCALE, seed=7)
    generate(tmp_path / "b", scale=SCALE, seed=7)
    generate(tmp_path / "c", scale=SCALE, seed=8)
    a, b, c = (_snapshot(tmp_path / name) for name in "abc")
    assert len(a) >= 2 * len(SOURCES)
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_counts_grow_linearly_with_scale(tmp_path: Path, landing) -> None:
    root, _ = landing
    generate(tmp_path, scale=2 * SCALE, seed=42)
    for source, key, expected in [("customers", "customer_id", 50), ("orders", "order_id", 600)]:
        small = {int(r[key]) for r in _flat(_json(root, source))}
        large = {int(r[key]) for r in _flat(_json(tmp_path, source))}
        assert len(small) == expected and len(large) == 2 * expected
    assert len({r["product_id"] for r in _flat(_csv(root, "products"))}) == 10
    assert len({r["product_id"] for r in _flat(_csv(tmp_path, "products"))}) == 20
    small_events, large_events = len(_flat(_json(root, "events"))), len(_flat(_json(tmp_path, "events")))
    assert 1.7 < large_events / small_events < 2.3


def test_every_source_has_several_files_matching_the_result(landing) -> None:
    root, result = landing
    assert list(result) == list(SOURCES)
    for source, ext in SOURCES.items():
        paths = _files(root, source)
        assert [p.name for p in paths] == result[source].files
        assert [p.name for p in paths] == [f"{source}-{i:04d}.{ext}" for i in range(1, len(paths) + 1)]
        assert len(paths) >= (2 if source == "products" else 6)
        assert result[source].bytes == sum(p.stat().st_size for p in paths)
        header = 1 if ext == "csv" else 0
        assert result[source].records == sum(len(_lines(p)) - header for p in paths)
        assert all(len(_lines(p)) > header for p in paths)


def test_tiny_scale_still_produces_every_source(tmp_path: Path) -> None:
    result = generate(tmp_path, scale=0.01, seed=1)
    assert all(len(r.files) >= 2 and r.records > 0 for r in result.values())
    assert len({int(r["customer_id"]) for r in _flat(_json(tmp_path, "customers"))}) == 10


@pytest.mark.parametrize("scale", [0, -1.0, float("nan")])
def test_rejects_a_scale_that_is_not_positive(tmp_path: Path, scale: float) -> None:
    with pytest.raises(ValueError, match="scale"):
        generate(tmp_path, scale=scale)
    assert not any(tmp_path.iterdir())


def test_never_replaces_a_landing_file_and_leaves_others(tmp_path: Path) -> None:
    generate(tmp_path, scale=SCALE, seed=42, batch=1)
    (tmp_path / "orders" / "orders-manual.jsonl").write_text("keep\n")
    before = _snapshot(tmp_path)
    with pytest.raises(LandingFileExists, match="customers-0001.jsonl already exists"):
        generate(tmp_path, scale=SCALE, seed=7)
    assert _snapshot(tmp_path) == before
    second = generate(tmp_path, scale=SCALE, seed=42, batch=2)
    assert (tmp_path / "orders" / "orders-manual.jsonl").read_text() == "keep\n"
    assert all(source.files == [f"{name}-0002.{SOURCES[name]}"] for name, source in second.items())


def test_every_line_is_valid_json_and_csv_rows_are_complete(landing) -> None:
    root, _ = landing
    for source, ext in SOURCES.items():
        for path in _files(root, source):
            if ext == "jsonl":
                assert all(isinstance(json.loads(line), dict) for line in _lines(path))
            else:
                with path.open(newline="") as handle:
                    rows = list(csv.reader(handle))
                assert rows[0] == CSV_HEADERS[source]
                assert all(len(row) == len(rows[0]) for row in rows)


def test_timestamps_are_iso_utc_and_span_the_period(landing) -> None:
    root, _ = landing
    pattern = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
    orders = _flat(_json(root, "orders"))
    events = _flat(_json(root, "events"))
    stamps = [r["order_ts"] for r in orders] + [r["updated_at"] for r in orders] + [r["event_ts"] for r in events]
    valid = [s for s in stamps if s != "not-a-date"]
    assert all(pattern.fullmatch(s) for s in valid)
    parsed = [_ts(s) for s in valid]
    assert min(parsed) >= datetime.fromisoformat("2025-12-31T00:00:00Z")
    assert max(parsed) - min(parsed) >= timedelta(days=120)
    placed = [_ts(r["order_ts"]) for r in orders]
    assert max(placed) - min(placed) >= timedelta(days=120)


def test_orders_have_one_record_per_status_change(landing) -> None:
    root, _ = landing
    orders = _flat(_json(root, "orders"))
    assert {r["status"] for r in orders} == {"placed", "paid", "shipped", "delivered", "cancelled"}
    placed = [r for r in orders if r["status"] == "placed"]
    assert all(r["updated_at"] in (r["order_ts"], "not-a-date") for r in placed)
    later = [r for r in orders if r["status"] != "placed" and r["updated_at"] != "not-a-date"]
    assert all(_ts(r["updated_at"]) > _ts(r["order_ts"]) for r in later)
    assert any(r["customer_id"] is None for r in orders)


def test_exact_duplicate_lines(landing) -> None:
    root, _ = landing
    for source in ["orders", "order_items", "events"]:
        lines = [line for path in _files(root, source) for line in _lines(path)]
        duplicated = [line for line, n in Counter(lines).items() if n > 1 and not line.startswith("order_id,")]
        assert len(duplicated) >= 3, source


def _out_of_order(root: Path, source: str, key: str) -> list[tuple[int, str]]:
    """Records whose updated_at is older than that of a record of the same key in an earlier file."""
    newest: dict[int, str] = {}
    found = []
    for records in _json(root, source):
        valid = [(int(r[key]), r["updated_at"]) for r in records if r["updated_at"] != "not-a-date"]
        found += [(k, ts) for k, ts in valid if k in newest and ts < newest[k]]
        for k, ts in valid:
            newest[k] = max(ts, newest.get(k, ts))
    return found


def test_a_change_arrives_in_a_later_file_than_a_newer_one(landing) -> None:
    root, _ = landing
    assert len(_out_of_order(root, "orders", "order_id")) >= 3
    assert len(_out_of_order(root, "customers", "customer_id")) >= 1


def test_late_status_changes_arrive_days_later(landing) -> None:
    root, _ = landing
    per_file = _json(root, "orders")
    stamps = [[_ts(r["updated_at"]) for r in recs if r["updated_at"] != "not-a-date"] for recs in per_file]
    late = [ts for i in range(1, len(stamps)) for ts in stamps[i] if ts < max(stamps[i - 1]) - timedelta(days=1)]
    assert len(late) >= 10


def test_customer_cdc_feed(landing) -> None:
    root, _ = landing
    per_file = _json(root, "customers")
    records = _flat(per_file)
    ops = Counter(r["op"] for r in records)
    assert ops["c"] >= 50 and ops["u"] >= 10 and ops["d"] >= 1
    deletes = [r for r in records if r["op"] == "d"]
    assert all(set(r) == {"op", "customer_id", "updated_at"} for r in deletes)
    deleted_at = {int(r["customer_id"]): r["updated_at"] for r in deletes}
    assert any(r["op"] == "c" and int(r["customer_id"]) in deleted_at
               and r["updated_at"] > deleted_at[int(r["customer_id"])] for r in records)
    history: dict[int, dict[str, set]] = {}
    for r in records:
        if r["op"] != "d":
            fields = history.setdefault(int(r["customer_id"]), {"email": set(), "country": set(), "segment": set()})
            fields["email"].add((r["email"] or "").lower())
            fields["country"].add(r["country"].strip().upper())
            fields["segment"].add(r["segment"])
    for field in ["email", "country", "segment"]:
        assert any(len(h[field]) > 1 for h in history.values()), field
    assert all("loyalty_tier" not in r for r in per_file[0])
    assert all("loyalty_tier" in r for r in per_file[-1] if r["op"] != "d")
    assert any(r.get("loyalty_tier") for r in per_file[-1])


def test_untidy_values(landing) -> None:
    root, _ = landing
    customers = [r for r in _flat(_json(root, "customers")) if r["op"] != "d"]
    assert any(r["email"] is None for r in customers)
    assert any(r["email"] and r["email"] != r["email"].lower() for r in customers)
    assert any(re.fullmatch(r" [a-z]{2} ", r["country"]) for r in customers)
    assert all(re.fullmatch(r"[A-Z]{2}| [a-z]{2} ", r["country"]) for r in customers)


def test_ids_written_as_strings(landing) -> None:
    root, _ = landing
    for source, key in [("customers", "customer_id"), ("orders", "order_id"), ("orders", "customer_id"),
                        ("events", "customer_id")]:
        values = [r[key] for r in _flat(_json(root, source))]
        strings = [v for v in values if isinstance(v, str)]
        assert strings and all(re.fullmatch(r"\d+", v) for v in strings), (source, key)
        assert sum(isinstance(v, int) for v in values) > 10 * len(strings)


def test_unparseable_timestamps(landing) -> None:
    root, _ = landing
    assert any(r["updated_at"] == "not-a-date" for r in _flat(_json(root, "customers")))
    assert any(r["updated_at"] == "not-a-date" for r in _flat(_json(root, "orders")))
    assert any(r["event_ts"] == "not-a-date" for r in _flat(_json(root, "events")))


def test_order_items_defects_and_shape(landing) -> None:
    root, _ = landing
    items = _flat(_csv(root, "order_items"))
    quantities = Counter(r["quantity"] for r in items)
    assert quantities["two"] >= 1
    assert any(q.startswith("-") and q[1:].isdigit() for q in quantities)
    assert all(q == "two" or re.fullmatch(r"-?\d+", q) for q in quantities)
    lines_per_order = Counter(int(r["order_id"]) for r in {tuple(r.values()): r for r in items}.values())
    assert max(lines_per_order.values()) >= 4 and sum(n >= 2 for n in lines_per_order.values()) > 100
    placed = {int(r["order_id"]): r["order_ts"] for r in _flat(_json(root, "orders"))}
    assert all(r["updated_at"] >= placed[int(r["order_id"])] for r in items)
    corrected = Counter((r["order_id"], r["line_number"]) for r in {tuple(r.values()): r for r in items}.values())
    assert any(n > 1 for n in corrected.values())


def test_product_snapshots(landing) -> None:
    root, _ = landing
    first, second = _csv(root, "products")
    assert [r["product_id"] for r in first] == [r["product_id"] for r in second]
    assert any(r["price"] == "N/A" for r in first + second)
    changed = [(a, b) for a, b in zip(first, second) if (a["price"], a["name"]) != (b["price"], b["name"])
               and "N/A" not in (a["price"], b["price"])]
    assert changed and all(b["updated_at"] > a["updated_at"] for a, b in changed)


def test_events_sessions_and_payload(landing) -> None:
    root, _ = landing
    events = _flat(_json(root, "events"))
    assert all(isinstance(r["event_id"], str) and isinstance(r["session_id"], str) for r in events)
    assert {r["event_type"] for r in events} == {"page_view", "search", "add_to_cart", "checkout"}
    payloads = [r["payload"] for r in events]
    assert all(set(p) == {"page", "product_id", "query", "device"} and set(p["device"]) == {"os", "browser"}
               for p in payloads)
    assert any(isinstance(p["product_id"], int) for p in payloads) and any(p["query"] for p in payloads)
    assert any(r["customer_id"] is None for r in events)
    sessions = Counter(r["session_id"] for r in {r["event_id"]: r for r in events}.values())
    assert min(sessions.values()) >= 5 and max(sessions.values()) <= 15
    customers = {int(r["customer_id"]) for r in events if r["customer_id"] is not None}
    assert len(customers) >= 45
    placed = {(int(r["customer_id"]), r["order_ts"]) for r in _flat(_json(root, "orders")) if r["customer_id"]}
    checkouts = {(int(r["customer_id"]), r["event_ts"]) for r in events
                 if r["event_type"] == "checkout" and r["customer_id"] is not None}
    assert len(placed & checkouts) >= 100


def test_batches_in_order_rebuild_the_whole_generation(tmp_path: Path) -> None:
    whole = generate(tmp_path / "whole", scale=0.05)
    batches = max(len(source.files) for source in whole.values())
    delivered: dict[str, int] = {}
    for number in range(1, batches + 1):
        for name, source in generate(tmp_path / "stream", scale=0.05, batch=number).items():
            assert source.files == whole[name].files[number - 1:number]
            delivered[name] = delivered.get(name, 0) + source.records
    assert delivered == {name: source.records for name, source in whole.items()}
    for name, source in whole.items():
        for file in source.files:
            assert (tmp_path / "stream" / name / file).read_bytes() == (tmp_path / "whole" / name / file).read_bytes()
    with pytest.raises(ValueError, match=f"between 1 and {batches}"):
        generate(tmp_path / "stream", scale=0.05, batch=batches + 1)
