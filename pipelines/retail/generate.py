"""Seeded generator of messy landing data for the retail reference pipeline.

:func:`generate` writes the five landing sources of ``docs/retail.md`` ("Landing data") to
``<landing_root>/<source>/<source>-NNNN.<ext>``. Every draw comes from ``numpy.random.default_rng`` seeded
with ``(seed, stream)`` and every step is a numpy or polars column operation (no loop over rows), so the
same scale, seed and as-of date give byte-identical files and scale 10 takes a few seconds. The data covers
the ``DAYS`` days through the as-of date (today, UTC, by default), so a fresh generation is fresh data.

Each record has an arrival time: its change time plus a short lag, or days more for late and out-of-order
records. A source is split into up to ``N_FILES`` files at quantiles of the on-time arrivals, and each
file lists its records in arrival order. Defects are injected at the fixed rates of
:data:`pipelines.retail.draws.RATES`, at least once per source even at tiny scales. All defects are value-level: every JSON line parses and every
CSV row has all its fields. Text values come from fixed ASCII vocabularies, so JSON needs no escaping.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path

import numpy as np
import polars as pl

from engine.errors import LandingFileExists
from pipelines.retail.draws import RATES, all_rows, between, pick, picks
from pipelines.retail.landing_text import (
    ADJECTIVES,
    CATEGORIES,
    COUNTRIES,
    DEVICES,
    DOMAINS,
    EVENT_TYPES,
    FIRST_NAMES,
    LAST_NAMES,
    NOUNS,
    PAGES,
    QUERIES,
    SEGMENTS,
    STATUSES,
    TIERS,
    iso,
    json_number,
    json_object,
    json_text,
    json_timestamp,
    money,
    take,
    vocab,
)

HOUR, DAY, DAYS = 3_600, 86_400, 150
"""The generated period is the ``DAYS`` days up to and including the as-of date (UTC)."""
SIGNUP_DAYS = 1_096
"""Customers existing at the start of the period signed up in the ``SIGNUP_DAYS`` days before it."""
N_FILES = 6
"""Files per source, except products (one per snapshot, two)."""

SOURCES = {"customers": "jsonl", "products": "csv", "orders": "jsonl", "order_items": "csv", "events": "jsonl"}
BASE_COUNTS = {"customers": 1_000, "products": 200, "orders": 12_000, "browse_sessions": 5_000}
"""Counts at scale 1; each becomes ``max(1, round(count * scale))``."""



@dataclass(frozen=True)
class Period:
    """The generated period, in epoch seconds: no change happens before ``start`` nor at or after ``end``."""

    start: int
    end: int

    @classmethod
    def through(cls, as_of: date) -> Period:
        """The ``DAYS`` days ending with ``as_of`` (its end is midnight UTC after it)."""
        end = int(datetime.combine(as_of, time(), UTC).timestamp()) + DAY
        return cls(end - DAYS * DAY, end)


@dataclass(frozen=True)
class GeneratedSource:
    """What :func:`generate` wrote for one source.

    Attributes:
        files: File names (no directory), in arrival order.
        records: Records over all files (lines; CSV headers not counted).
        bytes: Total size of the files.
    """

    files: list[str]
    records: int
    bytes: int


def generate(
    landing_root: str | os.PathLike, *, scale: float = 1.0, seed: int = 42, batch: int | None = None,
    as_of: date | None = None,
) -> dict[str, GeneratedSource]:
    """Writes the retail landing files for a scale, seed and as-of date.

    Never replaces a landing file: a delivery, once landed, is what the pipeline ingested. Files of other
    names are left alone. Nothing is written if the arguments are invalid or a file to write exists.

    Args:
        landing_root: Folder that receives one sub-folder per source.
        scale: Size factor; scale 1 is 1,000 customers, 200 products and about 12,000 orders.
        seed: Seed of all random draws.
        batch: Write only the ``batch``-th file (1-based) of each source, as the ``batch``-th delivery
            of a stream, keeping the files already there; sources with fewer files write nothing.
            Batches in order amount to the whole generation.
        as_of: Last day of the data (UTC); today by default. The same scale, seed and as-of date give the
            same bytes.

    Returns:
        Per source, in the order of ``SOURCES``: the files, record count and bytes written.

    Raises:
        ValueError: If ``scale`` is not a finite number greater than 0, or ``batch`` is not one of the
            feed's batches.
        LandingFileExists: If a file to write is already there.
    """
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number greater than 0, got {scale!r}")
    count = {what: max(1, round(base * scale)) for what, base in BASE_COUNTS.items()}
    period = Period.through(as_of or datetime.now(UTC).date())
    rng = [np.random.default_rng([seed, stream]) for stream in range(7)]  # independent streams
    customers = _customer_base(rng[0], period, count["customers"])
    products = _product_base(rng[0], period, count["products"])
    orders = _order_base(rng[1], period, customers, count["orders"])
    frames = {
        "customers": _customer_feed(rng[2], period, customers),
        "products": _product_snapshots(rng[3], products),
        "orders": _order_feed(rng[4], period, orders),
        "order_items": _order_items(rng[5], period, orders, products),
        "events": _events(rng[6], period, customers, orders, products, count["browse_sessions"]),
    }
    batches = max(frame["_file"].n_unique() for frame in frames.values())
    if batch is not None and not 1 <= batch <= batches:
        raise ValueError(f"batch must be between 1 and {batches} at scale {scale}, got {batch}")
    root = Path(landing_root)
    parts = {source: _parts(source, frame, batch) for source, frame in frames.items()}
    for source, named in parts.items():
        for name in named:
            if (root / source / name).exists():
                raise LandingFileExists(
                    f"landing file {root / source / name} already exists and is never replaced; generate "
                    "under a new root, or the next delivery with another batch", path=str(root / source / name))
    return {source: _write(root / source, source, named) for source, named in parts.items()}


def _bounds(arrival: np.ndarray) -> np.ndarray:
    """File boundaries: quantiles of the on-time arrivals (``N_FILES`` files, fewer if tiny)."""
    ordered = np.sort(arrival)
    k = min(N_FILES, len(ordered))
    return ordered[np.arange(1, k) * len(ordered) // k]


def _late(rng: np.random.Generator, arrival: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Delays some eligible rows by 1-7 days."""
    return arrival + np.where(pick(rng, eligible, RATES["late"]), rng.integers(DAY, 7 * DAY, len(arrival)), 0)


