"""Tests of engine.ingest.readers and engine.ingest.sources: landing files read as strings, and discovery."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from engine.columns import RESCUED_DATA
from engine.errors import IngestError, PipelineDefinitionError, UnreadableFileError
from engine.ingest.discovery import discover
from engine.ingest.readers import json_field_types, landing_bytes, read_landing_file
from engine.ingest.sources import FileSource, LandingFile

JSONL = FileSource("src", "jsonl")
CSV = FileSource("src", "csv")


def landing(path: Path, content: str | bytes) -> LandingFile:
    """`content` written to `path`, described as a landing file."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    path.write_bytes(data)
    stat = path.stat()
    return LandingFile(path.name, str(path), stat.st_size, stat.st_mtime_ns)


def read(tmp_path: Path, content: str | bytes, source: FileSource = JSONL) -> pa.Table:
    """The table read from a file holding `content`."""
    return read_landing_file(landing(tmp_path / "file", content), source)


def all_strings(table: pa.Table) -> bool:
    """Whether every column is a plain string column."""
    return all(field.type == pa.string() for field in table.schema)


# JSON lines


def test_json_fields_are_strings(tmp_path: Path) -> None:
    table = read(tmp_path, '{"id": 42, "price": 9.5, "ok": true, "name": "ann", "none": null}\n'
                           '{"id": -7, "price": 0, "ok": false, "name": "bob", "none": null}\n')
    assert all_strings(table)
    assert table.column_names == ["id", "price", "ok", "name", "none", RESCUED_DATA]
    assert table.to_pylist() == [
        {"id": "42", "price": "9.5", "ok": "true", "name": "ann", "none": None, RESCUED_DATA: None},
        {"id": "-7", "price": "0", "ok": "false", "name": "bob", "none": None, RESCUED_DATA: None},
    ]


def test_json_nested_values_are_json_text(tmp_path: Path) -> None:
    table = read(tmp_path, '{"id": 1, "payload": {"page": "/home", "device": {"os": "ios"}}, '
                           '"tags": ["a", 2], "text": "caf\\u00e9 \\"q\\""}\n')
    row = table.to_pylist()[0]
    assert json.loads(row["payload"]) == {"page": "/home", "device": {"os": "ios"}}
    assert row["payload"] == '{"page":"/home","device":{"os":"ios"}}'
    assert json.loads(row["tags"]) == ["a", 2]
    assert row["text"] == 'café "q"'


def test_json_big_integer_keeps_every_digit(tmp_path: Path) -> None:
    table = read(tmp_path, '{"n": 123456789012345678901234567890, "m": 9007199254740993}\n')
    assert table.to_pylist()[0]["n"] == "123456789012345678901234567890"
    assert table.to_pylist()[0]["m"] == "9007199254740993"


def test_json_numbers_keep_their_value_in_canonical_text(tmp_path: Path) -> None:
    table = read(tmp_path, '{"price": 1.50, "qty": 1e3, "big": 12345678901234567890, "id": "007"}\n')
    row = table.to_pylist()[0]
    assert float(row["price"]) == 1.5 and float(row["qty"]) == 1000.0
    assert row["big"] == "12345678901234567890" and row["id"] == "007"


def test_json_later_key_is_null_before(tmp_path: Path) -> None:
    table = read(tmp_path, '{"id": 1}\n{"id": 2}\n{"id": 3, "tier": "gold"}\n{"tier": "silver"}\n')
    assert table.column_names == ["id", "tier", RESCUED_DATA]
    assert table.column("id").to_pylist() == ["1", "2", "3", None]
    assert table.column("tier").to_pylist() == [None, None, "gold", "silver"]


def test_json_keys_in_first_seen_order(tmp_path: Path) -> None:
    table = read(tmp_path, '{"b": 1, "a": 2}\n{"z": 3, "a": 4, "c": 5}\n')
    assert table.column_names == ["b", "a", "z", "c", RESCUED_DATA]


