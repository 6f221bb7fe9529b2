"""Hostile landing files against the README's promises about bronze.

Generated files (encodings, byte-order marks, repeated JSON keys, nesting, long lines, truncation, header drift,
blank lines, CRLF) go through the readers the ingestion tasks use, many examples without Ray; a fixed handful
goes through the runner. For every file, every record is in bronze (value for value, as text) or in
`_rescued_data`, or the file is quarantined whole with a reason and its bytes: nothing disappears.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import FileSource, Pipeline, Runner
from engine.columns import INGESTION_COLUMNS, RAW_FILE, REJECTED_REASON, RESCUED_DATA, SOURCE_FILE
from engine.errors import UnreadableFileError
from engine.ingest.readers import landing_bytes, read_records
from engine.ingest.sources import LandingFile
from engine.layout import Layout
from tests.conftest import settings_at

pytestmark = [pytest.mark.adversarial]

BOUNDED = settings(max_examples=60, deadline=None, derandomize=True)
FEWER = settings(BOUNDED, max_examples=25)
JSONL, CSV = FileSource("hostile", "jsonl"), FileSource("hostile", "csv")
GROWING = FileSource("hostile", "jsonl", growth="append-only")


# What a file's bytes must become.

class Pairs(list[tuple[str, Any]]):
    """A JSON object as its key-value pairs, so that a repeated key is seen (and an empty object is not taken for
    an empty array)."""


def pairs(items: list[tuple[str, Any]]) -> Pairs:
    return Pairs(items)


def no_constant(name: str) -> None:
    raise ValueError(name)


def json_record(line: str) -> list[tuple[str, Any]] | None:
    """The fields of a line that is one JSON object with distinct, usable keys; None for any other line."""
    try:
        value = json.loads(line, object_pairs_hook=pairs, parse_constant=no_constant)
    except ValueError:
        return None
    if not isinstance(value, Pairs):
        return None
    keys = [key for key, _ in value]
    if len(set(keys)) != len(keys) or any(key == "" or key in INGESTION_COLUMNS for key in keys):
        return None
    return value


def same_json_value(stored: str | None, original: Any) -> bool:
    """Whether bronze's text is the JSON value that arrived (strings exactly, other values as JSON)."""
    if original is None or isinstance(original, str):
        return stored == original
    return stored is not None and json.loads(stored, object_pairs_hook=pairs) == original


def utf8_text(raw: bytes) -> str | None:
    """The text a file's bytes hold (without a leading byte-order mark), None when they are not UTF-8."""
    try:
        return raw.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError:
        return None


def assert_json_conserved(raw: bytes, table: pa.Table) -> None:
    """Each non-blank line of a JSON-lines file is one row, in order: its fields value for value, or the line
    itself in `_rescued_data`."""
    text = utf8_text(raw)
    assert text is not None
    lines = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    rows = table.to_pylist()
    assert len(rows) == len(lines)
    for line, row in zip(lines, rows, strict=True):
        record = json_record(line)
        if record is None:
            assert row[RESCUED_DATA] == line
            continue
        assert row[RESCUED_DATA] is None
        assert all(same_json_value(row[key], value) for key, value in record), (line, row)
        assert all(row[key] is None for key in row if key not in dict(record) and key != RESCUED_DATA)


def read_whole(tmp_path: Path, raw: bytes, source: FileSource) -> tuple[pa.Table | None, str | None]:
    """What an ingestion task makes of a file: its records, or why it is quarantined whole (then the bytes
    it keeps are the file's)."""
    path = tmp_path / "landed"
    path.write_bytes(raw)
    file = LandingFile(path.name, str(path), len(raw), 0)
    kept, end = landing_bytes(file, source)
    assert (kept, end) == (raw, len(raw))
    try:
        table, _ = read_records(kept, file, source)
    except UnreadableFileError as err:
        return None, str(err)
    assert all(field.type == pa.string() for field in table.schema)
    return table, None


# Generated files.