def _out_of_order(
    rng: np.random.Generator, key: np.ndarray, arrival: np.ndarray, eligible: np.ndarray, bounds: np.ndarray
) -> np.ndarray:
    """Makes some eligible rows arrive after the next change of their key, in a later file if there is one.

    Rows must be sorted by key, then change time.
    """
    has_next = np.append(key[1:] == key[:-1], False)
    rows = np.flatnonzero(pick(rng, eligible & has_next, RATES["out_of_order"]))
    after = arrival[rows + 1]
    later = after + rng.integers(HOUR, 2 * DAY, len(rows))
    file = np.searchsorted(bounds, after, side="right")
    next_file = np.maximum(later, bounds[np.minimum(file, len(bounds) - 1)]) if len(bounds) else later
    out = arrival.copy()
    out[rows] = np.where(file < len(bounds), next_file, later)
    return out


def _arrange(rng: np.random.Generator | None, frame: pl.DataFrame, bounds: np.ndarray) -> pl.DataFrame:
    """Adds exact copies of some rows (if ``rng``), arriving up to a day later; then ``_file`` (0-based, no
    empty file) and sorts by file, then arrival."""
    if rng is not None:
        copies = frame.filter(pl.Series(pick(rng, all_rows(frame.height), RATES["duplicate"])))
        delay = pl.Series(rng.integers(0, DAY, copies.height))
        frame = pl.concat([frame, copies.with_columns(pl.col("_arrival") + delay)])
    file = np.unique(np.searchsorted(bounds, frame["_arrival"].to_numpy(), side="right"), return_inverse=True)[1]
    return frame.with_columns(_file=file, _seq=pl.int_range(pl.len())).sort("_file", "_arrival", "_seq")