def test_json_key_order_uses_position_in_first_line_seen(tmp_path: Path) -> None:
    table = read(tmp_path, '{"a": 1}\n{"a": 2, "c": 3, "b": 4}\n{"b": 5}\n')
    assert table.column_names == ["a", "c", "b", RESCUED_DATA]


def test_json_keys_differing_in_case_are_distinct(tmp_path: Path) -> None:
    table = read(tmp_path, '{"id": 1, "ID": 2, "a.b": 3, "it\'s": 4}\n')
    assert table.to_pylist() == [{"id": "1", "ID": "2", "a.b": "3", "it's": "4", RESCUED_DATA: None}]


def test_json_malformed_and_non_object_lines_are_rescued(tmp_path: Path) -> None:
    table = read(tmp_path, '{"id": 1, "v": "x"}\n{"id": 2, "v": \n[1,2]\n42\n"text"\nnull\n{"id": 3}\n')
    assert table.column_names == ["id", "v", RESCUED_DATA]
    assert table.to_pylist() == [
        {"id": "1", "v": "x", RESCUED_DATA: None},
        {"id": None, "v": None, RESCUED_DATA: '{"id": 2, "v": '},
        {"id": None, "v": None, RESCUED_DATA: "[1,2]"},
        {"id": None, "v": None, RESCUED_DATA: "42"},
        {"id": None, "v": None, RESCUED_DATA: '"text"'},
        {"id": None, "v": None, RESCUED_DATA: "null"},
        {"id": "3", "v": None, RESCUED_DATA: None},
    ]


def test_json_only_bad_lines(tmp_path: Path) -> None:
    table = read(tmp_path, "not json\n[]\n")
    assert table.column_names == [RESCUED_DATA]
    assert table.column(RESCUED_DATA).to_pylist() == ["not json", "[]"]


def test_json_blank_lines_and_crlf(tmp_path: Path) -> None:
    table = read(tmp_path, '\r\n{"id": 1}\r\n\r\n   \n\t\r\n{"id": 2, "s": "a b"}\r\n{"id": 3}')
    assert table.to_pylist() == [
        {"id": "1", "s": None, RESCUED_DATA: None},
        {"id": "2", "s": "a b", RESCUED_DATA: None},
        {"id": "3", "s": None, RESCUED_DATA: None},
    ]


def test_json_crlf_on_rescued_line_is_dropped(tmp_path: Path) -> None:
    table = read(tmp_path, "oops\r\n")
    assert table.column(RESCUED_DATA).to_pylist() == ["oops"]


def test_json_row_order_is_kept(tmp_path: Path) -> None:
    table = read(tmp_path, "".join(f'{{"i": {i}}}\n' for i in range(5000)))
    assert table.column("i").to_pylist() == [str(i) for i in range(5000)]


@pytest.mark.parametrize("content", ["", "\n\n", "  \r\n"])
def test_json_empty_file_has_no_rows(tmp_path: Path, content: str) -> None:
    table = read(tmp_path, content)
    assert table.num_rows == 0
    assert table.column_names == [RESCUED_DATA]
    assert all_strings(table)


def test_invalid_utf8_names_the_file(tmp_path: Path) -> None:
    file = landing(tmp_path / "bad.json", b'{"id": 1}\n{"name": "caf\xe9"}\n')
    for source in (JSONL, CSV):
        with pytest.raises(IngestError) as caught:
            read_landing_file(file, source)
        assert str(tmp_path / "bad.json") in str(caught.value)
        assert "UTF-8" in str(caught.value)
        assert caught.value.path == file.uri


def test_json_record_with_a_duplicated_key_is_rescued_whole(tmp_path: Path) -> None:
    line = '{"id": 1, "name": "a", "name": "b"}'
    table = read(tmp_path, line + '\n{"id": 2, "name": "c"}\n')
    assert table.to_pylist() == [{"id": None, "name": None, RESCUED_DATA: line},
                                 {"id": "2", "name": "c", RESCUED_DATA: None}]
    assert json_field_types(line + '\n{"id": "x"}\n') == {"id": "string"}