KEYS = st.one_of(st.text(max_size=6), st.sampled_from(["id", "name", "Name", "", RESCUED_DATA, SOURCE_FILE]))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                      max_leaves=6)
BLANK = st.sampled_from(["", " ", "\t", "  \t "])
ENCODINGS = st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "latin-1", "gzip"])


def encode(text: str, encoding: str) -> bytes:
    """`text` in `encoding` (latin-1 only when it can hold the text), or gzip-compressed UTF-8."""
    if encoding == "gzip":
        return gzip.compress(text.encode(), mtime=0)
    try:
        return text.encode(encoding)
    except UnicodeEncodeError:
        return text.encode("utf-8")


@st.composite
def json_line(draw: st.DrawFn) -> str:
    """One line: a JSON object (keys may repeat, be empty or name an engine column), nested values, a very long
    value, another JSON value, or text that is not JSON."""
    kind = draw(st.sampled_from(["object", "object", "object", "repeated", "long", "array", "garbage"]))
    fields = draw(st.lists(st.tuples(KEYS, VALUES), max_size=5))
    ascii_only = draw(st.booleans())
    if kind == "repeated" and fields:
        fields.append((fields[0][0], draw(VALUES)))
    if kind == "long":
        fields.append(("long", "x" * draw(st.integers(10_000, 50_000))))
    if kind == "array":
        return json.dumps(draw(st.lists(VALUES, max_size=3)), ensure_ascii=ascii_only)
    if kind == "garbage":
        return draw(st.text(max_size=30).filter(lambda s: "\n" not in s and "\r" not in s and s.strip()))
    return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=ascii_only)}: {json.dumps(v, ensure_ascii=ascii_only)}"
                           for k, v in fields) + "}"


@st.composite
def jsonl_file(draw: st.DrawFn) -> bytes:
    """A JSON-lines file: CRLF or LF, blank lines, with or without a last line break, in an encoding, maybe cut
    at any byte (mid-record or mid-character)."""
    lines = draw(st.lists(st.one_of(json_line(), BLANK), max_size=8))
    terminator = draw(st.sampled_from(["\n", "\r\n"]))
    text = terminator.join(lines) + draw(st.sampled_from(["", terminator]))
    raw = encode(text, draw(ENCODINGS))
    if draw(st.booleans()) and raw:
        raw = raw[:draw(st.integers(0, len(raw)))]
    return raw


@given(raw=jsonl_file())
@BOUNDED
def test_every_json_line_is_a_row_or_rescued_or_its_file_quarantined(tmp_path_factory: pytest.TempPathFactory,
                                                                      raw: bytes) -> None:
    """Bronze never loses data: a JSON-lines file's every line is a row value for value, or rescued whole in
    `_rescued_data`; a file that is not UTF-8 is quarantined whole with its bytes and a reason."""
    table, reason = read_whole(tmp_path_factory.mktemp("json"), raw, JSONL)
    if utf8_text(raw) is None:
        assert table is None and reason is not None and "not valid UTF-8" in reason
        return
    assert table is not None, reason
    assert_json_conserved(raw, table)


CELLS = st.text(max_size=10).filter(lambda s: "\x00" not in s)
NAMES = st.text(min_size=1, max_size=6).filter(lambda s: not (set(s) & {"\n", "\r", "\x00"}) and s.strip() == s
                                               and s not in INGESTION_COLUMNS)


@st.composite
def csv_file(draw: st.DrawFn) -> tuple[bytes, list[str], list[list[str]], list[str]]:
    """A CSV file and what it holds: header, rows, and rows of another width (header drift) as their text.
    Cells may hold delimiters, quotes and line breaks; the file may have CRLF, blank lines between records, a
    byte-order mark, another encoding."""
    header = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    rows = draw(st.lists(st.lists(CELLS, min_size=len(header), max_size=len(header)), max_size=6))
    drifted = draw(st.lists(st.lists(st.from_regex(r"[a-z0-9]{1,4}", fullmatch=True), min_size=len(header) + 1,
                                     max_size=len(header) + 2), max_size=2))
    terminator = draw(st.sampled_from(["\n", "\r\n"]))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=terminator)
    writer.writerow(header)
    records = [(row, False) for row in rows] + [(row, True) for row in drifted]
    order = draw(st.permutations(range(len(records))))
    for index in order:
        if draw(st.booleans()):
            out.write(terminator)
        writer.writerow(records[index][0])
    raw = encode(out.getvalue(), draw(ENCODINGS))
    in_order = [records[i] for i in order]
    return raw, header, [row for row, drift in in_order if not drift], [",".join(r) for r, drift in in_order if drift]


