"""A data subject's id as the silver layer keys it, and which stored values are that id.

Bronze and landing keep an id as it arrived (`"004"`, `" 4"`, `+4`, the JSON number 4); silver parses it with
`engine.ids.parse_integer`. Erasure matches every value through the same parser, so a record silver would
merge into the subject is erased wherever it lies.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from engine.errors import GovernanceError
from engine.ids import parse_integer, tidy_text


@dataclass(frozen=True)
class SubjectId:
    """The id of a data subject.

    Attributes:
        value: the integer the id spells when the subject column is typed as an integer, else its tidied text.
    """

    value: int | str

    @classmethod
    def parse(cls, text: str, integer: bool) -> SubjectId:
        """The subject `text` names; `integer` when the tables declaring the subject type its column as an
        integer.

        Raises:
            GovernanceError: the id is blank, or no integer where the column holds integers.
        """
        parsed = pl.select(parse_integer(pl.lit(text)) if integer else tidy_text(pl.lit(text))).item()
        if parsed is None:
            kind = "an integer id (the subject column holds integers)" if integer else "an id"
            raise GovernanceError(f"`{text}` is not {kind}; pass the subject's id as silver keys it, e.g. 42")
        return cls(parsed)

    @property
    def text(self) -> str:
        """The id as canonical text (`4` for `"004"`)."""
        return str(self.value)

    def matches(self, values: pa.Array | pa.ChunkedArray) -> pa.BooleanArray:
        """True where a value is this id once parsed as silver parses it; nulls and other values are false."""
        parse = parse_integer if isinstance(self.value, int) else tidy_text
        column = pl.Series("value", values)
        found = pl.select((parse(pl.lit(column)) == self.value).fill_null(False)).to_series()
        return found.to_arrow().cast(pa.bool_())
