"""The text of the retail landing files: fixed ASCII vocabularies (so JSON needs no escaping), and the polars
expressions that render generated values as JSON and CSV text."""

from __future__ import annotations

import numpy as np
import polars as pl

FIRST_NAMES = ["Anna", "Ben", "Clara", "David", "Eva", "Felix", "Greta", "Hugo", "Ida", "Jonas", "Karin",
               "Lukas", "Mia", "Noah", "Olga", "Paul", "Rosa", "Sven", "Tara", "Umar"]
LAST_NAMES = ["Schmidt", "Martin", "Jansen", "Rossi", "Garcia", "Novak", "Berg", "Smith", "Dubois",
              "Kowalski", "Larsen", "Costa"]
DOMAINS = ["example.com", "mail.test", "post.example", "inbox.test"]
COUNTRIES = ["DE", "FR", "NL", "BE", "ES", "IT", "GB", "US", "PL", "SE"]
SEGMENTS = ["consumer", "small_business", "corporate"]
TIERS = [None, "bronze", "silver", "gold", "platinum"]
CATEGORIES = ["kitchen", "garden", "toys", "books", "electronics", "apparel", "sports", "beauty"]
NOUNS = ["Mug", "Kettle", "Pan", "Knife", "Hose", "Rake", "Planter", "Lamp", "Puzzle", "Robot", "Kite",
         "Blocks", "Novel", "Atlas", "Cookbook", "Diary", "Headphones", "Charger", "Speaker", "Mouse",
         "Jacket", "Scarf", "Sneakers", "Cap", "Ball", "Racket", "Yoga Mat", "Bottle", "Lipstick",
         "Shampoo", "Perfume", "Brush"]  # four per category, in CATEGORIES order
ADJECTIVES = ["Classic", "Compact", "Deluxe", "Eco", "Smart", "Vintage", "Urban", "Pro"]
QUERIES = ["mug", "running shoes", "garden hose", "lego", "novel", "headphones", "yoga mat", "lipstick",
           "kettle", "rain jacket"]
DEVICES = [f'{{"os":"{o}","browser":"{b}"}}' for o in ["ios", "android", "windows", "macos", "linux"]
           for b in ["safari", "chrome", "firefox", "edge"]]
PAGES = ["/", "/search", "/checkout"] + [f"/c/{category}" for category in CATEGORIES]
STATUSES = ["placed", "paid", "shipped", "delivered", "cancelled"]
EVENT_TYPES = ["page_view", "search", "add_to_cart", "checkout"]
TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def take(values: list[str | None], idx: np.ndarray) -> pl.Series:
    """Vocabulary values at the given positions."""
    return pl.Series(values, dtype=pl.String).gather(idx)


def vocab(values: list[str], column: str) -> pl.Expr:
    """Vocabulary values at the positions held in ``column``."""
    return pl.lit(pl.Series(values, dtype=pl.String)).gather(pl.col(column))


def iso(column: str) -> pl.Expr:
    """Epoch seconds as ``2026-03-04T10:15:00Z``."""
    return pl.from_epoch(pl.col(column), time_unit="s").dt.strftime(TS_FORMAT)


def money(column: str) -> pl.Expr:
    """Cents as ``12.99``."""
    cents = pl.col(column)
    return pl.concat_str([(cents // 100).cast(pl.String), pl.lit("."), (cents % 100).cast(pl.String).str.zfill(2)])


def json_text(expr: pl.Expr) -> pl.Expr:
    """JSON text of a string: quoted, or ``null``."""
    return pl.concat_str([pl.lit('"'), expr, pl.lit('"')]).fill_null(pl.lit("null"))


def json_number(expr: pl.Expr, quoted: str | None = None) -> pl.Expr:
    """JSON text of a number, as a string (``"42"``) where the flag column ``quoted`` is set; or ``null``."""
    text = expr.cast(pl.String)
    if quoted:
        text = pl.when(pl.col(quoted)).then(pl.concat_str([pl.lit('"'), text, pl.lit('"')])).otherwise(text)
    return text.fill_null(pl.lit("null"))


def json_timestamp(column: str, bad: str) -> pl.Expr:
    """JSON text of a timestamp column, ``"not-a-date"`` where the flag column ``bad`` is set."""
    return pl.when(pl.col(bad)).then(pl.lit('"not-a-date"')).otherwise(json_text(iso(column)))


def json_object(fields: dict[str, pl.Expr]) -> pl.Expr:
    """JSON object text from JSON value texts; a field whose text is null (not ``"null"``) is left out."""
    parts = [pl.concat_str([pl.lit(f'"{key}":'), value]) for key, value in fields.items()]
    return pl.concat_str([pl.lit("{"), pl.concat_str(parts, separator=",", ignore_nulls=True), pl.lit("}")])
