"""Tests of SCD2 history on Delta and Iceberg: a hand-checked CDC sequence, late and replayed changes, and batch
invariance."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from engine.arrow import to_storage
from engine.config import StorageSettings
from engine.errors import CommitConflict
from engine.kinds import SCD2
from engine.layout import Layout
from engine.tables import scd2
from engine.tables.files import ChangeFiles, RollingParquetWriter
from engine.tables.formats import TableFormats, TableStore
from tests.conftest import settings_at

KIND = SCD2(keys=["id"], sequence_by="seq", tracked_columns=["country"], delete_when="op = 'd'",
            except_columns=["op"])
SCHEMA = pa.schema([("id", pa.int64()), ("country", pa.string()), ("email", pa.string()), ("seq", pa.int64()),
                    ("op", pa.string())])


def changes(*rows: tuple[int, str | None, str | None, int, str]) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(SCHEMA.names, row)) for row in rows], schema=SCHEMA)


FORMATS = ["delta", "iceberg"]


def store(root: Path, table_format: str) -> TableStore:
    return TableFormats(settings_at(root)).store(table_format)


def dim(root: Path) -> str:
    return Layout.at(str(root)).table("gold.dim")


def history(root: Path, table_format: str) -> list[tuple[Any, ...]]:
    at = store(root, table_format)
    rows = at.read_columns(dim(root), "gold.dim", at.schema(dim(root), "gold.dim").names).to_pylist()
    return sorted(((r["id"], r["country"], r["email"], r["valid_from"], r["valid_to"], r["is_current"]) for r in rows),
                  key=lambda row: (row[0], row[3]))


def apply(root: Path, batch: pa.Table, table_format: str, transaction: Any = None) -> scd2.HistoryOutcome:
    return scd2.apply_changes(dim(root), Layout.at(str(root)).changes("gold.dim"), "gold.dim", batch, KIND,
                              store=store(root, table_format), metadata={}, transaction=transaction)


@pytest.mark.parametrize("table_format", FORMATS)
def test_hand_checked_history(tmp_path: Path, table_format: str) -> None:
    first = apply(tmp_path, changes(
        (1, "US", "a", 1, "c"),
        (1, "US", "b", 2, "u"),   # untracked change: the open version is updated in place
        (1, "FR", "b", 3, "u"),   # tracked change: a new version
        (2, None, None, 1, "d"),  # a delete of a key never seen: nothing
        (3, "US", "x", 1, "c"),
        (3, "US", "y", 2, "u"),
    ), table_format)
    assert first.version == 0 and first.changes_logged == 6
    assert history(tmp_path, table_format) == [
        (1, "US", "b", 1, 3, False),
        (1, "FR", "b", 3, None, True),
        (3, "US", "y", 1, None, True),
    ]
    second = apply(tmp_path, changes(
        (1, None, None, 5, "d"),  # closes the current version
        (1, "FR", "c", 7, "c"),   # the key comes back: a new version
        (1, "DE", "b", 4, "u"),   # late: splits the FR version that was open from 3 to 5
    ), table_format)
    assert second.version == 1
    assert history(tmp_path, table_format) == [
        (1, "US", "b", 1, 3, False),
        (1, "FR", "b", 3, 4, False),
        (1, "DE", "b", 4, 5, False),
        (1, "FR", "c", 7, None, True),
        (3, "US", "y", 1, None, True),
    ]


@pytest.mark.parametrize("table_format", FORMATS)
def test_replayed_changes_make_no_version_and_no_commit(tmp_path: Path, table_format: str) -> None:
    batch = changes((1, "US", "a", 1, "c"), (1, "FR", "a", 2, "u"))
    apply(tmp_path, batch, table_format)
    replay = apply(tmp_path, batch, table_format)
    assert replay == scd2.HistoryOutcome(None, 0, 0, 0)
    assert store(tmp_path, table_format).latest_version(dim(tmp_path)) == 0


@pytest.mark.parametrize("table_format", FORMATS)
def test_untracked_change_updates_in_place(tmp_path: Path, table_format: str) -> None:
    apply(tmp_path, changes((1, "US", "a", 1, "c")), table_format)
    outcome = apply(tmp_path, changes((1, "US", "new@mail", 2, "u")), table_format)
    assert (outcome.rows_upserted, outcome.rows_removed) == (1, 0)
    assert history(tmp_path, table_format) == [(1, "US", "new@mail", 1, None, True)]


@pytest.mark.parametrize("table_format", FORMATS)
def test_incremental_batches_equal_one_batch(tmp_path: Path, table_format: str) -> None:
    rng = random.Random(7)
    events = [(rng.randrange(20), rng.choice(["US", "FR", None]), rng.choice("abc"), seq,
               rng.choice(["c", "u", "u", "d"])) for seq in range(400)]
    shuffled = events[:]
    rng.shuffle(shuffled)
    apply(tmp_path / "full", changes(*events), table_format)
    for start in range(0, len(shuffled), 60):
        apply(tmp_path / "incremental", changes(*shuffled[start:start + 60]), table_format)
    full, incremental = history(tmp_path / "full", table_format), history(tmp_path / "incremental", table_format)
    assert full == incremental
    current = [row for row in full if row[5]]
    assert len({row[0] for row in current}) == len(current)


@pytest.mark.parametrize("table_format", FORMATS)
def test_history_commit_carries_the_marker_and_refuses_a_committed_batch(tmp_path: Path, table_format: str) -> None:
    at, uri = store(tmp_path, table_format), dim(tmp_path)
    apply(tmp_path, changes((1, "US", "a", 1, "c")), table_format, at.next_transaction(uri, "app"))
    planned = at.next_transaction(uri, "app")
    apply(tmp_path, changes((1, "FR", "a", 2, "u")), table_format, planned)
    assert at.next_transaction(uri, "app").version == 3
    with pytest.raises(CommitConflict):
        apply(tmp_path, changes((1, "DE", "a", 3, "u")), table_format, planned)
    assert history(tmp_path, table_format) == [(1, "US", "a", 1, 2, False), (1, "FR", "a", 2, None, True)]


@pytest.mark.parametrize("table_format", FORMATS)
def test_a_batch_reads_the_version_rows_of_the_keys_it_touches_only(tmp_path: Path, table_format: str) -> None:
    apply(tmp_path, changes(*[(key, "US", "a", 1, "c") for key in range(200)]), table_format)
    read: list[set[int]] = []

    class Watched:
        """The table's store, recording the keys of the rows read for a batch, refusing to read every row."""

        def __init__(self, inner: TableStore) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def read_keys(self, uri: str, table: str, keys: pa.Table) -> pa.Table:
            rows = self.inner.read_keys(uri, table, keys)
            read.append(set(rows.column("id").to_pylist()))
            return rows

        def read_columns(self, *args: Any) -> pa.Table:
            raise AssertionError("every row of the table read")

    outcome = scd2.apply_changes(dim(tmp_path), Layout.at(str(tmp_path)).changes("gold.dim"), "gold.dim",
                                 changes((7, "FR", "a", 2, "u"), (150, "US", "b", 2, "u")), KIND,
                                 store=Watched(store(tmp_path, table_format)), metadata={})  # type: ignore[arg-type]
    assert read == [{7, 150}]
    assert (outcome.rows_upserted, outcome.rows_removed) == (3, 0)  # 7: closed and a new version; 150 in place
    assert [row for row in history(tmp_path, table_format) if row[0] in (7, 150)] == [
        (7, "US", "a", 1, 2, False), (7, "FR", "a", 2, None, True), (150, "US", "b", 1, None, True)]