@pytest.mark.parametrize("line", ['{"": 1, "a": 2}', '{"_rescued_data": "x", "a": 1}', '{"_source_file": "f"}'])
def test_json_record_with_an_empty_or_engine_column_key_is_rescued_whole(tmp_path: Path, line: str) -> None:
    table = read(tmp_path, line + "\n")
    assert table.to_pylist() == [{RESCUED_DATA: line}]


@pytest.mark.parametrize("header", ["a,a", ",a", "_rescued_data,a", "a,_run_id"])
def test_csv_header_without_a_name_of_its_own_per_column_is_unreadable(tmp_path: Path, header: str) -> None:
    with pytest.raises(UnreadableFileError, match="unusable CSV header"):
        read(tmp_path, header + "\n1,2\n", CSV)


def test_json_duplicated_key_inside_a_nested_value_keeps_its_text(tmp_path: Path) -> None:
    table = read(tmp_path, '{"a": {"x": 1, "x": 2}}\n')
    assert table.to_pylist() == [{"a": '{"x":1,"x":2}', RESCUED_DATA: None}]


@pytest.mark.parametrize("source", [JSONL, CSV], ids=["jsonl", "csv"])
def test_a_byte_order_mark_is_not_part_of_the_first_field(tmp_path: Path, source: FileSource) -> None:
    content = '{"year": 2024, "n": "007"}\n' if source is JSONL else "year,n\n2024,007\n"
    plain = read(tmp_path, content, source)
    marked = read(tmp_path, b"\xef\xbb\xbf" + content.encode(), source)
    assert marked.equals(plain)
    assert marked.column_names[0] == "year"
    assert marked.column("year").to_pylist() == ["2024"]
    assert all_strings(marked)


@pytest.mark.parametrize("content", [
    b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03",
    "id,name\n1,é\n".encode("utf-16"),
    '{"name": "é'.encode()[:-1],
], ids=["gzip", "utf16", "cut-character"])
def test_undecodable_files_raise_their_own_error(tmp_path: Path, content: bytes) -> None:
    for source in (JSONL, CSV):
        with pytest.raises(UnreadableFileError, match="not valid UTF-8"):
            read(tmp_path, content, source)


def test_append_only_reads_complete_lines_from_where_ingestion_ended(tmp_path: Path) -> None:
    source = FileSource("src", "jsonl", growth="append-only")
    file = landing(tmp_path / "a.jsonl", '{"id": 1}\n{"id": 2}\n{"id"')
    raw, end = landing_bytes(file, source)
    assert (raw, end) == (b'{"id": 1}\n{"id": 2}\n', 20)
    grown = landing(tmp_path / "a.jsonl", '{"id": 1}\n{"id": 2}\n{"id": 3}\n{"id": 4').resumed_at(end)
    assert landing_bytes(grown, source) == (b'{"id": 3}\n', 30)
    assert read_landing_file(grown, source).column("id").to_pylist() == ["3"]
    assert landing_bytes(grown, JSONL)[1] == grown.size


def test_append_only_csv_tail_is_read_under_the_header(tmp_path: Path) -> None:
    source = FileSource("src", "csv", growth="append-only")
    first = landing(tmp_path / "a.csv", b"\xef\xbb\xbf\nyear,n\n2024,007\n")
    _, end = landing_bytes(first, source)
    grown = landing(tmp_path / "a.csv", b"\xef\xbb\xbf\nyear,n\n2024,007\n2025,008\n2026").resumed_at(end)
    assert read_landing_file(grown, source).to_pylist() == [{"year": "2025", "n": "008", RESCUED_DATA: None}]


