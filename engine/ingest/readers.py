"""Readers that turn one landing file into an Arrow table of strings, losing nothing.

Every field is kept as the text it arrived as (a nested JSON value as its JSON text, a JSON number in
canonical form; in CSV only an empty field is null), so bronze never fails on a type it did not expect.
A record that cannot be parsed keeps its raw text in `_rescued_data`. The columns of a CSV file whose types
the source declares are parsed by Arrow's CSV reader straight into those types when every value parses; a
file with a value that does not is read as strings, which `engine.ingest.typed` then types value by value.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Mapping

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from engine.columns import INGESTION_COLUMNS, RESCUED_DATA
from engine.errors import IngestError, UnreadableFileError
from engine.ingest.sources import FileSource, LandingFile
from engine.storage import filesystem_of


def read_landing_file(file: LandingFile, source: FileSource) -> pa.Table:
    """The records of `file` (from `file.start` on) as string columns plus `_rescued_data`.

    Raises:
        IngestError: the file cannot be opened or parsed.
        UnreadableFileError: the file is not valid UTF-8 or its CSV header is unusable.
    """
    raw, _ = landing_bytes(file, source)
    return read_records(raw, file, source)[0]


def landing_bytes(file: LandingFile, source: FileSource) -> tuple[bytes, int]:
    """The bytes of `file` still to ingest, exactly as stored, and the offset they end at.

    They start at `file.start` and end at `file.size`, or, for an `append-only` source, after the last line
    break (a last line without one may still be being written).

    Raises:
        IngestError: the file cannot be read.
    """
    raw = _read_range(file, file.start, file.size)
    if source.growth == "append-only":
        raw = raw[:raw.rfind(b"\n") + 1]
    return raw, file.start + len(raw)


def read_records(raw: bytes, file: LandingFile, source: FileSource) -> tuple[pa.Table, dict[str, str]]:
    """The records of `raw`, the bytes `landing_bytes` gave for `file`, as string columns plus
    `_rescued_data`, and the JSON value type of each field (`json_field_types`; none for CSV).

    A leading byte-order mark is not part of the first field; the tail of a grown CSV file is read under the
    file's header line.

    Raises:
        IngestError: the bytes cannot be parsed as the source's format.
        UnreadableFileError: the bytes are not valid UTF-8 or their CSV header is unusable.
    """
    if file.start == 0:
        raw = raw.removeprefix(codecs.BOM_UTF8)
    if source.format == "jsonl":
        text = decode(raw, file)
        return parse_json_lines(text), json_field_types(text)
    if file.start and raw:
        raw = _header_line(file) + raw
    return _parse_csv(raw, source.delimiter, file, source.column_types), {}


def read_text(file: LandingFile) -> str:
    """The UTF-8 text of a whole landing file, without a leading byte-order mark.

    Raises:
        IngestError: the file cannot be opened.
        UnreadableFileError: the file is not valid UTF-8.
    """
    return decode(_read_bytes(file).removeprefix(codecs.BOM_UTF8), file)


def decode(raw: bytes, file: LandingFile) -> str:
    """`raw`, bytes of `file`, as text.

    Raises:
        UnreadableFileError: `raw` is not valid UTF-8.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(file, err) from None


def _read_bytes(file: LandingFile) -> bytes:
    filesystem, path = filesystem_of(file.uri)
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except OSError as err:
        raise IngestError(f"cannot read landing file `{file.uri}`: {err}", path=file.uri) from err


def _read_range(file: LandingFile, start: int, end: int) -> bytes:
    """Bytes `start` to `end` of `file` (fewer when it is shorter now)."""
    filesystem, path = filesystem_of(file.uri)
    try:
        with filesystem.open_input_file(path) as stream:
            return stream.read_at(max(end - start, 0), start) if end > start else b""
    except OSError as err:
        raise IngestError(f"cannot read landing file `{file.uri}`: {err}", path=file.uri) from err


