"""GDPR erasure over a private retail build: nothing of the subject is left anywhere under the root."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cli.main import main
from engine.governance.erase import subject_hash
from engine.layout import Layout
from engine.runlog import read_records
from engine.runner import Runner
from tests.conftest import RetailBuild, settings_at
from tests.engine.scan import findings
from tests.features.conftest import REPO, RETAIL_END

REASON = "ticket GDPR-1234"


def _landing_customers(root: Path) -> pl.DataFrame:
    lines = [json.loads(line) for file in sorted((root / "landing" / "customers").glob("*.jsonl"))
             for line in file.read_text().splitlines() if line.strip().startswith("{")]
    frame = pl.DataFrame(lines, infer_schema_length=None).with_columns(
        pl.col("customer_id").cast(pl.Utf8).str.strip_chars().alias("customer_id"),
        pl.col("email").str.strip_chars().str.to_lowercase())
    return frame


def _pick_subject(root: Path) -> tuple[str, list[str], tuple[str, str]]:
    """A customer with orders, sessions and online features, whose name is no other customer's."""
    customers = _landing_customers(root).filter(pl.col("first_name").is_not_null())
    pairs = customers.select("customer_id", "first_name", "last_name").unique()
    unique = pairs.group_by("first_name", "last_name").agg(pl.col("customer_id").n_unique().alias("n")) \
        .filter(pl.col("n") == 1).join(pairs, on=["first_name", "last_name"])
    active = set(pl.from_arrow(DeltaTable(Layout.at(str(root)).table("gold.customer_features")).to_pyarrow_table(
        columns=["customer_id"]))["customer_id"].unique().to_list())
    current = set(pl.from_arrow(DeltaTable(Layout.at(str(root)).table("silver.customers")).to_pyarrow_table(
        columns=["customer_id"]))["customer_id"].to_list())
    for row in unique.sort("customer_id").iter_rows(named=True):
        if int(row["customer_id"]) in active & current:
            emails = customers.filter(pl.col("customer_id") == row["customer_id"])["email"].drop_nulls().unique()
            return row["customer_id"], emails.to_list(), (row["first_name"], row["last_name"])
    raise AssertionError("no customer fits")


