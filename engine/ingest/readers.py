"""Readers that turn one landing file into an Arrow table of strings, losing nothing.

Every field is kept as the text it arrived as (a nested JSON value as its JSON text, a JSON number in
canonical form; in CSV only an empty field is null), so bronze never fails on a type it did not expect.
A record that cannot be parsed keeps its raw text in `_rescued_data`.
"""

from __future__ import annotations

import csv
import io

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from engine.columns import RESCUED_DATA
from engine.errors import IngestError
from engine.ingest.sources import FileSource, LandingFile
from engine.storage import filesystem_of


def read_landing_file(file: LandingFile, source: FileSource) -> pa.Table:
    """The records of `file` as string columns plus `_rescued_data`.

    Raises:
        IngestError: the file cannot be opened or is not valid UTF-8.
    """
    if source.format == "jsonl":
        return parse_json_lines(read_text(file))
    return _parse_csv(_read_bytes(file), source.delimiter, file)


def read_text(file: LandingFile) -> str:
    """The UTF-8 text of a landing file.

    Raises:
        IngestError: the file cannot be opened or is not valid UTF-8.
    """
    raw = _read_bytes(file)
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


def _not_utf8(file: LandingFile, err: UnicodeDecodeError) -> IngestError:
    return IngestError(f"landing file `{file.uri}` is not valid UTF-8 (byte {err.start}); re-export it as UTF-8",
                       path=file.uri)


def _lines(text: str) -> pa.Array:
    """The non-blank lines of `text`, without line terminators."""
    lines = pc.list_flatten(pc.split_pattern(pa.array([text], pa.large_string()), "\n"))
    lines = pc.utf8_rtrim(lines, "\r")
    return lines.filter(pc.invert(pc.equal(pc.utf8_trim_whitespace(lines), "")))


def parse_json_lines(text: str) -> pa.Table:
    """The records of JSON-lines `text` as string columns plus `_rescued_data`."""
    lines = pa.table({"line": _lines(text).cast(pa.string())})
    with duckdb.connect() as db:
        db.register("lines", lines)
        db.execute(
            "CREATE TEMP TABLE parsed AS SELECT row_number() OVER () AS r, line, "
            "CASE WHEN json_valid(line) THEN json_type(line) END = 'OBJECT' AS ok FROM lines"
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
    it, a tie going to the type seen first. Null values and lines that are not JSON objects are not counted,
    so a field that is always null is left out.
    """
    lines = pa.table({"line": _lines(text).cast(pa.string())})
    with duckdb.connect() as db:
        db.register("lines", lines)
        return dict(db.execute(
            "WITH objects AS (SELECT * FROM (SELECT row_number() OVER () AS r, line FROM lines) "
            "WHERE CASE WHEN json_valid(line) THEN json_type(line) END = 'OBJECT'), "
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


def _parse_csv(raw: bytes, delimiter: str, file: LandingFile) -> pa.Table:
    """Parsed by Arrow straight from the file's bytes (Arrow checks that they are UTF-8); the header, the first
    non-blank line, is read with Python's csv module so that quoted names are understood the same way."""
    header = next(csv.reader(io.StringIO(_first_line(raw, file)), delimiter=delimiter), None)
    if not header:
        return pa.table({RESCUED_DATA: pa.array([], pa.string())})
    rescued: list[str] = []

    def keep_raw(row: pacsv.InvalidRow) -> str:
        rescued.append(row.text)
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(raw),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=keep_raw),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in header},
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as err:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as decoding:
            raise _not_utf8(file, decoding) from None
        raise IngestError(f"cannot parse CSV file `{file.uri}`: {err}", path=file.uri) from err
    table = table.append_column(RESCUED_DATA, pa.nulls(table.num_rows, pa.string()))
    if not rescued:
        return table
    bad = pa.table({name: pa.nulls(len(rescued), pa.string()) for name in table.column_names[:-1]}
                   | {RESCUED_DATA: pa.array(rescued, pa.string())})
    return pa.concat_tables([table, bad])


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
