"""Columns a source declares typed: stored typed in bronze, every value that does not parse kept as it arrived."""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from engine import FileSource, Runner
from engine.columns import RESCUED_DATA, SOURCE_FILE
from engine.errors import PipelineDefinitionError
from engine.ingest.readers import read_records
from engine.ingest.sources import LandingFile
from engine.ingest.typed import typed_columns
from tests.conftest import settings_at
from tests.engine.ingest.test_landing_files import bronze, grow, land, pipeline_of

TYPES = {"id": "int64", "price": "float64", "day": "date32", "ok": "bool", "at": "timestamp[us]",
         "amount": pa.decimal128(9, 2)}


def records(content: bytes, source: FileSource) -> pa.Table:
    """The records of a landing file as an ingestion task stages them."""
    file = LandingFile(f"f.{source.format}", "unused", len(content), 0)
    return typed_columns(read_records(content, file, source)[0], source.column_types)


def test_a_declaration_names_arrow_types_and_refuses_what_bronze_cannot_type() -> None:
    source = FileSource("items", "csv", types=TYPES)
    assert source.column_types == {"id": pa.int64(), "price": pa.float64(), "day": pa.date32(), "ok": pa.bool_(),
                                   "at": pa.timestamp("us"), "amount": pa.decimal128(9, 2)}
    assert FileSource("items", "csv", types=source.types) == source
    for bad in ({"id": "list<int64>"}, {"id": "integer"}, {"_id": "int64"}, {"id": pa.list_(pa.int64())},
                {"id": "decimal128(12)"}, {"id": "timestamp[xx]"}, {"id": "decimal128(a,b)"}):
        with pytest.raises(PipelineDefinitionError, match="source `items`: cannot declare column"):
            FileSource("items", "csv", types=bad)


def test_a_csv_whose_values_all_parse_is_typed_by_arrows_reader() -> None:
    content = (b"id,price,day,ok,at,amount,note\n"
               b" 1 ,2.5,2024-01-05,true,2024-01-05 10:00:00,3.10,a\n"
               b"2,,2024-02-29,0,2024-01-05T10:00:00.5,-1,\n")
    table = records(content, FileSource("items", "csv", types=TYPES))
    assert table.schema.field("note").type == pa.string()
    assert table.to_pylist() == [
        {"id": 1, "price": 2.5, "day": dt.date(2024, 1, 5), "ok": True, "at": dt.datetime(2024, 1, 5, 10),
         "amount": Decimal("3.10"), "note": "a", RESCUED_DATA: None},
        {"id": 2, "price": None, "day": dt.date(2024, 2, 29), "ok": False,
         "at": dt.datetime(2024, 1, 5, 10, 0, 0, 500000), "amount": Decimal("-1.00"), "note": None,
         RESCUED_DATA: None}]


def test_a_value_that_does_not_parse_is_null_and_kept_in_rescued_data_while_the_others_are_typed() -> None:
    content = (b"id,price,day,note\n1,2.5,2024-01-05,a\n+2,x,2024-13-01,b\n3, 4 ,,c\n"
               b"4,5e1,2024-1-5,d\n1,2,3,4,5\n")
    table = records(content, FileSource("items", "csv", types={"id": "int64", "price": "float64", "day": "date32"}))
    assert table.schema.field("id").type == pa.int64() and table.schema.field("day").type == pa.date32()
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [1, None, 3, 4, None]
    assert [r["price"] for r in rows] == [2.5, None, 4.0, 50.0, None]
    assert [r["day"] for r in rows] == [dt.date(2024, 1, 5), None, None, None, None]
    assert [json.loads(r[RESCUED_DATA]) if r[RESCUED_DATA] and r[RESCUED_DATA].startswith("{") else r[RESCUED_DATA]
            for r in rows] == [None, {"id": "+2", "price": "x", "day": "2024-13-01"}, None,
                               {"id": None, "price": None, "day": "2024-1-5"}, "1,2,3,4,5"]


def test_json_lines_are_typed_value_by_value() -> None:
    content = b'{"id": 1, "price": 2.5}\n{"id": "7", "price": "cheap"}\n{"id": 1.5}\nnot json\n'
    table = records(content, FileSource("items", "jsonl", types={"id": "int64", "price": "float64"}))
    rows = table.to_pylist()
    assert [(r["id"], r["price"]) for r in rows] == [(1, 2.5), (7, None), (None, None), (None, None)]
    assert [r[RESCUED_DATA] for r in rows][1:] == ['{"id":null,"price":"cheap"}', '{"id":"1.5","price":null}',
                                                   "not json"]


