"""The Iceberg merge and SCD2 history in Ray tasks: random changes merged into a table of several files give the rows
and counts an independent recomputation gives, in tasks and in this process alike; a file no changed key can be in
is not read, one that holds no replaced or deleted row is not rewritten; this process reads no row while staged
changes are merged or kept as history; SCD2 on Iceberg keeps the history SCD2 on Delta keeps."""

from __future__ import annotations

import contextlib
import datetime as dt
import random
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from engine.arrow import to_storage
from engine.config import StorageSettings
from engine.errors import TableFailed
from engine.kinds import Merge
from engine.layout import Layout
from engine.tables import scd2
from engine.tables.files import ChangeFiles, RollingParquetWriter
from engine.tables.formats import TableFormats
from engine.tables.iceberg import IcebergTables
from engine.tables.iceberg import merge as iceberg_merge
from tests.conftest import settings_at
from tests.engine.tables.test_scd2 import KIND as HISTORY
from tests.engine.tables.test_scd2 import changes as history_changes
from tests.engine.tables.test_scd2 import dim, history

pytestmark = pytest.mark.usefixtures("ray_local")

TABLE = "silver.t"
COLUMNS = ["region", "id", "v", "seq"]
CHANGES = pa.schema([("region", pa.string()), ("id", pa.int64()), ("v", pa.string()), ("seq", pa.int64()),
                     ("op", pa.string())])
REGIONS = "abcde"
"""File `i` of a new table holds region `REGIONS[i]` and ids `25 * i` to `25 * i + 24`; the last region, no file."""
COUNTED = ("num_source_rows", "num_target_rows_inserted", "num_target_rows_updated", "num_target_rows_deleted")


@contextlib.contextmanager
def no_rows_read_here() -> Iterator[None]:
    """Every way to read rows of staged changes, Iceberg data files, Parquet files or Delta tables fails in this
    process (the driver) for the block; Ray tasks run in worker processes, which keep them."""
    import pyarrow.dataset
    import pyarrow.parquet
    from pyiceberg.io.pyarrow import ArrowScan
    from pyiceberg.table import DataScan

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("rows read in the driver")

    with pytest.MonkeyPatch.context() as patch:
        for owner, name in [(ChangeFiles, "read"), (ArrowScan, "to_table"), (ArrowScan, "to_record_batches"),
                            (DataScan, "to_arrow"), (pyarrow.parquet, "read_table"), (pyarrow.dataset, "dataset"),
                            (DeltaTable, "to_pyarrow_table"), (DeltaTable, "to_pyarrow_dataset")]:
            patch.setattr(owner, name, refuse)
        yield