def test_unknown_source_settings_name_the_choices() -> None:
    with pytest.raises(PipelineDefinitionError, match="append-only"):
        FileSource("src", "jsonl", growth="grows")  # type: ignore[arg-type]
    with pytest.raises(PipelineDefinitionError, match="quarantine, fail"):
        FileSource("src", "jsonl", on_unreadable="skip")  # type: ignore[arg-type]


def test_missing_file_is_an_ingest_error(tmp_path: Path) -> None:
    file = LandingFile("gone.json", str(tmp_path / "gone.json"), 0, 0)
    with pytest.raises(IngestError, match="gone.json"):
        read_landing_file(file, JSONL)


# CSV


def test_csv_header_quotes_and_empty_fields(tmp_path: Path) -> None:
    table = read(tmp_path, 'id,name,note\n1,"Smith, Ann",\n2,"",x\n3,plain,"say ""hi"""\n', CSV)
    assert all_strings(table)
    assert table.column_names == ["id", "name", "note", RESCUED_DATA]
    assert table.to_pylist() == [
        {"id": "1", "name": "Smith, Ann", "note": None, RESCUED_DATA: None},
        {"id": "2", "name": "", "note": "x", RESCUED_DATA: None},
        {"id": "3", "name": "plain", "note": 'say "hi"', RESCUED_DATA: None},
    ]


def test_csv_numbers_stay_text(tmp_path: Path) -> None:
    table = read(tmp_path, "id,price\n007,1.50\n8,1e3\n", CSV)
    assert table.to_pylist() == [
        {"id": "007", "price": "1.50", RESCUED_DATA: None},
        {"id": "8", "price": "1e3", RESCUED_DATA: None},
    ]


def test_csv_row_with_wrong_field_count_is_rescued(tmp_path: Path) -> None:
    table = read(tmp_path, "a,b,c\n1,2,3\n4,5\n6,7,8,9\n10,11,12\n", CSV)
    good = [r for r in table.to_pylist() if r[RESCUED_DATA] is None]
    bad = [r for r in table.to_pylist() if r[RESCUED_DATA] is not None]
    assert good == [{"a": "1", "b": "2", "c": "3", RESCUED_DATA: None},
                    {"a": "10", "b": "11", "c": "12", RESCUED_DATA: None}]
    assert bad == [{"a": None, "b": None, "c": None, RESCUED_DATA: "4,5"},
                   {"a": None, "b": None, "c": None, RESCUED_DATA: "6,7,8,9"}]


def test_csv_crlf_and_quoted_newline(tmp_path: Path) -> None:
    table = read(tmp_path, 'a,b\r\n1,"two\nlines"\r\n3,4\r\n', CSV)
    assert table.column_names == ["a", "b", RESCUED_DATA]
    assert table.to_pylist() == [
        {"a": "1", "b": "two\nlines", RESCUED_DATA: None},
        {"a": "3", "b": "4", RESCUED_DATA: None},
    ]


def test_csv_other_delimiter(tmp_path: Path) -> None:
    table = read(tmp_path, 'id;name\n1;"a;b"\n2;x,y\n3;4;5\n', FileSource("src", "csv", delimiter=";"))
    assert table.to_pylist() == [
        {"id": "1", "name": "a;b", RESCUED_DATA: None},
        {"id": "2", "name": "x,y", RESCUED_DATA: None},
        {"id": None, "name": None, RESCUED_DATA: "3;4;5"},
    ]


def test_csv_header_only_and_empty_file(tmp_path: Path) -> None:
    header_only = read(tmp_path, "a,b\n", CSV)
    assert header_only.num_rows == 0
    assert header_only.column_names == ["a", "b", RESCUED_DATA]
    empty = read(tmp_path, "", CSV)
    assert empty.num_rows == 0
    assert empty.column_names == [RESCUED_DATA]