def _rows(root: Path, table: str, customer: int) -> pl.DataFrame:
    frame = pl.from_arrow(DeltaTable(Layout.at(str(root)).table(table)).to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame.filter(pl.col("customer_id") == customer).sort(pl.all())


@pytest.fixture(scope="module")
def built(retail_build: RetailBuild, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the session's retail root (run once), with the feature repository applied and
    materialized."""
    from engine.features.materialize import materialize
    from engine.features.repo import apply_repo, load_definitions, open_store

    root = tmp_path_factory.mktemp("erase") / "root"
    shutil.copytree(retail_build.root, root)
    store = open_store(str(root), REPO)
    apply_repo(store, load_definitions(REPO))
    materialize(store, end=RETAIL_END)
    return root


def test_erasure_leaves_nothing_of_the_subject_and_keeps_everyone_else(built: Path) -> None:
    from engine.features.repo import open_store
    from pipelines.retail.pipeline import retail

    root = built
    subject, emails, person = _pick_subject(root)
    assert emails and findings(root, emails, ("customer_id", subject), person), "the subject is there before"
    other = next(c for c in _landing_customers(root)["customer_id"].unique().sort().to_list()
                 if c != subject and _rows(root, "gold.customer_features", int(c)).height)
    kept = {t: _rows(root, t, int(other)) for t in ("silver.customers", "gold.customer_features", "silver.orders")}

    result = CliRunner().invoke(main, ["--root", str(root), "erase", "--customer-id", subject, "--reason", REASON])
    assert result.exit_code == 0, result.output

    assert findings(root, emails, ("customer_id", subject), person) == []
    online = open_store(str(root), REPO).get_online_features(
        features=["customer_features:order_count_30d"], entity_rows=[{"customer_id": int(subject)},
                                                                     {"customer_id": int(other)}]).to_dict()
    assert online["order_count_30d"][0] is None and online["order_count_30d"][1] is not None
    for table, rows in kept.items():
        assert _rows(root, table, int(other)).equals(rows), table

    erasures = read_records(Layout.at(str(root)).runs()).filter(pl.col("operation") == "erase")
    assert erasures.height > 0 and set(erasures["reason"]) == {REASON}
    token = subject_hash(settings_at(root), subject)
    assert token.startswith("v1:") and len(token) == 35
    assert all(json.loads(d) == {"subject": token, "rows_removed": json.loads(d)["rows_removed"],
                                 "files_deleted": json.loads(d)["files_deleted"]} for d in erasures["details"])
    commit = DeltaTable(Layout.at(str(root)).table("silver.customers")).history(1)[0]
    assert (commit["medallion.operation"], commit["medallion.reason"], commit["medallion.subject"]) == (
        "erase", REASON, token)

    rerun = Runner(retail, settings_at(root)).run(select="bronze.* silver.customers silver.orders silver.events "
                                                        "gold.dim_customer")
    assert rerun.succeeded
    assert not any(r.details.get("files_changed_after_ingestion") for r in rerun.records)
    assert findings(root, emails, ("customer_id", subject), person) == []


def test_erasure_rewrites_checkpoints_and_keeps_history(ray_local: None, tmp_path: Path) -> None:
    from deltalake import write_deltalake

    from engine.governance.erase import Target, erase_table
    from engine.governance.subject import SubjectId

    uri = str(tmp_path / "silver" / "people")
    for start in (1, 4, 7):
        ids = list(range(start, start + 3))
        write_deltalake(uri, pa.table({"customer_id": ids, "email": [f"person{i}@x.test" for i in ids]}),
                        mode="append")
    DeltaTable(uri).create_checkpoint()
    write_deltalake(uri, pa.table({"customer_id": [10], "email": ["person10@x.test"]}), mode="append")
    before = DeltaTable(uri).history()

    erased = erase_table(Target("silver.people", uri, "customer_id", "test"), SubjectId(4), settings_at(tmp_path),
                         "erase-run", {"operation": "erase"})

    assert erased is not None and (erased.rows_removed, erased.files_deleted) == (1, 1)
    assert findings(tmp_path, ["person4@x.test"], ("customer_id", "4")) == []
    table = DeltaTable(uri)
    assert sorted(table.to_pyarrow_table().column("customer_id").to_pylist()) == [1, 2, 3, 5, 6, 7, 8, 9, 10]
    assert len(table.history()) == len(before) + 1
    assert [p.name for p in (Path(uri) / "_delta_log").glob("*.checkpoint.parquet")] == [
        f"{table.version():020d}.checkpoint.parquet"]


SPELLED = st.builds(lambda sign, zeros, pad: f"{pad}{sign}{'0' * zeros}4{pad[::-1]}",
                    st.sampled_from(["", "+"]), st.integers(0, 3), st.sampled_from(["", " ", "\t", " \u00a0"]))
TEXTS = st.one_of(SPELLED, st.text(alphabet="04+-. x\t\u0664e_", max_size=6))


@given(st.lists(TEXTS, min_size=1, max_size=20))
@settings(max_examples=200, deadline=None)
def test_erasure_matches_an_id_exactly_where_silver_parses_it_to_the_subject(texts: list[str]) -> None:
    """Erasure removes a person for good: a value is the subject for erasure exactly when the silver
    cleaner keys it as the subject (`"004"`, `" +4 "`, never `"4.0"`, `"-4"` or `"40"`)."""
    from engine.governance.subject import SubjectId
    from pipelines.retail.transforms import clean_customers

    bronze = pa.table({"customer_id": pa.array(texts, pa.string()), "updated_at": ["2026-01-01T00:00:00Z"] * len(texts),
                       "op": ["c"] * len(texts), "_source_file": ["a.jsonl"] * len(texts),
                       "_ingested_at": pa.array([None] * len(texts), pa.timestamp("us", tz="UTC"))})
    silver = clean_customers(bronze).column("customer_id").to_pylist()
    assert SubjectId.parse(" 004 ", integer=True).matches(bronze.column("customer_id")).to_pylist() == [
        value == 4 for value in silver]


def test_landing_records_of_an_id_spelled_differently_are_erased_and_other_lines_kept(tmp_path: Path) -> None:
    """Erasure removes a person for good: landing records whose id is `"004"`, `" 4"`, `+4` or the JSON number
    4 go, in JSON lines and in CSV; `"4.0"`, `40` and everyone else stay byte for byte."""
    from engine.governance.landing import erase_from_landing
    from engine.governance.subject import SubjectId
    from engine.ingest.sources import FileSource

    subject = SubjectId.parse("4", integer=True)
    gone = ['{"customer_id": "004", "email": "a@x.test"}', '{"customer_id": " 4", "email": "b@x.test"}',
            '{"customer_id": 4, "email": "c@x.test"}', '{"customer_id": "+4", "email": "d@x.test"}']
    kept = ['{"customer_id": "4.0", "email": "e@x.test"}', '{"customer_id": 40, "email": "f@x.test"}',
            '{"email": "g@x.test"}', "not json at all"]
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "jsonl" / "a.jsonl").write_text("\n".join([kept[0], *gone[:2], kept[1], *gone[2:], *kept[2:]]) + "\n")
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "a.csv").write_text('customer_id,email\n004,h@x.test\n" 4",i@x.test\n+4,j@x.test\n'
                                            "41,k@x.test\n04.0,l@x.test\n")

    jsonl = erase_from_landing(str(tmp_path / "jsonl"), FileSource("jsonl", "jsonl"), "customer_id", subject)
    csv = erase_from_landing(str(tmp_path / "csv"), FileSource("csv", "csv"), "customer_id", subject)

    assert [r.records_removed for r in jsonl + csv] == [4, 3]
    assert (tmp_path / "jsonl" / "a.jsonl").read_text() == "\n".join([kept[0], kept[1], *kept[2:]]) + "\n"
    assert (tmp_path / "csv" / "a.csv").read_text() == "customer_id,email\n41,k@x.test\n04.0,l@x.test\n"


def test_change_detection_across_an_erasure_recomputes_in_full(ray_local: None, tmp_path: Path) -> None:
    """The next run rebuilds on its own after an erase: changed keys across an erasure (whose files are
    deleted) are unknown, so a key-recomputed table is rebuilt in full instead of failing on a missing
    file; an incremental reader sees through the erasure and gets only the rows appended since."""
    from deltalake import write_deltalake

    from engine.governance.erase import Target, erase_table
    from engine.governance.subject import SubjectId
    from engine.tables import delta

    uri = str(tmp_path / "silver" / "people")
    for ids in ([1, 4], [5, 6]):
        write_deltalake(uri, pa.table({"customer_id": ids, "email": [f"p{i}@x.test" for i in ids]}), mode="append")
    assert sorted(delta.changed_keys(uri, "people", 0, 1, ["customer_id"]).column(0).to_pylist()) == [5, 6]
    erased = erase_table(Target("silver.people", uri, "customer_id", "test"), SubjectId(4), settings_at(tmp_path),
                         "erase-run", {"operation": "erase"})
    assert erased is not None and erased.version == 2
    write_deltalake(uri, pa.table({"customer_id": [7], "email": ["p7@x.test"]}), mode="append")

    assert delta.changed_keys(uri, "people", 1, 3, ["customer_id"]) is None
    assert delta.changed_keys(uri, "people", 2, 3, ["customer_id"]).column(0).to_pylist() == [7]
    added = delta.read_added_files(uri, "people", 1, 3)
    assert added is not None and added[1] == 1
    assert added[0].take_all() == [{"customer_id": 7, "email": "p7@x.test"}]


def test_a_rejected_row_is_recorded_once_however_often_it_is_rejected(ray_local: None, tmp_path: Path) -> None:
    """The next run rebuilds on its own after a restore or erase: rejected rows the quarantine already holds
    (whatever run rejected them) are not recorded again; new rows and extra copies are."""
    from deltalake import write_deltalake

    from engine.config import StorageSettings
    from engine.tables.files import RollingParquetWriter
    from engine.tables.quarantine import unrecorded

    uri = str(tmp_path / "quarantine" / "people")
    rows = {"customer_id": [1, 2, 2], "_source_file": ["a.jsonl"] * 3, "_rejected_reason": ["bad"] * 3}
    write_deltalake(uri, pa.table(rows | {"_run_id": ["first"] * 3}), mode="append")
    again = pa.table({"customer_id": [1, 2, 2, 2, 3], "_source_file": ["a.jsonl"] * 5,
                      "_rejected_reason": ["bad"] * 5, "_run_id": ["second"] * 5})
    writer = RollingParquetWriter(uri, StorageSettings(), "second")
    writer.write(again)
    staged = writer.close()

    kept = unrecorded(uri, staged, StorageSettings(), "second", frozenset())
    assert sorted(r["customer_id"] for f in kept for r in pl.read_parquet(f"{uri}/{f.path}").to_dicts()) == [2, 3]
    assert unrecorded(uri, [], StorageSettings(), "third", frozenset()) == []
    assert sorted(p.name for p in Path(uri).glob("*.parquet") if "second" in p.name) == sorted(
        Path(f.path).name for f in kept)
