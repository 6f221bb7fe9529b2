"""Schema drift of a landing file against its source's expected columns, and the policies that handle it.

Columns whose name starts with `_` (the engine's `_rescued_data`, `_source_file`, ...) are never drift.

A missing and an added column are reported as one rename, and not as missing and added, when:

1. their names are equal after dropping `_`, `-` and whitespace and ignoring case (`customer_id` ->
   `CustomerId`), and no other missing or added column normalises to the same name; or
2. after rule 1, exactly one missing and exactly one added column remain and their JSON value types agree
   (or either type is unknown, as in CSV files).

Type changes are reported for columns present under their expected name or renamed, when both the expected
and the found JSON type are known.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import get_args

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from engine.columns import RESCUED_DATA
from engine.errors import SchemaDriftError
from engine.ingest.readers import json_field_types, read_text
from engine.ingest.sources import DriftPolicy, FileSource, LandingFile

"""`evolve` keeps the file's columns, `rescue` moves unexpected ones into `_rescued_data`, `fail` raises."""

RESCUED_LINE = "_line"
"""Key under which `rescue` keeps a row's earlier `_rescued_data` text inside the new JSON object."""


@dataclass(frozen=True)
class SchemaDrift:
    """How one landing file's columns differ from the expected ones.

    Attributes:
        file: name of the landing file.
        added: columns of the file that are not expected, in file order.
        missing: expected columns absent from the file, in expected order.
        renamed: likely renames as (expected name, name in the file), in expected order.
        type_changes: (column in the file, expected JSON type, found JSON type), in expected order.
    """

    file: str
    added: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    renamed: tuple[tuple[str, str], ...] = ()
    type_changes: tuple[tuple[str, str, str], ...] = ()

    @property
    def is_empty(self) -> bool:
        """Whether the file matches the expected columns and types."""
        return not (self.added or self.missing or self.renamed or self.type_changes)

    def describe(self) -> str:
        """One sentence naming the file and each change."""
        changes = [f"new column `{name}`" for name in self.added]
        changes += [f"missing column `{name}`" for name in self.missing]
        changes += [f"`{old}` renamed to `{new}`?" for old, new in self.renamed]
        changes += [f"`{name}` changed from {old} to {new}" for name, old, new in self.type_changes]
        return f"{self.file}: {'; '.join(changes) or 'no schema drift'}"


def json_value_types(file: LandingFile, source: FileSource) -> dict[str, str]:
    """The dominant JSON value type of each field of `file`; empty for a CSV source.

    Raises:
        IngestError: the file cannot be opened or is not valid UTF-8.
    """
    if source.format != "jsonl":
        return {}
    return json_field_types(read_text(file))


def detect_drift(
    file: str,
    table: pa.Table,
    expected: Sequence[str],
    expected_types: Mapping[str, str] | None = None,
    found_types: Mapping[str, str] | None = None,
) -> SchemaDrift:
    """The drift of `table`, read from landing file `file`, against the `expected` columns.

    Args:
        file: name of the landing file.
        table: what `read_landing_file` returned for it.
        expected: the columns the source declares.
        expected_types: declared JSON type per column, when known.
        found_types: JSON type per field found in the file (`json_value_types`), when known.
    """
    expected_types = expected_types or {}
    found_types = found_types or {}
    found = [name for name in table.column_names if not name.startswith("_")]
    wanted = [name for name in expected if not name.startswith("_")]
    found_set, wanted_set = set(found), set(wanted)
    added = [name for name in found if name not in wanted_set]
    missing = [name for name in wanted if name not in found_set]
    renamed = _renames(missing, added, expected_types, found_types)
    in_file = {name: name for name in found if name in wanted_set} | dict(renamed)
    type_changes = tuple(
        (in_file[name], expected_types[name], found_types[in_file[name]])
        for name in wanted
        if name in in_file and _known_and_different(expected_types.get(name), found_types.get(in_file[name]))
    )
    renamed_old, renamed_new = {old for old, _ in renamed}, {new for _, new in renamed}
    return SchemaDrift(
        file,
        added=tuple(name for name in added if name not in renamed_new),
        missing=tuple(name for name in missing if name not in renamed_old),
        renamed=tuple(renamed),
        type_changes=type_changes,
    )