def test_csv_null_like_text_is_kept(tmp_path: Path) -> None:
    table = read(tmp_path, "price,note\nN/A,NA\nnull,NaN\n#N/A,x\n", CSV)
    assert table.to_pylist() == [
        {"price": "N/A", "note": "NA", RESCUED_DATA: None},
        {"price": "null", "note": "NaN", RESCUED_DATA: None},
        {"price": "#N/A", "note": "x", RESCUED_DATA: None},
    ]


def test_csv_leading_blank_line_loses_no_rows(tmp_path: Path) -> None:
    table = read(tmp_path, "\na,b\n1,2\n", CSV)
    assert table.to_pylist() == [{"a": "1", "b": "2", RESCUED_DATA: None}]


# discovery


def make_files(folder: Path, names: list[str]) -> None:
    """An empty-object JSON file at each relative name under `folder`."""
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n", encoding="utf-8")


def test_discover_sorted_with_pattern(tmp_path: Path) -> None:
    make_files(tmp_path, ["orders-0002.json", "orders-0001.json", "orders-0003.csv", "notes.txt"])
    assert [f.name for f in discover(str(tmp_path), JSONL)] == [
        "notes.txt", "orders-0001.json", "orders-0002.json", "orders-0003.csv",
    ]
    found = discover(str(tmp_path), FileSource("src", "jsonl", pattern="orders-*.json"))
    assert [f.name for f in found] == ["orders-0001.json", "orders-0002.json"]
    assert found[0].uri == f"{tmp_path}/orders-0001.json"
    assert found[0].size == 3
    assert found[0].mtime_ns == (tmp_path / "orders-0001.json").stat().st_mtime_ns


def test_discover_skips_hidden_and_underscore_files(tmp_path: Path) -> None:
    make_files(tmp_path, ["a.json", ".a.json.crc", "_SUCCESS", ".tmp/b.json", "_staging/c.json"])
    assert [f.name for f in discover(str(tmp_path), JSONL)] == ["a.json"]


def test_discover_nested_folders_give_relative_names(tmp_path: Path) -> None:
    make_files(tmp_path, ["2026/01/b.json", "2026/01/a.json", "2025/12/z.json", "top.json", "2026/x.csv"])
    found = discover(str(tmp_path), FileSource("src", "jsonl", pattern="*.json"))
    assert [f.name for f in found] == ["2025/12/z.json", "2026/01/a.json", "2026/01/b.json", "top.json"]
    assert found[1].uri == f"{tmp_path}/2026/01/a.json"
    assert read_landing_file(found[1], JSONL).num_rows == 1


def test_discover_skips_hidden_files_in_subfolders(tmp_path: Path) -> None:
    make_files(tmp_path, ["sub/a.json", "sub/.a.json", "sub/_SUCCESS", "sub/.tmp/b.json"])
    assert [f.name for f in discover(str(tmp_path), JSONL)] == ["sub/a.json"]


def test_discover_missing_folder_has_no_files(tmp_path: Path) -> None:
    assert discover(str(tmp_path / "not-there"), JSONL) == []


def test_discover_ignores_folders(tmp_path: Path) -> None:
    (tmp_path / "empty.json").mkdir()
    make_files(tmp_path, ["real.json"])
    assert [f.name for f in discover(str(tmp_path), JSONL)] == ["real.json"]


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    file = landing(tmp_path / "a.json", '{"id": 1}\n')
    assert file.fingerprint() == ["a.json", 10, file.mtime_ns, 10]
    assert file.fingerprint(end=4) == ["a.json", 10, file.mtime_ns, 4]
    [found] = discover(str(tmp_path), JSONL)
    assert found.fingerprint() == file.fingerprint()
    (tmp_path / "a.json").write_text('{"id": 12}\n', encoding="utf-8")
    os.utime(tmp_path / "a.json", ns=(file.mtime_ns + 10**9, file.mtime_ns + 10**9))
    [changed] = discover(str(tmp_path), JSONL)
    assert changed.fingerprint() == ["a.json", 11, file.mtime_ns + 10**9, 11]
    assert changed.fingerprint() != file.fingerprint()
