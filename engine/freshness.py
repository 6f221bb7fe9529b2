"""Freshness targets: how old a table's data may be (`Freshness`), the durations they are written in, and the
instants column values stand for.

How the age is measured against a target: `engine.staleness`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from engine.errors import PipelineDefinitionError

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}



def parse_duration(value: str | dt.timedelta, what: str = "duration") -> dt.timedelta:
    """A positive duration from `30m`, `6h`, `1d`, `2w`, `90s` (a number and one unit) or a timedelta.

    Raises:
        PipelineDefinitionError: anything else, or a duration that is not positive.
    """
    if isinstance(value, dt.timedelta):
        duration = value
    elif isinstance(value, str) and (match := DURATION.match(value.lower())):
        duration = dt.timedelta(**{UNITS[match.group(2)]: float(match.group(1))})
    else:
        raise PipelineDefinitionError(
            f"{what} `{value!r}` is not a duration; write a number and a unit, s, m, h, d or w "
            "(`30m`, `6h`, `1d`), or pass a datetime.timedelta")
    if duration <= dt.timedelta(0):
        raise PipelineDefinitionError(f"{what} `{value!r}` must be longer than zero")
    return duration


def format_duration(duration: dt.timedelta) -> str:
    """`2d 3h`, `5h 12m`, `40m`, `12s`: the two largest units."""
    seconds = int(duration.total_seconds())
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")) if n]
    return sign + (" ".join(parts[:2]) or "0s")


def spell_duration(duration: dt.timedelta) -> str:
    """`2 d 4 h`, `3 h`, `5 h 12 m`, `40 s`: the two largest units, for reading in a sentence."""
    return " ".join(f"{part[:-1]} {part[-1]}" for part in format_duration(duration).split())


@dataclass(frozen=True)
class Freshness:
    """How fresh a table's data must be.

    Attributes:
        max_age: the table age allowed (see the module docstring): `30m`, `6h`, `1d` or a timedelta.
        time_column: an event-time column (timestamp or date) whose newest value measures the table age
            instead of the last data commit, so that a run re-committing old data does not count as fresh.
        partition_column: the time partition column (e.g. `order_date`) whose newest value present is
            measured against `partition_max_age`.
        partition_max_age: the age the newest partition may have (a date is midnight UTC at its start, so
            daily partitions need more than `1d`: `36h` means yesterday's partition by noon today).

    Raises:
        PipelineDefinitionError: a duration does not parse, no target is given, or only one of
            `partition_column` and `partition_max_age` is.
    """

    max_age: dt.timedelta | str | None = None
    time_column: str | None = None
    partition_column: str | None = None
    partition_max_age: dt.timedelta | str | None = None

    def __post_init__(self) -> None:
        if self.max_age is not None:
            object.__setattr__(self, "max_age", parse_duration(self.max_age, "freshness max_age"))
        if self.partition_max_age is not None:
            object.__setattr__(self, "partition_max_age",
                               parse_duration(self.partition_max_age, "freshness partition_max_age"))
        if (self.partition_column is None) != (self.partition_max_age is None):
            raise PipelineDefinitionError(
                "freshness: give partition_column and partition_max_age together "
                f"(got partition_column={self.partition_column!r}, partition_max_age={self.partition_max_age!r})")
        if self.max_age is None and self.partition_max_age is None:
            raise PipelineDefinitionError("freshness: give max_age, or partition_column and partition_max_age")
        if self.time_column is not None and self.max_age is None:
            raise PipelineDefinitionError("freshness: time_column measures max_age; give max_age too")

    def describe(self) -> str:
        """`6h`, `6h of order_ts`, `6h, newest order_date 36h`."""
        parts = []
        if self.max_age is not None:
            parts.append(format_duration(self.max_age)  # type: ignore[arg-type]
                         + (f" of {self.time_column}" if self.time_column else ""))
        if self.partition_column is not None:
            parts.append(f"newest {self.partition_column} {format_duration(self.partition_max_age)}")  # type: ignore[arg-type]
        return ", ".join(parts)

    @property
    def columns(self) -> tuple[str, ...]:
        """The table columns the target reads."""
        return tuple(c for c in (self.time_column, self.partition_column) if c is not None)


def as_instant(value: Any) -> dt.datetime | None:
    """A column value as a UTC time: a date is midnight UTC at its start, naive times are UTC, ISO strings
    are parsed; None when it is none of these."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time(), dt.UTC)
    if isinstance(value, str):
        try:
            return as_instant(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None