def _header_line(file: LandingFile) -> bytes:
    """The first non-blank line before `file.start`, with its line break, without a byte-order mark."""
    size = 1 << 16
    while True:
        head = _read_range(file, 0, min(size, file.start)).removeprefix(codecs.BOM_UTF8)
        for line in head.split(b"\n")[:-1]:
            if line.strip():
                return line + b"\n"
        if size >= file.start:
            return b""
        size *= 4


def _not_utf8(file: LandingFile, err: UnicodeDecodeError) -> UnreadableFileError:
    return UnreadableFileError(
        f"landing file `{file.uri}` is not valid UTF-8 (byte {file.start + err.start}): {err.reason}; "
        "re-export it as UTF-8", path=file.uri)


def _lines(text: str) -> pa.Array:
    """The non-blank lines of `text`, without line terminators."""
    lines = pc.list_flatten(pc.split_pattern(pa.array([text], pa.large_string()), "\n"))
    lines = pc.utf8_rtrim(lines, "\r")
    return lines.filter(pc.invert(pc.equal(pc.utf8_trim_whitespace(lines), "")))


_IS_RECORD = (
    "coalesce(CASE WHEN json_valid(line) AND json_type(line) = 'OBJECT' "
    "THEN len(json_keys(line)) = len(list_distinct(json_keys(line))) "
    f"AND NOT list_has_any(json_keys(line), {['', *INGESTION_COLUMNS]!r}) END, false)"
)
"""SQL: whether a line is a JSON object whose keys are distinct, not empty and not an ingestion column's name.
Another object's line is rescued whole like a malformed one: a repeated key has two values for one field
(readers disagree on which one counts), and an empty key or an ingestion column's name cannot be a column."""


def parse_json_lines(text: str) -> pa.Table:
    """The records of JSON-lines `text` as string columns plus `_rescued_data` (lines that are not JSON
    objects with distinct keys, kept whole)."""
    lines = pa.table({"line": _lines(text).cast(pa.string())})
    with duckdb.connect() as db:
        db.register("lines", lines)
        db.execute(
            f"CREATE TEMP TABLE parsed AS SELECT row_number() OVER () AS r, line, {_IS_RECORD} AS ok FROM lines"
        )
        keys = [row[0] for row in db.execute(
            "SELECT k FROM (SELECT r, unnest(json_keys(line)) AS k, "
            "generate_subscripts(json_keys(line), 1) AS i FROM parsed WHERE ok) "
            "QUALIFY row_number() OVER (PARTITION BY k ORDER BY r, i) = 1 ORDER BY r, i"
        ).fetchall()]
        fields = ", ".join(
            f"CASE WHEN ok THEN json_extract_string(line, {_json_path(k)}) END AS {_quote(k)}" for k in keys
        )
        select = f"SELECT {fields + ', ' if fields else ''}CASE WHEN ok THEN NULL ELSE line END AS {RESCUED_DATA} "
        table = db.sql(select + "FROM parsed ORDER BY r").to_arrow_table()
    return table.cast(pa.schema([pa.field(name, pa.string()) for name in table.column_names]))


def json_field_types(text: str) -> dict[str, str]:
    """The dominant JSON value type of each field of the JSON-lines `text`, by field name.

    A type is `string`, `number`, `boolean`, `object` or `array`; a field's is the one most object lines give
    it, a tie going to the type seen first. Null values and lines that `parse_json_lines` rescues are not counted,
    so a field that is always null is left out.
    """
    lines = pa.table({"line": _lines(text).cast(pa.string())})
    with duckdb.connect() as db:
        db.register("lines", lines)
        return dict(db.execute(
            "WITH objects AS (SELECT * FROM (SELECT row_number() OVER () AS r, line FROM lines) "
            f"WHERE {_IS_RECORD}), "
            "typed AS (SELECT r, e.key AS k, CASE e.type WHEN 'NULL' THEN NULL WHEN 'VARCHAR' THEN 'string' "
            "WHEN 'BOOLEAN' THEN 'boolean' WHEN 'OBJECT' THEN 'object' WHEN 'ARRAY' THEN 'array' "
            "ELSE 'number' END AS t FROM objects, json_each(objects.line) AS e) "
            "SELECT k, t FROM (SELECT k, t, count(*) AS n, min(r) AS first FROM typed WHERE t IS NOT NULL "
            "GROUP BY k, t QUALIFY row_number() OVER (PARTITION BY k ORDER BY n DESC, first) = 1) ORDER BY k"
        ).fetchall())