def _parts(source: str, frame: pl.DataFrame, batch: int | None) -> dict[str, pl.DataFrame]:
    """The source's files by name (all of them, or only the ``batch``-th): JSON lines from ``json_object``, or CSV
    of the plain columns."""
    ext = SOURCES[source]
    columns = [column for column in frame.columns if not column.startswith("_")] if ext == "csv" else ["_line"]
    return {f"{source}-{number:04d}.{ext}": part.select(columns)
            for number, part in enumerate(frame.partition_by("_file", maintain_order=True), start=1)
            if batch is None or number == batch}


def _write(folder: Path, source: str, parts: dict[str, pl.DataFrame]) -> GeneratedSource:
    """Writes the source's files in ``folder``."""
    csv = SOURCES[source] == "csv"
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        part.write_csv(folder / name, include_header=csv, quote_style="necessary" if csv else "never")
    size = sum((folder / name).stat().st_size for name in parts)
    return GeneratedSource(files=list(parts), records=sum(part.height for part in parts.values()), bytes=size)


def _customer_base(rng: np.random.Generator, period: Period, n: int) -> pl.DataFrame:
    """Customers as first created: 60% before the period (initial load), the rest sign up during it."""
    start = period.start
    existing = rng.random(n) < 0.6
    created = np.where(existing, start + rng.integers(0, HOUR, n), start + rng.integers(HOUR, 135 * DAY, n))
    frame = pl.DataFrame({
        "customer_id": np.arange(1, n + 1),
        "created": created,
        "signup_day": np.where(existing, rng.integers(start // DAY - SIGNUP_DAYS, start // DAY, n), created // DAY),
        "first_name": take(FIRST_NAMES, rng.integers(0, len(FIRST_NAMES), n)),
        "last_name": take(LAST_NAMES, rng.integers(0, len(LAST_NAMES), n)),
        "domain": take(DOMAINS, rng.integers(0, len(DOMAINS), n)),
        "country": take(COUNTRIES, rng.integers(0, len(COUNTRIES), n)),
        "segment": take(SEGMENTS, rng.choice(len(SEGMENTS), n, p=[0.7, 0.2, 0.1])),
        "loyalty_tier": take(TIERS, rng.choice(len(TIERS), n, p=[0.3, 0.3, 0.2, 0.15, 0.05])),
        "weight": rng.gamma(1.5, 1.0, n),  # activity: orders and sessions are drawn in proportion
    })
    parts = ["first_name", pl.lit("."), "last_name", "customer_id", pl.lit("@"), "domain"]
    return frame.with_columns(email=pl.concat_str(parts).str.to_lowercase())


def _product_base(rng: np.random.Generator, period: Period, n: int) -> pl.DataFrame:
    """Products with their name and price (cents) before and after their mid-period change."""
    category = rng.integers(0, len(CATEGORIES), n)
    noun = take(NOUNS, category * 4 + rng.integers(0, 4, n))
    adjective = rng.integers(0, len(ADJECTIVES), n)
    price = np.clip(np.exp(rng.normal(3.0, 0.9, n)), 2, 900).astype(np.int64) * 100 + 99
    changed, renamed = picks(rng, all_rows(n), RATES["price_change"], RATES["rename"])
    new_price = (price * rng.uniform(0.75, 1.3, n)).astype(np.int64) // 100 * 100 + 99
    new_price = np.where(changed, np.where(new_price == price, price + 100, new_price), price)
    new_adjective = np.where(renamed, (adjective + 1) % len(ADJECTIVES), adjective)
    updated = period.start - rng.integers(DAY, 90 * DAY, n)
    return pl.DataFrame({
        "product_id": np.arange(1, n + 1),
        "name": take(ADJECTIVES, adjective) + " " + noun,
        "new_name": take(ADJECTIVES, new_adjective) + " " + noun,
        "category": take(CATEGORIES, category),
        "category_idx": category,
        "price": price,
        "new_price": new_price,
        "updated": updated,
        "changed_at": np.where(changed | renamed, period.start + rng.integers(DAY, 70 * DAY, n), updated),
        "popularity": rng.gamma(0.8, 1.0, n),
    })


def _order_base(rng: np.random.Generator, period: Period, customers: pl.DataFrame, n: int) -> pl.DataFrame:
    """Orders numbered by ``order_ts``, by customers in proportion to their activity, after their signup."""
    created, weight = customers["created"].to_numpy(), customers["weight"].to_numpy()
    who = rng.choice(len(weight), n, p=weight / weight.sum())
    placed = between(rng, created[who] + HOUR, period.end - HOUR)
    order = np.lexsort((np.arange(n), placed))
    guest = pick(rng, all_rows(n), RATES["null_customer"])
    customer = pl.Series(np.where(guest, 0, who[order] + 1)).replace(0, None)
    return pl.DataFrame({"order_id": np.arange(1, n + 1), "customer_id": customer, "order_ts": placed[order]})


def _customer_feed(rng: np.random.Generator, period: Period, base: pl.DataFrame) -> pl.DataFrame:
    """CDC feed: creates, updates of email, country or segment, deletes, and comebacks after a delete."""
    n, created, end = base.height, base["created"].to_numpy(), period.end
    m = max(1, round(n * RATES["customer_updates"]))
    updated = rng.integers(0, n, m)
    update_t = between(rng, created[updated] + HOUR, end - HOUR)
    gone = np.flatnonzero(pick(rng, all_rows(n), RATES["delete"]))
    delete_t = between(rng, created[gone] + DAY, end - 3 * DAY)
    back = pick(rng, all_rows(len(gone)), RATES["comeback"])
    back_t = delete_t + ((end - delete_t) * rng.uniform(0.2, 0.9, len(gone))).astype(np.int64)
    away_from, away_to = np.full(n, end), np.zeros(n, dtype=np.int64)
    away_from[gone], away_to[gone] = delete_t, np.where(back, back_t, end)
    keep = (update_t < away_from[updated]) | (update_t >= away_to[updated])  # no update while deleted
    idx = np.concatenate([np.arange(n), gone[back], updated[keep], gone])
    sizes = [n, int(back.sum()), int(keep.sum()), len(gone)]
    kinds = np.concatenate([np.full(n, 9), np.full(sizes[1], -1), rng.choice(3, m, p=[0.4, 0.3, 0.3])[keep],
                            np.full(len(gone), -1)])  # 9: initial create; 0-2: email, country, segment
    records = base.select(pl.all().gather(idx)).with_columns(
        _t=np.concatenate([created, back_t[back], update_t[keep], delete_t]),
        _op=np.repeat([0, 0, 1, 2], sizes),
        _kind=kinds,
        _country=take(COUNTRIES, rng.integers(0, len(COUNTRIES), len(idx))),
        _segment=take(SEGMENTS, rng.integers(0, len(SEGMENTS), len(idx))),
        _domain=take(DOMAINS, rng.integers(0, len(DOMAINS), len(idx))),
        _seq=pl.int_range(pl.len()),
    )
    kind = pl.col("_kind")
    new_email = pl.concat_str(["first_name", "last_name", pl.lit("."), "_seq", pl.lit("@"), "_domain"])
    records = records.with_columns(  # every record carries the full state: the last change of each field
        email=pl.when(kind == 9).then("email").when(kind == 0).then(new_email.str.to_lowercase()),
        country=pl.when(kind == 9).then("country").when(kind == 1).then("_country"),
        segment=pl.when(kind == 9).then("segment").when(kind == 2).then("_segment"),
    ).sort("customer_id", "_t", "_seq").with_columns(
        pl.col("email", "country", "segment").forward_fill().over("customer_id")
    )
    key, op, t = records["customer_id"].to_numpy(), records["_op"].to_numpy(), records["_t"].to_numpy()
    arrival = t + rng.integers(0, 300, len(t))
    bounds = _bounds(arrival)
    arrival = _out_of_order(rng, key, _late(rng, arrival, op == 1), op == 1, bounds)
    null_email, upper_email, untidy, bad_ts = picks(rng, op != 2, *(RATES[name] for name in [
        "null_email", "upper_email", "untidy_country", "bad_timestamp"]))
    records = records.with_columns(_arrival=arrival, _bad_ts=bad_ts, _null_email=null_email,
                                   _upper_email=upper_email, _untidy=untidy,
                                   _quoted=pick(rng, all_rows(len(t)), RATES["string_id"]))
    email, country = pl.col("email"), pl.col("country")
    records = _arrange(None, records.with_columns(
        email=pl.when("_null_email").then(None).when("_upper_email").then(email.str.to_uppercase()).otherwise(email),
        country=pl.when("_untidy").then(pl.concat_str([pl.lit(" "), country.str.to_lowercase(), pl.lit(" ")]))
        .otherwise(country),
        signup_date=pl.from_epoch("signup_day", time_unit="d").dt.strftime("%Y-%m-%d"),
    ), bounds)
    live = pl.col("_op") != 2  # a delete carries only op, customer_id and updated_at
    drift = pl.col("_file") >= (pl.col("_file").max() + 1) // 2  # loyalty_tier from the middle file on
    fields = ["email", "first_name", "last_name", "country", "segment", "signup_date"]
    return records.with_columns(_line=json_object({
        "op": json_text(vocab(["c", "u", "d"], "_op")),
        "customer_id": json_number(pl.col("customer_id"), "_quoted"),
        **{field: pl.when(live).then(json_text(pl.col(field))) for field in fields},
        "updated_at": json_timestamp("_t", "_bad_ts"),
        "loyalty_tier": pl.when(live & drift).then(json_text(pl.col("loyalty_tier"))),
    }))


def _product_snapshots(rng: np.random.Generator, products: pl.DataFrame) -> pl.DataFrame:
    """Two full CSV snapshots: before the period, and mid-period with new prices and names."""
    snapshots = []
    for file, (name, price, updated) in enumerate([("name", "price", "updated"),
                                                   ("new_name", "new_price", "changed_at")]):
        na = pl.Series(pick(rng, all_rows(products.height), RATES["price_na"]))
        snapshots.append(products.select(
            "product_id", name=pl.col(name), category=pl.col("category"),
            price=pl.when(na).then(pl.lit("N/A")).otherwise(money(price)),
            updated_at=iso(updated), _file=pl.lit(file, dtype=pl.Int64),
        ))
    return pl.concat(snapshots)


def _order_feed(rng: np.random.Generator, period: Period, orders: pl.DataFrame) -> pl.DataFrame:
    """One record per status change: placed, paid, shipped, delivered; or cancelled before or after payment."""
    n, placed = orders.height, orders["order_ts"].to_numpy()
    paid = placed + rng.integers(60, 2 * HOUR, n)
    shipped = paid + rng.integers(DAY // 2, 3 * DAY, n)
    delivered = shipped + rng.integers(DAY, 5 * DAY, n)
    cancelled = pick(rng, all_rows(n), RATES["cancelled"])
    early = cancelled & (rng.random(n) < 0.5)
    cancel_t = np.where(early, placed + rng.integers(600, DAY, n), paid + rng.integers(HOUR, 2 * DAY, n))
    times = np.stack([placed, paid, shipped, delivered, cancel_t])
    exists = np.stack([all_rows(n), ~early, ~cancelled, ~cancelled, cancelled]) & (times < period.end)
    status, row = np.nonzero(exists)
    order = np.lexsort((times[status, row], row))
    status, row = status[order], row[order]
    t = times[status, row]
    arrival = t + rng.integers(0, 120, len(t))
    bounds = _bounds(arrival)
    arrival = _out_of_order(rng, row, _late(rng, arrival, status > 0), all_rows(len(t)), bounds)
    records = orders.select(pl.all().gather(row)).with_columns(
        _status=status,
        _t=t,
        _arrival=arrival,
        _bad_ts=pick(rng, status > 0, RATES["bad_timestamp"]),
        _quoted_order=pick(rng, all_rows(len(t)), RATES["string_id"]),
        _quoted_customer=pick(rng, all_rows(len(t)), RATES["string_id"]),
    )
    return _arrange(rng, records, bounds).select("_file", _line=pl.concat_str([
        pl.lit('{"order_id":'), json_number(pl.col("order_id"), "_quoted_order"),
        pl.lit(',"customer_id":'), json_number(pl.col("customer_id"), "_quoted_customer"),
        pl.lit(',"status":"'), vocab(STATUSES, "_status"),
        pl.lit('","order_ts":"'), iso("order_ts"),
        pl.lit('","updated_at":'), json_timestamp("_t", "_bad_ts"), pl.lit("}"),
    ]))


def _order_items(
    rng: np.random.Generator, period: Period, orders: pl.DataFrame, products: pl.DataFrame
) -> pl.DataFrame:
    """Order lines at the price in force when the order was placed; a few corrected later."""
    n = orders.height
    lines = rng.choice(np.arange(1, 6), n, p=[0.35, 0.28, 0.19, 0.11, 0.07])
    lines[pick(rng, np.arange(n) > 0, RATES["no_lines"])] = 0  # never all orders, even at tiny scales
    row = np.repeat(np.arange(n), lines)
    m = len(row)
    line_number = np.arange(m) - np.repeat(np.cumsum(lines) - lines, lines) + 1
    popularity = products["popularity"].to_numpy()
    product = rng.choice(len(popularity), m, p=popularity / popularity.sum())
    quantity = rng.choice([1, 2, 3, 4], m, p=[0.7, 0.2, 0.07, 0.03])
    placed = orders["order_ts"].to_numpy()[row]
    current = placed >= products["changed_at"].to_numpy()[product]
    price = np.where(current, products["new_price"].to_numpy()[product], products["price"].to_numpy()[product])
    fix = np.flatnonzero(pick(rng, all_rows(m), RATES["line_correction"]))
    taken = np.concatenate([np.arange(m), fix])
    t = np.concatenate([placed, np.minimum(placed[fix] + rng.integers(HOUR, 3 * DAY, len(fix)), period.end - 1)])
    lag = rng.integers(0, 300, n)[row]  # the lines of an order arrive together, in line order
    arrival = t + np.concatenate([lag, lag[fix]])
    word, negative = picks(rng, all_rows(len(t)), RATES["quantity_word"], RATES["negative_quantity"])
    records = pl.DataFrame({
        "order_id": row[taken] + 1, "line_number": line_number[taken], "product_id": product[taken] + 1,
        "_quantity": np.concatenate([quantity, quantity[fix] % 4 + 1]), "_cents": price[taken], "_t": t,
        "_arrival": arrival, "_word": word, "_negative": negative,
    })
    qty = pl.col("_quantity").cast(pl.String)
    return _arrange(rng, records, _bounds(arrival)).select(
        "order_id", "line_number", "product_id",
        quantity=pl.when("_word").then(pl.lit("two")).when("_negative").then(pl.concat_str([pl.lit("-"), qty]))
        .otherwise(qty),
        unit_price=money("_cents"), updated_at=iso("_t"), _file="_file",
    )


def _sessions(
    rng: np.random.Generator, period: Period, customers: pl.DataFrame, orders: pl.DataFrame, n: int
) -> tuple[np.ndarray, ...]:
    """Sessions of 5-15 events: one ending in a checkout at ``order_ts`` for some orders, plus ``n`` browse ones.

    Returns:
        Per session: customer id (0 for anonymous), start, event count, whether it ends in a checkout.
    """
    order_customer = orders["customer_id"].fill_null(0).to_numpy()
    from_orders = np.flatnonzero(pick(rng, order_customer > 0, RATES["order_sessions"]))
    created, weight = customers["created"].to_numpy(), customers["weight"].to_numpy()
    who = rng.choice(len(weight), n, p=0.5 / len(weight) + 0.5 * weight / weight.sum())
    anonymous = pick(rng, all_rows(n), RATES["anonymous"])
    start = between(rng, np.where(anonymous, period.start, created[who]), period.end - 2 * HOUR)
    customer = np.concatenate([order_customer[from_orders], np.where(anonymous, 0, who + 1)])
    anchor = np.concatenate([orders["order_ts"].to_numpy()[from_orders], start])
    checkout = np.concatenate([all_rows(len(from_orders)), ~all_rows(n)])
    return customer, anchor, rng.integers(5, 16, len(anchor)), checkout


def _events(
    rng: np.random.Generator, period: Period, customers: pl.DataFrame, orders: pl.DataFrame,
    products: pl.DataFrame, n_browse: int,
) -> pl.DataFrame:
    """Clickstream events of checkout and browse sessions (some anonymous), numbered by time."""
    customer, anchor, count, checkout = _sessions(rng, period, customers, orders, n_browse)
    s, first = len(anchor), np.cumsum(count) - count
    sess = np.repeat(np.arange(s), count)
    pos = np.arange(len(sess)) - first[sess]
    e = len(sess)
    offset = np.cumsum(np.where(pos == 0, 0, rng.integers(5, 240, e)))
    offset -= offset[first][sess]
    begin = np.where(checkout, anchor - offset[first + count - 1], anchor)  # checkout sessions end at order_ts
    ts = begin[sess] + offset
    kind = rng.choice(4, e, p=[0.55, 0.2, 0.2, 0.05])
    kind[pos == 0] = 0
    kind[(pos == (count - 1)[sess]) & checkout[sess]] = 3
    popularity = products["popularity"].to_numpy()
    product = rng.choice(len(popularity), e, p=popularity / popularity.sum())
    view = rng.random(e)
    product_page = (kind == 2) | ((kind == 0) & (view < 0.7))
    category_page = 3 + products["category_idx"].to_numpy()[product]
    page = np.select([kind == 1, kind == 3, view < 0.85], [1, 2, category_page], 0)  # index in PAGES
    rank = np.empty(s, dtype=np.int64)
    rank[np.lexsort((np.arange(s), begin))] = np.arange(s)
    arrival = ts + rng.integers(0, 60, e)
    bounds = _bounds(arrival)
    records = pl.DataFrame({
        "customer_id": customer[sess], "_session": rank[sess] + 1, "_pos": pos, "_t": ts, "_kind": kind,
        "_product": np.where(product_page, product + 1, 0), "_page": page, "_arrival": _late(rng, arrival, all_rows(e)),
        "_query": rng.integers(0, len(QUERIES), e), "_device": rng.integers(0, len(DEVICES), s)[sess],
    }).sort("_t", "_session", "_pos").with_columns(
        pl.col("customer_id", "_product").replace(0, None), _number=pl.int_range(1, pl.len() + 1)
    )
    records = records.with_columns(
        _bad_ts=pick(rng, all_rows(e), RATES["bad_timestamp"]),
        _quoted=pick(rng, records["customer_id"].is_not_null().to_numpy(), RATES["string_id"]),
    )
    page = pl.when(pl.col("_product").is_not_null()).then(pl.concat_str([pl.lit("/p/"), "_product"]))
    query = pl.when(pl.col("_kind") == 1).then(json_text(vocab(QUERIES, "_query"))).otherwise(pl.lit("null"))
    return _arrange(rng, records, bounds).select("_file", _line=pl.concat_str([
        pl.lit('{"event_id":"e'), pl.col("_number").cast(pl.String).str.zfill(9),
        pl.lit('","customer_id":'), json_number(pl.col("customer_id"), "_quoted"),
        pl.lit(',"session_id":"s'), pl.col("_session").cast(pl.String).str.zfill(8),
        pl.lit('","event_type":"'), vocab(EVENT_TYPES, "_kind"),
        pl.lit('","event_ts":'), json_timestamp("_t", "_bad_ts"),
        pl.lit(',"payload":{"page":"'), page.otherwise(vocab(PAGES, "_page")),
        pl.lit('","product_id":'), json_number(pl.col("_product")),
        pl.lit(',"query":'), query,
        pl.lit(',"device":'), vocab(DEVICES, "_device"), pl.lit("}}"),
    ]))
