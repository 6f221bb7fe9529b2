"""Hostile landing files through the runner: byte-order marks, files that are not UTF-8, files that grow."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake

from engine import FileSource, Pipeline, Runner
from engine.capacity import measure_backlog
from engine.columns import RAW_FILE, REJECTED_REASON, RUN_ID, SOURCE_FILE
from engine.ingest.checkpoint import ingestion_checkpoint
from engine.ingest.discovery import discover
from engine.layout import Layout
from engine.tables import formats
from tests.conftest import settings_at
from tests.engine.tables.test_log_cleanup import clean_up_log

pytestmark = pytest.mark.usefixtures("ray_local")


def pipeline_of(source: FileSource) -> Pipeline:
    pipeline = Pipeline("landing")
    pipeline.ingest("bronze.items", source)
    return pipeline


def land(root: Path, name: str, content: bytes) -> Path:
    path = root / "landing" / "items" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def grow(path: Path, content: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(content)


def bronze(root: Path) -> pa.Table:
    table = DeltaTable(Layout.at(str(root)).table("bronze.items")).to_pyarrow_table()
    return table.sort_by([(SOURCE_FILE, "ascending"), ("id", "ascending")]) if "id" in table.column_names else table


class Killed(BaseException):
    """The process dying."""


def killed_before_the_bronze_commit(runner: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `runner` as a process that dies when it commits a layer table, after staging (and quarantining)."""
    def die(*args: object, **kwargs: object) -> None:
        raise Killed

    with monkeypatch.context() as patched:
        patched.setattr(formats.DeltaStore, "commit_files", die)
        with pytest.raises(Killed):
            runner.run()


def quarantine(root: Path) -> pa.Table:
    return DeltaTable(Layout.at(str(root)).quarantine("bronze.items")).to_pyarrow_table().sort_by(SOURCE_FILE)


def test_a_csv_with_a_byte_order_mark_ingests_like_one_without(tmp_path: Path) -> None:
    land(tmp_path, "a.csv", b"\xef\xbb\xbfyear,n\n2024,007\n")
    land(tmp_path, "b.csv", b"year,n\n2025,008\n")
    settings, pipeline = settings_at(tmp_path), pipeline_of(FileSource("items", "csv"))
    assert Runner(pipeline, settings).run().succeeded
    land(tmp_path, "c.csv", b"\xef\xbb\xbfyear,n\n2026,009\n")
    result = Runner(pipeline, settings).run()
    assert result.succeeded, [r.error for r in result.records]
    table = DeltaTable(Layout.at(str(tmp_path)).table("bronze.items")).to_pyarrow_table().sort_by(SOURCE_FILE)
    assert [c for c in table.column_names if not c.startswith("_")] == ["year", "n"]
    assert table.schema.field("year").type == pa.string()
    assert table.select(["year", "n"]).to_pylist() == [{"year": "2024", "n": "007"}, {"year": "2025", "n": "008"},
                                                       {"year": "2026", "n": "009"}]


def test_files_that_are_not_utf8_are_quarantined_whole_once_and_the_others_ingested(tmp_path: Path) -> None:
    good = b'{"id": 1, "name": "a"}\n{"id": 2, "name": "b", "name": "c"}\n'
    zipped = gzip.compress(b'{"id": 3}\n', mtime=0)
    cut = '{"id": 4, "name": "é'.encode()[:-1]
    paths = [land(tmp_path, "a.jsonl", good), land(tmp_path, "b.jsonl", zipped), land(tmp_path, "c.jsonl", cut)]
    settings, pipeline = settings_at(tmp_path), pipeline_of(FileSource("items", "jsonl"))
    [record] = Runner(pipeline, settings).run().records
    assert record.status == "succeeded"
    assert [entry.split(":")[0] for entry in record.details["files_quarantined"]] == ["b.jsonl", "c.jsonl"]
    assert record.rows_quarantined == 2
    rows = bronze(tmp_path)
    assert rows.column("id").to_pylist() == ["1", None]
    assert rows.column("_rescued_data").to_pylist() == [None, '{"id": 2, "name": "b", "name": "c"}']
    held = quarantine(tmp_path)
    assert held.column(SOURCE_FILE).to_pylist() == ["b.jsonl", "c.jsonl"]
    assert held.column(RAW_FILE).to_pylist() == [zipped, cut]
    assert all("not valid UTF-8" in reason for reason in held.column(REJECTED_REASON).to_pylist())
    assert set(held.column(RUN_ID).to_pylist()) == {record.run_id}
    assert [p.read_bytes() for p in paths] == [good, zipped, cut]

    [again] = Runner(pipeline, settings).run().records
    assert again.status == "unchanged"
    assert quarantine(tmp_path).num_rows == 2


def test_a_run_killed_after_quarantining_a_file_does_not_quarantine_it_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    land(tmp_path, "a.jsonl", b'{"id": 1}\n')
    land(tmp_path, "b.jsonl", gzip.compress(b'{"id": 2}\n', mtime=0))
    settings, pipeline = settings_at(tmp_path), pipeline_of(FileSource("items", "jsonl"))
    killed_before_the_bronze_commit(Runner(pipeline, settings), monkeypatch)
    assert quarantine(tmp_path).num_rows == 1
    [record] = Runner(pipeline, settings).run().records
    assert record.details["files_quarantined"][0].startswith("b.jsonl: ")
    assert quarantine(tmp_path).column(SOURCE_FILE).to_pylist() == ["b.jsonl"]
    assert bronze(tmp_path).column("id").to_pylist() == ["1"]


