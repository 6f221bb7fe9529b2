"""Seeded random selections of the retail generator: row masks drawn at a rate, and uniform times."""

from __future__ import annotations

import numpy as np

RATES: dict[str, float] = {
    # Shape of the data.
    "customer_updates": 0.6,  # CDC updates per customer
    "cancelled": 0.06,  # orders cancelled, half of them before payment
    "no_lines": 0.01,  # orders whose lines never arrive
    "line_correction": 0.02,  # order lines sent again later with another quantity
    "price_change": 0.15, "rename": 0.05,  # products with a new price, a new name in the second snapshot
    "order_sessions": 0.4,  # orders whose session (ending in a checkout at order_ts) is in the clickstream
    "anonymous": 0.15,  # browse sessions without a customer
    # Defects.
    "duplicate": 0.02,  # exact duplicate lines (orders, order items, events)
    "late": 0.03,  # status changes, CDC updates and events arriving 1-7 days late
    "out_of_order": 0.02,  # changes arriving after, mostly a file after, a newer change of the same key
    "delete": 0.02, "comeback": 0.5,  # customers deleted; share of them created again later
    "null_email": 0.02, "upper_email": 0.03, "untidy_country": 0.03,  # untidy: " de "
    "null_customer": 0.01,  # orders without customer_id
    "string_id": 0.01,  # numeric ids written as JSON strings, per id field
    "bad_timestamp": 0.001,  # "not-a-date"
    "quantity_word": 0.005, "negative_quantity": 0.005,  # quantity "two", "-1"
    "price_na": 0.02,  # price "N/A", per snapshot
}
"""The rates of the data's shape and of its defects, each a share of the eligible rows."""


def all_rows(n: int) -> np.ndarray:
    """Mask selecting all of ``n`` rows."""
    return np.ones(n, dtype=bool)


def picks(rng: np.random.Generator, eligible: np.ndarray, *rates: float) -> list[np.ndarray]:
    """Disjoint masks, each selecting ``round(rate * eligible rows)`` eligible rows, at least one."""
    pool = rng.permutation(np.flatnonzero(eligible))
    masks, used = [], 0
    for rate in rates:
        k = min(len(pool) - used, max(1, round(len(pool) * rate)))
        mask = np.zeros(len(eligible), dtype=bool)
        mask[pool[used : used + k]] = True
        masks.append(mask)
        used += k
    return masks


def pick(rng: np.random.Generator, eligible: np.ndarray, rate: float) -> np.ndarray:
    """Mask selecting ``round(rate * eligible rows)`` eligible rows, at least one."""
    return picks(rng, eligible, rate)[0]


def between(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray | int) -> np.ndarray:
    """A uniform second in ``[lo, hi)`` per row."""
    return lo + (rng.random(len(lo)) * (hi - lo)).astype(np.int64)