@given(generated=csv_file())
@BOUNDED
def test_every_csv_row_is_a_row_or_rescued_or_its_file_quarantined(
    tmp_path_factory: pytest.TempPathFactory, generated: tuple[bytes, list[str], list[list[str]], list[str]]
) -> None:
    """Bronze never loses data: a CSV file's every row is a row value for value under its header's names (an
    empty cell null, or empty text when quoted), a row of another width is rescued as its text; a file that is not UTF-8 is quarantined
    whole."""
    raw, header, rows, drifted = generated
    table, reason = read_whole(tmp_path_factory.mktemp("csv"), raw, CSV)
    if utf8_text(raw) is None:
        assert table is None and reason is not None
        return
    assert table is not None, reason
    assert table.column_names == [*header, RESCUED_DATA]
    read = table.to_pylist()
    parsed = [[row[name] or None for name in header] for row in read if row[RESCUED_DATA] is None]
    assert parsed == [[cell or None for cell in row] for row in rows]
    assert sorted(row[RESCUED_DATA] for row in read if row[RESCUED_DATA] is not None) == sorted(drifted)


@given(lines=st.lists(st.dictionaries(st.sampled_from(["id", "v", "ü"]), st.text(max_size=8), min_size=1),
                      min_size=1, max_size=8),
       cuts=st.lists(st.floats(0, 1), max_size=4))
@FEWER
def test_an_append_only_file_cut_anywhere_ingests_each_line_once(
    tmp_path_factory: pytest.TempPathFactory, lines: list[dict[str, str]], cuts: list[float]
) -> None:
    """Each landing file is ingested once: a growing file seen at any byte (mid-line, mid-character) gives each
    complete line exactly once over its growths, and the last line once it is complete."""
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    raw = text.encode()
    path = tmp_path_factory.mktemp("grow") / "grows.jsonl"
    ingested: list[dict[str, Any]] = []
    start = 0
    for size in [*sorted(int(cut * len(raw)) for cut in cuts), len(raw)]:
        path.write_bytes(raw[:size])
        file = LandingFile(path.name, str(path), size, 0).resumed_at(start)
        kept, start = landing_bytes(file, GROWING)
        ingested += read_records(kept, file, GROWING)[0].to_pylist()
    assert start == len(raw)
    assert [{k: v for k, v in row.items() if v is not None and k != RESCUED_DATA} for row in ingested] == lines


# Through the runner.

def hostile_json_files() -> dict[str, bytes]:
    long_line = json.dumps({"id": "long", "text": "é" * 300_000}) + "\n"
    return {
        "bom.jsonl": codecs.BOM_UTF8 + b'{"id": "1", "year": 2024}\r\n\r\n{"id": "2", "year": "2025"}\r\n',
        "repeated.jsonl": b'{"id": "3", "name": "a", "name": "b"}\n{"id": "4", "n": {"x": 1, "x": 2}}\n',
        "long.jsonl": long_line.encode(),
        "cut-record.jsonl": b'{"id": "5"}\n{"id": "6", "na',
        "gzip.jsonl": gzip.compress(b'{"id": "7"}\n', mtime=0),
        "utf16.jsonl": '{"id": "8"}\n'.encode("utf-16"),
        "latin1.jsonl": '{"id": "9", "name": "café"}\n'.encode("latin-1"),
        "cut-character.jsonl": '{"id": "10", "name": "é'.encode()[:-1],
    }


