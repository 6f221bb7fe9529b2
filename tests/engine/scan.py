"""Searching every file under a storage root for values: Parquet files by their decoded values (pyarrow),
every other file (Delta log JSON, SQLite, MLflow, landing text) by its raw bytes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def _texts(column: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """A column as text: strings as they are, numbers and dates formatted, nested values as JSON."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        return _texts(pc.cast(column, kind.value_type))
    if pa.types.is_nested(kind):
        return pa.chunked_array([pa.array([json.dumps(v, default=str) for v in column.to_pylist()], pa.string())])
    try:
        return pc.cast(column, pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


DATA_FILE_NAME = re.compile(rb"[a-z0-9_.-]+\.parquet")
"""The name of a data file, which the engine makes with random hex digits: a needle of digits may occur in it by
chance, and a file name holds no stored value."""


def decoded_text(path: Path) -> Iterator[tuple[str, pa.ChunkedArray]]:
    """Every column of a Parquet file, by name, as text."""
    table = pq.read_table(path)
    for name, column in zip(table.column_names, table.columns):
        texts = _texts(column)
        if texts is not None:
            yield name, texts


def id_pattern(column: str, value: str) -> re.Pattern[bytes]:
    """`"column": value` in JSON text, the value quoted or not (file statistics, records, landing lines)."""
    return re.compile(rb'"' + re.escape(column.encode()) + rb'"\s*:\s*"?\s*' + re.escape(value.encode())
                      + rb'\s*"?\s*[,}]')


def _named_rows(path: Path, person: tuple[str, str]) -> int:
    """Rows of a Parquet file whose `first_name` and `last_name` are the person's."""
    names = pq.read_schema(path).names
    if "first_name" not in names or "last_name" not in names:
        return 0
    table = pq.read_table(path, columns=["first_name", "last_name"])
    same = [pc.equal(pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(table.column(c), pa.string()))), v.lower())
            for c, v in zip(("first_name", "last_name"), person)]
    return int(pc.sum(pc.fill_null(pc.and_(*same), False)).as_py() or 0)


def findings(root: Path, needles: Iterable[str], subject: tuple[str, str] | None = None,
             person: tuple[str, str] | None = None) -> list[str]:
    """Where under `root` any of `needles` (case-insensitive substrings) occurs, where the subject
    (`(column, value)`) occurs as a value of that column or in JSON text, and where a row or JSON line names
    `person` (first and last name): one line per hit."""
    lowered = [n.lower() for n in needles]
    raw_needles = [n.encode() for n in lowered]
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            if person and _named_rows(path, person):
                hits.append(f"{path}: a row names the person")
            for name, texts in decoded_text(path):
                lowered_texts = pc.replace_substring_regex(pc.utf8_lower(texts), DATA_FILE_NAME.pattern.decode(),
                                                           "<data file>")
                for needle in lowered:
                    if pc.any(pc.match_substring(lowered_texts, needle)).as_py():
                        hits.append(f"{path}: column `{name}` holds `{needle}`")
                if subject and name == subject[0]:
                    if pc.any(pc.equal(pc.utf8_trim_whitespace(texts), subject[1])).as_py():
                        hits.append(f"{path}: column `{name}` holds the subject")
                elif subject and pc.any(pc.match_substring_regex(
                        texts, id_pattern(*subject).pattern.decode())).as_py():
                    hits.append(f"{path}: column `{name}` embeds the subject in JSON")
            continue
        content = DATA_FILE_NAME.sub(b"<data file>", path.read_bytes().lower())
        if person and any(all(re.search(rb'"' + k + rb'"\s*:\s*"\s*' + re.escape(v.lower().encode()) + rb'\s*"', line)
                                  for k, v in zip((b"first_name", b"last_name"), person))
                              for line in content.splitlines()):
            hits.append(f"{path}: a line names the person")
        hits += [f"{path}: holds `{n.decode()}`" for n in raw_needles if n in content]
        if subject and id_pattern(*subject).search(content):
            hits.append(f"{path}: embeds the subject in JSON")
    return hits
