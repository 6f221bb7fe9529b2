"""The as-of join of one partition, on hand-made rows at the edges: ties, TTL bounds, created times."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from engine.features.pit import CREATED_TS, ENTITY_TS, FEATURE_TS, ROW, ViewJoin, as_of_join, latest_per_key

US = pa.timestamp("us", tz="UTC")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
ONE_US = dt.timedelta(microseconds=1)


def _at(*offsets: dt.timedelta) -> pa.Array:
    return pa.array([T0 + o for o in offsets], US)


def test_as_of_join_takes_latest_row_at_or_before_within_ttl_with_created_breaking_ties() -> None:
    entities = pa.table({
        ROW: [0, 1, 2, 3, 4, 5, 6, 7],
        "k": pa.array([1, 1, 1, 1, 2, None, 1, 1], pa.int64()),
        ENTITY_TS: _at(HOUR, 3 * HOUR, 3 * HOUR + ONE_US, HOUR - ONE_US, 5 * HOUR, HOUR, 2 * HOUR, 2 * HOUR),
    })
    features = pa.table({
        "k": pa.array([1, 1, 1, 2], pa.int64()),
        FEATURE_TS: _at(HOUR, HOUR, 0 * HOUR, 4 * HOUR),
        CREATED_TS: _at(2 * HOUR, HOUR, 0 * HOUR, 4 * HOUR),
        "f": pa.array([11, 10, 5, 20], pa.int64()),
    })
    view = ViewJoin("v", ("k",), ("f",), int(2 * HOUR.total_seconds() * 1e6), has_created=True)

    joined = as_of_join(entities, [view], v=features).sort_by(ROW)

    assert joined.column("f").to_pylist() == [
        11,    # same time as two rows: the later created wins
        11,    # exactly TTL later: still valid
        None,  # one microsecond past the TTL
        5,     # just before the tie: the older row
        20,    # other key
        None,  # null key
        11, 11,  # repeated entity rows stay repeated
    ]


def test_latest_per_key_hashes_the_latest_row_of_every_key() -> None:
    rows = pa.table({"k": pa.array([1, 1, 2, None], pa.int64()), "t": _at(HOUR, 2 * HOUR, HOUR, HOUR),
                     "f": [1.0, 2.0, 3.0, 4.0]})

    latest = latest_per_key(rows, ["k"], "t", hash_columns=["f", "t"]).sort_by("k")

    assert latest.column("k").to_pylist() == [1, 2]
    assert latest.column("f").to_pylist() == [2.0, 3.0]
    assert latest.column("__row_hash").type == pa.int64()
    assert len(set(latest.column("__row_hash").to_pylist())) == 2


def test_as_of_join_matches_int32_entity_keys_with_int64_feature_keys() -> None:
    entities = pa.table({ROW: [0, 1, 2], "k": pa.array([1, 2, 3], pa.int32()), ENTITY_TS: _at(HOUR, HOUR, HOUR)})
    features = pa.table({"k": pa.array([1, 2, 2**40], pa.int64()), FEATURE_TS: _at(0 * HOUR, HOUR, 0 * HOUR),
                         "f": pa.array([10, 20, 30], pa.int64())})
    view = ViewJoin("v", ("k",), ("f",), None, has_created=False)

    joined = as_of_join(entities, [view], v=features).sort_by(ROW)

    assert joined.column("f").to_pylist() == [10, 20, None]
    assert joined.schema.field("k").type == pa.int32()