def _json_path(key: str) -> str:
    return "'$.\"" + key.replace("'", "''").replace('"', '\\"') + "\"'"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _parse_csv(raw: bytes, delimiter: str, file: LandingFile, types: Mapping[str, pa.DataType]) -> pa.Table:
    """Parsed by Arrow straight from the file's bytes (Arrow checks that they are UTF-8), the declared `types`
    when every value of theirs parses, else every column as strings; the header, the first non-blank line, is
    read with Python's csv module so that quoted names are understood the same way."""
    header = next(csv.reader(io.StringIO(_first_line(raw, file)), delimiter=delimiter), None)
    if not header:
        return pa.table({RESCUED_DATA: pa.array([], pa.string())})
    _check_header(header, file)
    declared = {name: types[name] for name in header if name in types}
    if declared:
        try:
            return _read_csv(raw, delimiter, file, {name: declared.get(name, pa.string()) for name in header})
        except _ConversionError:
            pass
    return _read_csv(raw, delimiter, file, {name: pa.string() for name in header})


class _ConversionError(Exception):
    """A value of a typed column did not parse as its type."""


def _read_csv(raw: bytes, delimiter: str, file: LandingFile, column_types: dict[str, pa.DataType]) -> pa.Table:
    """The records of CSV `raw` with `column_types`, plus `_rescued_data` (the raw text of rows with another
    number of fields than the header, every other column null).

    Raises:
        _ConversionError: a value of a typed column does not parse as its type.
        IngestError: the bytes cannot be parsed as CSV.
        UnreadableFileError: the bytes are not valid UTF-8.
    """
    rescued: list[str] = []

    def keep_raw(row: pacsv.InvalidRow) -> str:
        rescued.append(row.text)
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(raw),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=keep_raw),
            convert_options=pacsv.ConvertOptions(
                column_types=column_types,
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as err:
        if "conversion error" in str(err) and any(kind != pa.string() for kind in column_types.values()):
            raise _ConversionError(str(err)) from None
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as decoding:
            raise _not_utf8(file, decoding) from None
        raise IngestError(f"cannot parse CSV file `{file.uri}`: {err}", path=file.uri) from err
    table = table.append_column(RESCUED_DATA, pa.nulls(table.num_rows, pa.string()))
    if not rescued:
        return table
    bad = pa.table({field.name: pa.nulls(len(rescued), field.type) for field in list(table.schema)[:-1]}
                   | {RESCUED_DATA: pa.array(rescued, pa.string())})
    return pa.concat_tables([table, bad])


def _check_header(header: list[str], file: LandingFile) -> None:
    """Raise when a CSV header's names cannot all be columns of their own.

    Raises:
        UnreadableFileError: a name is empty, repeated, or an ingestion column's name.
    """
    repeated = sorted({name for name in header if header.count(name) > 1})
    reserved = [name for name in header if name in INGESTION_COLUMNS]
    problems = ([f"column {header.index('') + 1} has no name"] if "" in header else []) + [
        f"`{name}` names several columns" for name in repeated] + [
        f"`{name}` is the name of a column ingestion adds" for name in reserved]
    if problems:
        raise UnreadableFileError(f"landing file `{file.uri}` has an unusable CSV header: {'; '.join(problems)}; "
                                  "give every column a name of its own", path=file.uri)


def _first_line(raw: bytes, file: LandingFile) -> str:
    """The first line of `raw` that is not blank, decoded, or "" when there is none."""
    start = 0
    while start < len(raw):
        end = raw.find(b"\n", start)
        end = len(raw) if end < 0 else end
        line = raw[start:end]
        if line.strip():
            try:
                return line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(file, err) from None
        start = end + 1
    return ""