def _renames(
    missing: list[str], added: list[str], expected_types: Mapping[str, str], found_types: Mapping[str, str]
) -> list[tuple[str, str]]:
    """The likely renames (missing, added) by the two rules of the module docstring, in `missing` order."""
    old, new = _by_unique_normalised_name(missing), _by_unique_normalised_name(added)
    pairs = [(old[key], new[key]) for key in old if key in new]
    paired_old, paired_new = {o for o, _ in pairs}, {n for _, n in pairs}
    left_old = [name for name in missing if name not in paired_old]
    left_new = [name for name in added if name not in paired_new]
    if len(left_old) == 1 and len(left_new) == 1 and not _known_and_different(
        expected_types.get(left_old[0]), found_types.get(left_new[0])
    ):
        pairs.append((left_old[0], left_new[0]))
    return sorted(pairs, key=lambda pair: missing.index(pair[0]))


def _by_unique_normalised_name(names: list[str]) -> dict[str, str]:
    """Each name by its normalised form, leaving out forms that several names share."""
    counts = Counter(_normalised(name) for name in names)
    return {_normalised(name): name for name in names if counts[_normalised(name)] == 1}


def _normalised(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).casefold()


def _known_and_different(expected: str | None, found: str | None) -> bool:
    return expected is not None and found is not None and expected != found


def apply_policy(table: pa.Table, drift: SchemaDrift, policy: DriftPolicy, *, source: str) -> pa.Table:
    """`table` handled by `policy` given its `drift`.

    `evolve` returns the table unchanged (new columns widen the bronze schema; missing ones stay absent).
    `rescue` drops the added and renamed-to columns and moves their values into `_rescued_data`: a row
    with any non-null such value gets the JSON object text `{"<column>": "<value or null>", ...}` (table
    column order), holding the row's earlier `_rescued_data` text, if any, under the `_line` key; other
    rows keep theirs. Type changes keep their string values. `fail` raises when there is any drift, else
    returns the table.

    Raises:
        SchemaDriftError: `policy` is `fail` and `drift` is not empty.
        ValueError: `policy` is not a drift policy.
    """
    if policy not in get_args(DriftPolicy):
        raise ValueError(f"unknown drift policy `{policy}`; choose one of {', '.join(get_args(DriftPolicy))}")
    if policy == "fail" and not drift.is_empty:
        raise SchemaDriftError(_failure_message(drift, source), path=drift.file)
    if policy == "rescue":
        return _rescue(table, {*drift.added, *(new for _, new in drift.renamed)})
    return table


def _failure_message(drift: SchemaDrift, source: str) -> str:
    return (
        f"source `{source}`: schema drift in landing file {drift.describe()}. To fix it, declare the file's "
        "columns in the source (add the new and renamed ones, remove the missing ones, update the types), "
        "or choose the drift policy `evolve` (keep the file's columns) or `rescue` (move unexpected columns "
        f"into `{RESCUED_DATA}`)."
    )


def _rescue(table: pa.Table, columns: set[str]) -> pa.Table:
    """`table` without `columns`, their values moved into `_rescued_data` (appended if `table` has none)."""
    moved = [name for name in table.column_names if name in columns]
    if not moved:
        return table
    return with_rescued(table.drop_columns(moved), moved, [table.column(name).combine_chunks() for name in moved])


def with_rescued(table: pa.Table, names: list[str], values: list[pa.Array]) -> pa.Table:
    """`table` whose rows with a non-null value in `values` (one string array per name of `names`) get the JSON
    object text `{"<name>": "<value or null>", ...}` in `_rescued_data`, holding the row's earlier
    `_rescued_data` text, if any, under the `_line` key; other rows keep theirs. The column is appended if
    `table` has none."""
    previous = (
        table.column(RESCUED_DATA).combine_chunks().cast(pa.string()) if RESCUED_DATA in table.column_names
        else pa.nulls(table.num_rows, pa.string())
    )
    objects = pc.if_else(
        pc.is_valid(previous),
        _json_objects([*names, RESCUED_LINE], [*values, previous]),
        _json_objects(names, values),
    )
    has_value = functools.reduce(pc.or_, [pc.is_valid(value) for value in values])
    rescued = pc.if_else(has_value, objects, previous)
    field = pa.field(RESCUED_DATA, pa.string())
    if RESCUED_DATA in table.column_names:
        return table.set_column(table.column_names.index(RESCUED_DATA), field, rescued)
    return table.append_column(field, rescued)


def _json_objects(names: list[str], values: list[pa.Array]) -> pa.Array:
    """One JSON object text per row, with a key per name (null values as `null`)."""
    struct = pa.StructArray.from_arrays(values, names=names)
    return pl.Series(struct).struct.json_encode().to_arrow().cast(pa.string())