def stage(folder: Path, batch: pa.Table, parts: int = 2) -> ChangeFiles:
    """`batch` staged as a run stages changes: Parquet files (`parts` of them) handed to the merge by name."""
    writer = RollingParquetWriter(str(folder), StorageSettings(), "stage")
    step = max(1, -(-batch.num_rows // parts))
    for start in range(0, batch.num_rows, step):
        writer.write(to_storage(batch.slice(start, step)))
        writer.close()
    return ChangeFiles(str(folder), tuple(writer.close()))


def new_table(tables: IcebergTables, uri: str, files: list[pa.Table]) -> None:
    """An Iceberg table at `uri` made of one data file per table of `files`."""
    writer = RollingParquetWriter(uri, StorageSettings(), "base")
    for rows in files:
        writer.write(to_storage(rows))
        writer.close()
    tables.commit_files(uri, writer.close(), mode="append", metadata={})


def data_files(tables: IcebergTables, uri: str, keys: tuple[str, ...] = ("region", "id")) -> dict[str, list[Any]]:
    """The table's data files and the keys of their rows."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan

    loaded = tables.open_table(uri, TABLE)
    scan = ArrowScan(loaded.metadata, loaded.io, loaded.schema(), AlwaysTrue())
    return {task.file.file_path: [tuple(r[k] for k in keys) for r in scan.to_table([task]).to_pylist()]
            for task in loaded.scan().plan_files()}


class Reference:
    """The table as an independent recomputation keeps it: the stored row of every key, the rows whose key has a
    null (which no change matches), and, for a merge that logs its deletes, the latest delete of every key."""

    def __init__(self, keys: list[str], rows: list[dict[str, Any]], logs_deletes: bool) -> None:
        self.keys = keys
        self.rows = {self.key(row): row for row in rows}
        self.null_keyed: list[dict[str, Any]] = []
        self.deleted_at: dict[tuple[Any, ...], int] | None = {} if logs_deletes else None

    def key(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row[k] for k in self.keys)

    def all_rows(self) -> Counter[tuple[Any, ...]]:
        return Counter(tuple(row[c] for c in COLUMNS) for row in [*self.rows.values(), *self.null_keyed])

    def apply(self, batch: list[dict[str, Any]]) -> tuple[dict[str, int], set[tuple[Any, ...]]]:
        """Apply a batch of changes; returns the counts and the keys whose stored row was replaced or deleted."""
        if self.deleted_at is not None:
            for change in batch:
                if change["op"] == "d" and change["seq"] is not None:
                    key = self.key(change)
                    self.deleted_at[key] = max(self.deleted_at.get(key, change["seq"]), change["seq"])
            batch = [c for c in batch if c["op"] == "d" or self.key(c) not in self.deleted_at
                     or (c["seq"] is not None and c["seq"] >= self.deleted_at[self.key(c)])]
        latest: dict[tuple[Any, ...], dict[str, Any]] = {}
        for change in sorted(batch, key=lambda c: (c["seq"] is not None, c["seq"] or 0)):
            latest[self.key(change)] = change
        counts = dict.fromkeys(COUNTED, 0) | {"num_source_rows": len(latest)}
        applied = set()
        for key, change in latest.items():
            row, deleting = {c: change[c] for c in COLUMNS}, change["op"] == "d"
            if None in key:
                if not deleting:
                    self.null_keyed.append(row)
                    counts["num_target_rows_inserted"] += 1
            elif key in self.rows:
                stored = self.rows[key]["seq"]
                if change["seq"] is not None and stored is not None and change["seq"] >= stored:
                    applied.add(key)
                    if deleting:
                        del self.rows[key]
                        counts["num_target_rows_deleted"] += 1
                    else:
                        self.rows[key] = row
                        counts["num_target_rows_updated"] += 1
            elif not deleting:
                self.rows[key] = row
                counts["num_target_rows_inserted"] += 1
        return counts, applied


def first_rows() -> list[list[dict[str, Any]]]:
    """The rows of a new table's files, file by file."""
    return [[{"region": REGIONS[file], "id": 25 * file + n, "v": "first", "seq": 10} for n in range(25)]
            for file in range(4)]


def random_batch(rng: random.Random, size: int, null_keys: bool) -> list[dict[str, Any]]:
    """Changes to the keys of two or three of the regions (ids in the region's range): updates older and newer than
    the stored rows, repeated keys, deletes, null sequence values and (with `null_keys`) null ids."""
    regions = rng.sample(range(len(REGIONS)), rng.choice([2, 3]))
    batch = []
    for _ in range(size):
        region = rng.choice(regions)
        batch.append({"region": REGIONS[region],
                      "id": None if null_keys and rng.random() < 0.05 else 25 * region + rng.randrange(25),
                      "v": f"v{rng.randrange(1000)}", "seq": None if rng.random() < 0.05 else rng.randrange(4, 30),
                      "op": rng.choice("cuuud")})
    return batch


@pytest.mark.parametrize("keys, logs_deletes", [(["id"], False), (["region", "id"], True)], ids=["id", "region+id"])
def test_random_changes_merge_like_an_independent_recomputation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                keys: list[str], logs_deletes: bool) -> None:
    monkeypatch.setattr(iceberg_merge, "SPLIT_BYTES", 3000)  # several buckets, split tasks and groups of files
    kind = Merge(keys=keys, sequence_by="seq", delete_when="op = 'd'", except_columns=["op"])
    tables = IcebergTables(str(tmp_path))
    in_tasks, in_process = f"{tmp_path}/silver/t", f"{tmp_path}/silver/t_in_process"
    change_log = f"{tmp_path}/_changes/silver/t" if logs_deletes else None
    for uri in (in_tasks, in_process):
        new_table(tables, uri, [pa.Table.from_pylist(rows) for rows in first_rows()])
    reference = Reference(keys, [row for rows in first_rows() for row in rows], logs_deletes)
    rng = random.Random(len(keys))
    for number in range(4):
        batch = random_batch(rng, 160, null_keys=not logs_deletes)
        changes = pa.Table.from_pylist(batch, schema=CHANGES)
        before = data_files(tables, in_tasks)
        counts, applied = reference.apply(batch)
        with no_rows_read_here():
            outcome = tables.merge_staged(in_tasks, TABLE, stage(tmp_path / f"staging-{number}", changes), kind,
                                          metadata={"batch": number}, storage=StorageSettings(),
                                          change_log=change_log)
        after = data_files(tables, in_tasks)
        stored = tables.read_table(in_tasks, TABLE).to_pylist()
        assert Counter(tuple(row[c] for c in COLUMNS) for row in stored) == reference.all_rows(), number
        assert {k: outcome.metrics[k] for k in COUNTED} == counts
        assert outcome.duplicates == len(batch) - counts["num_source_rows"]
        assert outcome.version == number + 1
        held = {path for path, rows in before.items()
                if any(tuple(dict(zip(("region", "id"), row))[k] for k in keys) in applied for row in rows)}
        assert set(before) - set(after) == held, "exactly the files holding a replaced or deleted row rewritten"
        assert outcome.metrics["num_target_files_removed"] == len(held) <= outcome.metrics["num_target_files_scanned"]
        assert outcome.metrics["num_target_files_scanned"] < len(before), "files no changed key can be in not read"
        assert outcome.metrics["num_target_files_added"] == len(set(after) - set(before))
        if not logs_deletes:
            local = tables.merge_changes(in_process, TABLE, changes, kind, metadata={"batch": number})
            rows_in_process = tables.read_table(in_process, TABLE).to_pylist()
            assert Counter(tuple(row[c] for c in COLUMNS) for row in rows_in_process) == reference.all_rows()
            assert {k: local.metrics[k] for k in COUNTED} == counts
            if number == 0:  # the same files (later, the inserts of each bucket are files of their own)
                assert local.metrics["num_target_files_scanned"] == outcome.metrics["num_target_files_scanned"]
    if logs_deletes:
        logged = DeltaTable(change_log).to_pyarrow_table().to_pylist()
        assert reference.deleted_at is not None
        assert {(r["region"], r["id"]) for r in logged if r["seq"] is not None} == set(reference.deleted_at)


def key_values(key_type: pa.DataType) -> Callable[[int], Any]:
    """The `n`-th of a sorted run of key values of `key_type`."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return {pa.int64(): lambda n: 10 * n, pa.string(): lambda n: f"key-{n:03d}",
            pa.timestamp("us", tz="UTC"): lambda n: start + dt.timedelta(hours=n),
            pa.date32(): lambda n: start.date() + dt.timedelta(days=n),
            pa.decimal128(10, 2): lambda n: Decimal(n) + Decimal("0.25")}[key_type]


@pytest.mark.parametrize("key_type", [pa.int64(), pa.string(), pa.timestamp("us", tz="UTC"), pa.date32(),
                                      pa.decimal128(10, 2)], ids=str)
def test_files_no_changed_key_can_be_in_are_neither_read_nor_rewritten(tmp_path: Path, key_type: pa.DataType) -> None:
    """Three files of keys 0 1 3 | 4 5 7 | 8 9 11; an update of 5, and inserts of 2 (inside the first file's bounds)
    and 12 (outside every file's): the first two files are read, the second alone rewritten, the third left alone."""
    value = key_values(key_type)
    tables, uri = IcebergTables(str(tmp_path)), f"{tmp_path}/silver/t"

    def rows(numbers: list[int], label: str, seq: int) -> pa.Table:
        return pa.table({"k": pa.array([value(n) for n in numbers], key_type), "v": [label] * len(numbers),
                         "seq": pa.array([seq] * len(numbers), pa.int64())})

    new_table(tables, uri, [rows([0, 1, 3], "first", 1), rows([4, 5, 7], "first", 1), rows([8, 9, 11], "first", 1)])
    before = {path: {key for (key,) in keys} for path, keys in data_files(tables, uri, ("k",)).items()}
    changes = pa.concat_tables([rows([5], "updated", 2), rows([2, 12], "inserted", 2)])
    outcome = tables.merge_staged(uri, TABLE, stage(tmp_path / "staging", changes), Merge(keys=["k"], sequence_by="seq"),
                                  metadata={}, storage=StorageSettings())
    assert {k: outcome.metrics[k] for k in (*COUNTED, "num_target_files_scanned", "num_target_files_removed")} == {
        "num_source_rows": 3, "num_target_rows_inserted": 2, "num_target_rows_updated": 1,
        "num_target_rows_deleted": 0, "num_target_files_scanned": 2, "num_target_files_removed": 1}
    after = data_files(tables, uri, ("k",))
    assert [before[path] for path in set(before) - set(after)] == [{value(n) for n in (4, 5, 7)}]
    stored = {row["k"]: row["v"] for row in tables.read_table(uri, TABLE).to_pylist()}
    assert stored == {value(n): "first" for n in (0, 1, 3, 4, 7, 8, 9, 11)} | {
        value(5): "updated", value(2): "inserted", value(12): "inserted"}


def test_the_driver_guard_refuses_a_merge_that_reads_rows_here(tmp_path: Path) -> None:
    """The guard of the tests above has teeth: a merge of changes in memory reads the table's rows in this process."""
    tables, uri = IcebergTables(str(tmp_path)), f"{tmp_path}/silver/t"
    new_table(tables, uri, [pa.Table.from_pylist(rows) for rows in first_rows()])
    changes = pa.Table.from_pylist([{"region": "a", "id": 1, "v": "x", "seq": 20, "op": "u"}], schema=CHANGES)
    kind = Merge(keys=["id"], sequence_by="seq", except_columns=["op"])
    with no_rows_read_here(), pytest.raises(AssertionError, match="rows read in the driver"):
        tables.merge_changes(uri, TABLE, changes, kind, metadata={})
    assert tables.latest_version(uri) == 0
    assert tables.merge_changes(uri, TABLE, changes, kind, metadata={}).metrics["num_target_rows_updated"] == 1


def test_a_staged_merge_adds_the_columns_its_changes_bring(tmp_path: Path) -> None:
    tables, uri = IcebergTables(str(tmp_path)), f"{tmp_path}/silver/t"
    new_table(tables, uri, [pa.Table.from_pylist(rows) for rows in first_rows()])
    changes = pa.table({"id": pa.array([1, 200], pa.int64()), "seq": pa.array([20, 1], pa.int64()),
                        "note": ["updated", "inserted"]})
    with no_rows_read_here():
        outcome = tables.merge_staged(uri, TABLE, stage(tmp_path / "staging", changes), Merge(keys=["id"],
                                      sequence_by="seq"), metadata={}, storage=StorageSettings())
    assert (outcome.metrics["num_target_rows_updated"], outcome.metrics["num_target_rows_inserted"]) == (1, 1)
    assert tables.schema(uri, TABLE).names == [*COLUMNS, "note"]
    stored = {row["id"]: row for row in tables.read_table(uri, TABLE).to_pylist()}
    assert stored[1] == {"region": None, "id": 1, "v": None, "seq": 20, "note": "updated"}
    assert stored[200]["note"] == "inserted" and stored[2] == {"region": "a", "id": 2, "v": "first", "seq": 10,
                                                              "note": None}


def test_scd2_on_iceberg_in_tasks_keeps_the_history_scd2_on_delta_keeps(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The same staged batches (late and out-of-order changes, deletes, keys coming back) kept as history on Delta
    and on Iceberg, every step in Ray tasks and no row read in this process: the same outcomes and history."""
    monkeypatch.setattr(scd2, "SPLIT_BYTES", 1500)
    monkeypatch.setattr(iceberg_merge, "SPLIT_BYTES", 1500)
    rng = random.Random(3)
    events = [(rng.randrange(30), rng.choice(["US", "FR", None]), rng.choice("abc"), seq,
               rng.choice(["c", "u", "u", "d"])) for seq in range(180)]
    rng.shuffle(events)
    batches = [history_changes(*events[start:start + 60]) for start in range(0, len(events), 60)]
    outcomes: dict[str, list[scd2.HistoryOutcome]] = {}
    for table_format in ("delta", "iceberg"):
        root = tmp_path / table_format
        store = TableFormats(settings_at(root)).store(table_format)
        log = Layout.at(str(root)).changes("gold.dim")
        for number, batch in enumerate([*batches, batches[-1]]):
            staged = stage(root / "staging" / str(number), batch)
            with no_rows_read_here():
                outcomes.setdefault(table_format, []).append(scd2.apply_changes(
                    dim(root), log, "gold.dim", staged, HISTORY, store=store, metadata={"batch": number},
                    scratch=str(root / "staging" / str(number) / "history")))
    assert outcomes["iceberg"] == outcomes["delta"]
    assert outcomes["iceberg"][-1] == scd2.HistoryOutcome(None, 0, 0, 0), "a replayed batch changes nothing"
    assert [o.changes_logged for o in outcomes["iceberg"][:-1]] == [batch.num_rows for batch in batches]
    assert history(tmp_path / "iceberg", "iceberg") == history(tmp_path / "delta", "delta")


def test_a_merge_that_loses_its_commit_is_planned_again_and_leaves_no_stray_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer appends while the merge's tasks rewrite: the catalog refuses the merge's commit, the files of
    that attempt are deleted, and the merge is planned again on the new snapshot."""
    from pyiceberg.table import Transaction as IcebergTransaction

    tables, uri = IcebergTables(str(tmp_path)), f"{tmp_path}/silver/t"
    new_table(tables, uri, [pa.Table.from_pylist(rows) for rows in first_rows()])
    writer = RollingParquetWriter(uri, StorageSettings(), "other")
    writer.write(to_storage(pa.Table.from_pylist([{"region": "e", "id": 500, "v": "other", "seq": 1}])))
    other = writer.close()
    original, commits = IcebergTransaction.commit_transaction, []

    def commit(self: IcebergTransaction) -> Any:
        if not commits:
            commits.append("raced")
            tables.commit_files(uri, other, mode="append", metadata={"writer": "other"})
        commits.append("merge")
        return original(self)

    monkeypatch.setattr(IcebergTransaction, "commit_transaction", commit)
    changes = pa.Table.from_pylist([{"region": "a", "id": 1, "v": "new", "seq": 20, "op": "u"},
                                    {"region": "a", "id": 2, "v": None, "seq": 20, "op": "d"},
                                    {"region": "e", "id": 600, "v": "new", "seq": 1, "op": "c"}], schema=CHANGES)
    kind = Merge(keys=["id"], sequence_by="seq", delete_when="op = 'd'", except_columns=["op"])
    outcome = tables.merge_staged(uri, TABLE, stage(tmp_path / "staging", changes), kind, metadata={},
                                  storage=StorageSettings())
    assert commits == ["raced", "merge", "merge", "merge"], "the other writer's commit, the lost one, the second"
    assert outcome.version == 2
    assert {k: outcome.metrics[k] for k in COUNTED} == {"num_source_rows": 3, "num_target_rows_inserted": 1,
                                                        "num_target_rows_updated": 1, "num_target_rows_deleted": 1}
    stored = {row["id"]: row["v"] for row in tables.read_table(uri, TABLE).to_pylist()}
    assert (len(stored), stored[1], stored[500], stored[600]) == (101, "new", "other", "new") and 2 not in stored
    loaded = tables.open_table(uri, TABLE)
    referenced = {task.file.file_path.removeprefix("file://") for snapshot in loaded.snapshots()
                  for task in loaded.scan(snapshot_id=snapshot.snapshot_id).plan_files()}
    assert {str(path) for path in Path(uri).rglob("*.parquet")} == referenced


def test_changes_that_do_not_fit_the_table_fail_the_merge_and_leave_it_alone(tmp_path: Path) -> None:
    tables, uri = IcebergTables(str(tmp_path)), f"{tmp_path}/silver/t"
    new_table(tables, uri, [pa.Table.from_pylist(rows) for rows in first_rows()])
    changes = pa.table({"id": pa.array([1]), "seq": pa.array(["not a number"])})
    with pytest.raises(TableFailed, match="the Iceberg commit cannot be built"):
        tables.merge_staged(uri, TABLE, stage(tmp_path / "staging", changes), Merge(keys=["id"], sequence_by="seq"),
                            metadata={}, storage=StorageSettings())
    assert tables.latest_version(uri) == 0
    assert len(list(Path(uri).rglob("*.parquet"))) == 4
