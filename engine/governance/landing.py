"""A data subject's records out of landing files: the raw copies are personal data too.

Files of a source are rewritten without the records whose subject field holds the id; every other line
stays byte for byte. JSON lines are matched by DuckDB over the file's lines at once; CSV files by their
parsed rows when each record is one line. A file that cannot be matched safely raises, naming it, so the
operator erases it by hand.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from engine.errors import GovernanceError
from engine.governance.subject import SubjectId
from engine.ingest.discovery import discover
from engine.ingest.readers import read_text
from engine.ingest.sources import FileSource, LandingFile
from engine.storage import filesystem_of


@dataclass(frozen=True)
class Rewritten:
    """A landing file rewritten without a subject's records.

    Attributes:
        file: the file as it is now (new size and modification time).
        records_removed: records of the subject it held.
    """

    file: LandingFile
    records_removed: int


def erase_from_landing(folder: str, source: FileSource, column: str, subject: SubjectId) -> list[Rewritten]:
    """Rewrite the files of `source` under `folder` that hold records of `subject` in `column` (its id in any
    spelling silver parses to it: `"004"`, `" 4"`, the JSON number 4).

    Raises:
        GovernanceError: a file's records cannot be matched line by line.
    """
    rewritten = []
    for file in discover(folder, source):
        lines = read_text(file).split("\n")
        matches = _matching_lines(lines, source, column, subject, file)
        removed = int(pc.sum(matches).as_py() or 0)
        if not removed:
            continue
        kept = pa.array(lines).filter(pc.invert(matches)).to_pylist()
        _replace(file.uri, "\n".join(kept).encode())
        current = next(f for f in discover(folder, source) if f.name == file.name)
        rewritten.append(Rewritten(current, removed))
    return rewritten


def _matching_lines(lines: list[str], source: FileSource, column: str, subject: SubjectId,
                    file: LandingFile) -> pa.Array:
    """A boolean per line: true for the records of the subject."""
    if source.format == "jsonl":
        with duckdb.connect() as db:
            db.register("lines", pa.table({"line": pa.array(lines, pa.string())}))
            found = db.sql("SELECT CASE WHEN json_valid(line) THEN json_extract_string(line, ?) END AS value "
                           "FROM lines", params=[f"$.{column}"]).to_arrow_table()
        return subject.matches(found.column("value"))
    parse = pacsv.ParseOptions(delimiter=source.delimiter)
    names = pacsv.read_csv(pa.py_buffer(lines[0].encode() + b"\n"), parse_options=parse).column_names
    records = pacsv.read_csv(pa.py_buffer("\n".join(lines).encode()), parse_options=parse,
                             convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string())))
    text = pa.array(lines, pa.string())
    data_lines = pc.indices_nonzero(pc.invert(pc.equal(pc.utf8_trim_whitespace(text), ""))).slice(1)
    if column not in records.column_names or records.num_rows != len(data_lines):
        raise GovernanceError(f"landing file `{file.uri}` has no `{column}` column or records spanning lines; "
                              "remove the subject's records from it by hand", path=file.uri)
    hits = data_lines.filter(subject.matches(records.column(column)))
    return pc.is_in(pa.array(range(len(lines)), pa.uint64()), value_set=hits)


def _replace(uri: str, content: bytes) -> None:
    """Write `content` to a temporary file beside `uri`, then move it over `uri`."""
    filesystem, path = filesystem_of(uri)
    temporary = f"{path.rsplit('/', 1)[0]}/.{uuid.uuid4().hex}.erase.tmp"
    with filesystem.open_output_stream(temporary) as stream:
        stream.write(content)
    filesystem.move(temporary, path)
