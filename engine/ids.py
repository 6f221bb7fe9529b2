"""Ids written as text, read as the silver cleaners type them: the one parser behind silver keys and erasure
matching, so the two cannot disagree about which records are whose."""

from __future__ import annotations

import polars as pl


def tidy_text(text: pl.Expr) -> pl.Expr:
    """`text` as a trimmed string (Unicode whitespace), null when blank."""
    trimmed = text.cast(pl.String).str.strip_chars()
    return pl.when(trimmed != "").then(trimmed)


def parse_integer(text: pl.Expr) -> pl.Expr:
    """The base-10 integer `text` spells (optional sign, leading zeros, surrounding whitespace), null when it
    spells none (`4.0`, `0x4`, `4_0`, blank)."""
    return tidy_text(text).str.to_integer(strict=False)