def hostile_csv_files() -> dict[str, bytes]:
    return {
        "bom.csv": codecs.BOM_UTF8 + b"id,year\r\n1,2024\r\n\r\n2,007\r\n",
        "quoted.csv": b'id,year\n3,"20\n26"\n4,""\n',
        "drift.csv": b"id,year,extra\n5,2027,x\n6,2028\n",
        "utf16.csv": "id,year\n7,2029\n".encode("utf-16"),
        "repeated-header.csv": b"id,id\n8,9\n",
    }


def test_hostile_files_through_the_runner_are_in_bronze_or_quarantined_whole_once(tmp_path: Path,
                                                                                   ray_local: None) -> None:
    """Bronze never loses data, and each landing file is ingested once: a run over hostile JSON-lines and CSV
    files puts every record in bronze (as text, or rescued) or quarantines its file whole with its bytes and a
    reason; the next run ingests and quarantines nothing again; the landing files are left as they were."""
    files = {"json": hostile_json_files(), "csv": hostile_csv_files()}
    for folder, contents in files.items():
        for name, raw in contents.items():
            (tmp_path / "landing" / folder).mkdir(parents=True, exist_ok=True)
            (tmp_path / "landing" / folder / name).write_bytes(raw)
    pipeline = Pipeline("hostile")
    pipeline.ingest("bronze.json", FileSource("json", "jsonl"))
    pipeline.ingest("bronze.csv", FileSource("csv", "csv"))
    settings = settings_at(tmp_path)
    result = Runner(pipeline, settings).run()
    assert result.succeeded, [r.error for r in result.records]
    layout = Layout.at(str(tmp_path))

    def by_file(uri: str) -> dict[str, list[dict[str, Any]]]:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for row in DeltaTable(uri).to_pyarrow_table().to_pylist():
            grouped.setdefault(row[SOURCE_FILE], []).append(row)
        return grouped

    json_rows, json_held = by_file(layout.table("bronze.json")), by_file(layout.quarantine("bronze.json"))
    for name, raw in files["json"].items():
        if utf8_text(raw) is None:
            [held] = json_held[name]
            assert held[RAW_FILE] == raw and "not valid UTF-8" in held[REJECTED_REASON]
            assert name not in json_rows
        else:
            schema = [c for c in json_rows[name][0] if c not in INGESTION_COLUMNS[1:]]
            assert_json_conserved(raw, pa.Table.from_pylist(json_rows[name]).select(schema))
    assert sorted(json_held) == ["cut-character.jsonl", "gzip.jsonl", "latin1.jsonl", "utf16.jsonl"]

    csv_rows, csv_held = by_file(layout.table("bronze.csv")), by_file(layout.quarantine("bronze.csv"))
    def values(name: str) -> list[tuple[Any, ...]]:
        return [(r["id"], r["year"], r.get("extra"), r[RESCUED_DATA]) for r in csv_rows[name]]

    assert values("bom.csv") == [("1", "2024", None, None), ("2", "007", None, None)]
    assert values("quoted.csv") == [("3", "20\n26", None, None), ("4", "", None, None)]
    assert values("drift.csv") == [("5", "2027", "x", None), (None, None, None, "6,2028")]
    assert {name: rows[0][RAW_FILE] for name, rows in csv_held.items()} == {
        name: files["csv"][name] for name in ("utf16.csv", "repeated-header.csv")}
    assert "`id` names several columns" in csv_held["repeated-header.csv"][0][REJECTED_REASON]

    again = Runner(pipeline, settings).run()
    assert [r.status for r in again.records] == ["unchanged", "unchanged"]
    assert DeltaTable(layout.quarantine("bronze.json")).to_pyarrow_table().num_rows == 4
    assert DeltaTable(layout.quarantine("bronze.csv")).to_pyarrow_table().num_rows == 2
    for folder, contents in files.items():
        assert {p.name: p.read_bytes() for p in (tmp_path / "landing" / folder).iterdir()} == contents