def test_failing_on_files_that_are_not_utf8_names_every_one(tmp_path: Path) -> None:
    land(tmp_path, "a.csv", b"id\n1\n")
    land(tmp_path, "b.csv", "id\n2\n".encode("utf-16"))
    land(tmp_path, "c.csv", b"id\n\xff\n")
    result = Runner(pipeline_of(FileSource("items", "csv", on_unreadable="fail")), settings_at(tmp_path)).run()
    [record] = result.records
    assert record.status == "failed"
    assert "\n" not in record.error
    assert "b.csv" in record.error and "c.csv" in record.error and "a.csv" not in record.error
    assert not DeltaTable.is_deltatable(Layout.at(str(tmp_path)).table("bronze.items"))


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_append_only_file_ingests_each_complete_line_once_as_it_grows(tmp_path: Path, fmt: str) -> None:
    def line(n: int) -> bytes:
        return f'{{"id": "{n}", "v": "x{n}"}}\n'.encode() if fmt == "jsonl" else f"{n},x{n}\n".encode()

    path = land(tmp_path, f"a.{fmt}", (b"" if fmt == "jsonl" else b"id,v\n") + line(1) + line(2) + line(3)[:4])
    settings, pipeline = settings_at(tmp_path), pipeline_of(FileSource("items", fmt, growth="append-only"))
    assert Runner(pipeline, settings).run().succeeded
    assert bronze(tmp_path).column("id").to_pylist() == ["1", "2"]
    grow(path, line(3)[4:] + line(4))
    waiting = measure_backlog(pipeline, Layout.at(str(tmp_path)))
    assert waiting.landing_bytes == len(line(3) + line(4))
    [record] = Runner(pipeline, settings).run().records
    assert record.details["files_grown"] == [f"a.{fmt}"]
    assert record.rows_written == 2
    grow(path, line(5))
    assert Runner(pipeline, settings).run().succeeded
    [unchanged] = Runner(pipeline, settings).run().records
    assert unchanged.status == "unchanged"
    rows = bronze(tmp_path)
    assert rows.select(["id", "v"]).to_pylist() == [{"id": str(n), "v": f"x{n}"} for n in range(1, 6)]


def test_a_growth_staged_but_never_committed_is_ingested_once_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = land(tmp_path, "a.jsonl", b'{"id": 1}\n')
    settings, pipeline = settings_at(tmp_path), pipeline_of(FileSource("items", "jsonl", growth="append-only"))
    assert Runner(pipeline, settings).run().succeeded
    grow(path, b'{"id": 2}\n')
    killed_before_the_bronze_commit(Runner(pipeline, settings), monkeypatch)
    assert Runner(pipeline, settings).run().succeeded
    assert bronze(tmp_path).column("id").to_pylist() == ["1", "2"]


def test_an_immutable_file_that_changed_fails_the_table_when_declared_so(tmp_path: Path) -> None:
    path = land(tmp_path, "a.jsonl", b'{"id": 1}\n')
    settings = settings_at(tmp_path)
    assert Runner(pipeline_of(FileSource("items", "jsonl")), settings).run().succeeded
    grow(path, b'{"id": 2}\n')
    [warned] = Runner(pipeline_of(FileSource("items", "jsonl")), settings).run().records
    assert (warned.status, warned.details["files_changed_after_ingestion"]) == ("unchanged", ["a.jsonl"])
    [failed] = Runner(pipeline_of(FileSource("items", "jsonl", on_change="fail")), settings).run().records
    assert failed.status == "failed"
    assert "a.jsonl" in failed.error and "append-only" in failed.error and "\n" not in failed.error
    assert bronze(tmp_path).column("id").to_pylist() == ["1"]


def test_an_append_only_file_grows_from_where_it_ended_after_the_log_is_cleaned_up(tmp_path: Path) -> None:
    path = land(tmp_path, "a.jsonl", b'{"id": 1}\n{"id"')
    settings, pipeline = settings_at(tmp_path), pipeline_of(FileSource("items", "jsonl", growth="append-only"))
    assert Runner(pipeline, settings).run().succeeded
    clean_up_log(Layout.at(str(tmp_path)).table("bronze.items"))
    grow(path, b': 2}\n')
    [record] = Runner(pipeline, settings).run().records
    assert (record.status, record.rows_written) == ("succeeded", 1)
    assert bronze(tmp_path).column("id").to_pylist() == ["1", "2"]


def test_a_checkpoint_without_the_ingested_end_counts_the_whole_file_as_ingested(tmp_path: Path) -> None:
    path = land(tmp_path, "a.jsonl", b'{"id": 1}\n')
    settings, pipeline = settings_at(tmp_path), pipeline_of(FileSource("items", "jsonl", growth="append-only"))
    [file] = discover(str(path.parent), FileSource("items", "jsonl"))
    uri = Layout.at(str(tmp_path)).table("bronze.items")
    write_deltalake(uri, pa.table({"id": ["1"], SOURCE_FILE: ["a.jsonl"]}),
                    commit_properties=CommitProperties(custom_metadata={"medallion.files": json.dumps(
                        [file.fingerprint()[:3]])}))
    assert ingestion_checkpoint(uri, "bronze.items", ["a.jsonl"])["a.jsonl"][1] == file.size
    grow(path, b'{"id": 2}\n')
    [record] = Runner(pipeline, settings).run().records
    assert (record.status, record.rows_written) == ("succeeded", 1)
    assert bronze(tmp_path).column("id").to_pylist() == ["1", "2"]