def test_staged_changes_are_applied_by_ray_tasks_as_in_memory(tmp_path: Path, ray_local: None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches staged in files go through Ray tasks (split by bucket, each bucket's history rebuilt and compared
    there, the difference merged by a task): the same history as the batches applied in this process, which never
    reads a staged change."""
    rng = random.Random(11)
    events = [(rng.randrange(30), rng.choice(["US", "FR", None]), rng.choice("abc"), seq,
               rng.choice(["c", "u", "u", "d"])) for seq in range(300)]
    rng.shuffle(events)
    batches = [changes(*events[start:start + 75]) for start in range(0, len(events), 75)]
    for batch in batches:
        apply(tmp_path / "memory", batch, "delta")
    monkeypatch.setattr(scd2, "SPLIT_BYTES", 1500)  # a few buckets, and a split task per staged file
    monkeypatch.setattr(ChangeFiles, "read", lambda self: pytest.fail("staged changes read in this process"))
    root = tmp_path / "tasks"
    for number, batch in enumerate(batches):
        writer = RollingParquetWriter(str(root / "staging" / str(number)), StorageSettings(), "stage")
        writer.write(to_storage(batch.slice(0, 40)))
        writer.close()
        writer.write(to_storage(batch.slice(40)))
        staged = ChangeFiles(str(root / "staging" / str(number)), tuple(writer.close()))
        outcome = scd2.apply_changes(dim(root), Layout.at(str(root)).changes("gold.dim"), "gold.dim", staged, KIND,
                                     metadata={}, scratch=str(root / "staging" / str(number) / "history"))
        assert outcome.changes_logged == batch.num_rows
    assert history(root, "delta") == history(tmp_path / "memory", "delta")
    replay = scd2.apply_changes(dim(root), Layout.at(str(root)).changes("gold.dim"), "gold.dim", staged, KIND,
                                metadata={}, scratch=str(root / "replay"))
    assert replay == scd2.HistoryOutcome(None, 0, 0, 0)