@pytest.mark.parametrize("seed", range(3))
def test_typing_random_text_keeps_every_value_either_typed_or_rescued(seed: int) -> None:
    draw = random.Random(seed)
    words = [draw.choice([str(draw.randint(-10**6, 10**6)), f" {draw.randint(0, 99)} ", "", "1.5", "x", "--3",
                          "9" * 25, None]) for _ in range(5_000)]
    table = typed_columns(pa.table({"n": pa.array(words, pa.string())}), {"n": pa.int64()})
    typed, rescued = table.column("n").to_pylist(), table.column(RESCUED_DATA).to_pylist()
    for word, value, kept in zip(words, typed, rescued, strict=True):
        text = (word or "").strip()
        if text.lstrip("-").isdigit() and text.count("-") <= 1 and abs(int(text)) < 2**63:
            assert (value, kept) == (int(text), None)
        elif text:
            assert (value, json.loads(kept)) == (None, {"n": word})
        else:
            assert (value, kept) == (None, None)


@pytest.mark.usefixtures("ray_local")
def test_bronze_stores_declared_columns_typed_through_runs_and_growth(tmp_path: Path) -> None:
    source = FileSource("items", "csv", growth="append-only", types={"id": "int64", "price": "float64"})
    path = land(tmp_path, "a.csv", b"\xef\xbb\xbfid,price,note\n1,2.5,a\n2,oops,b\n")
    settings, pipeline = settings_at(tmp_path), pipeline_of(source)
    assert Runner(pipeline, settings).run().succeeded
    grow(path, b"3,4.25,c\n")
    land(tmp_path, "b.csv", b"id,price,note\n4,1e2,d\n")
    result = Runner(pipeline, settings).run()
    assert result.succeeded, [r.error for r in result.records]
    table = bronze(tmp_path)
    assert (table.schema.field("id").type, table.schema.field("price").type,
            table.schema.field("note").type) == (pa.int64(), pa.float64(), pa.string())
    assert table.select(["id", "price", "note", RESCUED_DATA]).to_pylist() == [
        {"id": 1, "price": 2.5, "note": "a", RESCUED_DATA: None},
        {"id": 2, "price": None, "note": "b", RESCUED_DATA: '{"price":"oops"}'},
        {"id": 3, "price": 4.25, "note": "c", RESCUED_DATA: None},
        {"id": 4, "price": 100.0, "note": "d", RESCUED_DATA: None}]
    assert table.column(SOURCE_FILE).to_pylist() == ["a.csv", "a.csv", "a.csv", "b.csv"]


@pytest.mark.usefixtures("ray_local")
def test_declaring_types_on_a_table_stored_as_text_fails_until_it_is_ingested_again(tmp_path: Path) -> None:
    land(tmp_path, "a.csv", b"id,note\n1,a\n2,b\n")
    settings = settings_at(tmp_path)
    assert Runner(pipeline_of(FileSource("items", "csv")), settings).run().succeeded
    land(tmp_path, "b.csv", b"id,note\n3,c\n")
    typed = pipeline_of(FileSource("items", "csv", types={"id": "int64"}))
    [record] = Runner(typed, settings).run().records
    assert record.status == "failed"
    assert "\n" not in record.error
    assert "`bronze.items`" in record.error and "column `id` is stored as string and declared as int64" in record.error
    assert "--full-refresh" in record.error
    assert bronze(tmp_path).column("id").to_pylist() == ["1", "2"]

    result = Runner(typed, settings).run("bronze.items", full_refresh=True)
    assert result.succeeded, [r.error for r in result.records]
    table = bronze(tmp_path)
    assert table.schema.field("id").type == pa.int64()
    assert table.select(["id", "note"]).to_pylist() == [{"id": 1, "note": "a"}, {"id": 2, "note": "b"},
                                                        {"id": 3, "note": "c"}]
    land(tmp_path, "c.csv", b"id,note\n4,d\n")
    assert Runner(typed, settings).run().succeeded
    assert bronze(tmp_path).column("id").to_pylist() == [1, 2, 3, 4]
