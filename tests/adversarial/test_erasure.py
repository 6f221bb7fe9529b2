"""Attacks on two promises: erasure removes a person for good, and the next run rebuilds on its own after a
restore or an erasure. The operator erases a customer whose id the source spells several ways, runs,
lets the customer come back, erases and runs again, and tries restores across the erasure."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable
from polars.testing import assert_frame_equal

from engine.cli.main import main
from engine.governance.erase import erase_subject, subject_hash
from engine.layout import Layout
from engine.runlog import read_records
from engine.runner import Runner, RunResult
from tests.conftest import RetailBuild, settings_at
from tests.engine.governance.test_erase import _pick_subject
from tests.engine.scan import findings

pytestmark = [pytest.mark.adversarial]

SUBJECT_TABLES = ("silver.customers", "silver.orders", "silver.events", "gold.dim_customer", "gold.fct_order_lines",
                  "gold.customer_daily", "gold.customer_features")
REBUILT_TABLES = (*SUBJECT_TABLES, "silver.order_items", "gold.dim_product")
QUARANTINES = ("silver.customers", "silver.orders", "silver.events", "silver.order_items", "gold.dim_customer")


def _spellings(subject: int) -> list[str]:
    """The subject's id as a hostile source writes it: every one parses to the subject in silver."""
    return [f"00{subject}", f" {subject}", f"+{subject}", f" 0{subject} ", f"+00{subject}"]


@dataclass(frozen=True)
class Spelled:
    """A retail root whose second delivery names the subject only through ids spelled differently.

    Attributes:
        root: the storage root, run twice.
        subject: the customer's id as silver keys it.
        emails: the customer's email addresses in the landing data.
        person: the customer's first and last name.
    """

    root: Path
    subject: int
    emails: list[str]
    person: tuple[str, str]


@dataclass(frozen=True)
class Erased:
    """A copy of the spelled root after `medallion erase` with yet another spelling and the next run.

    Attributes:
        spelled: the root it was copied from, as it was.
        root: the erased root.
        run_id: the erasure's run id.
        quarantined: rows of each quarantine right after the erasure.
        result: the run after the erasure.
    """

    spelled: Spelled
    root: Path
    run_id: str
    quarantined: dict[str, int]
    result: RunResult


def _frame(root: Path, table: str) -> pl.DataFrame:
    frame = pl.from_arrow(DeltaTable(Layout.at(str(root)).table(table)).to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame


def _quarantine(root: Path, table: str) -> pl.DataFrame:
    frame = pl.from_arrow(DeltaTable(Layout.at(str(root)).quarantine(table)).to_pyarrow_table())
    assert isinstance(frame, pl.DataFrame)
    return frame


def _business(frame: pl.DataFrame) -> pl.DataFrame:
    """The frame without the lineage columns a run stamps (ingestion time, run id), rows in a fixed order."""
    kept = frame.select([c for c in frame.columns if c not in ("_ingested_at", "_run_id")])
    return kept.sort(pl.all(), nulls_last=True)


def _assert_same(left: pl.DataFrame, right: pl.DataFrame, table: str) -> None:
    """The same rows (floats up to rounding), or an assertion naming the table."""
    try:
        assert_frame_equal(_business(left), _business(right), check_exact=False, check_column_order=False)
    except AssertionError as err:
        raise AssertionError(f"`{table}` differs: {err}") from None


def _subject_orders(spelled: Spelled) -> pl.DataFrame:
    """The subject's orders before the erasure."""
    orders = _frame(spelled.root, "silver.orders").filter(pl.col("customer_id") == spelled.subject)
    assert orders.height > 1
    return orders


def _without(frame: pl.DataFrame, orders: pl.DataFrame) -> pl.DataFrame:
    """The rows of `frame` outside the given orders (all of them when it has no order id)."""
    if "order_id" not in frame.columns:
        return frame
    return frame.filter(~pl.col("order_id").is_in(orders["order_id"].to_list()))


def _of_subject(root: Path, table: str, subject: int) -> int:
    return _frame(root, table).filter(pl.col("customer_id") == subject).height


def _write_lines(path: Path, records: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _deliver(landing: Path, subject: int, emails: list[str], person: tuple[str, str], tag: str) -> None:
    """A delivery naming the subject only through spelled ids: a profile update, an order with its lines,
    clickstream events, and an event silver rejects (its time does not parse) that still names the subject."""
    first, last = person
    ids = _spellings(subject)
    _write_lines(landing / "customers" / f"customers-{tag}.jsonl", [
        {"op": "u", "customer_id": ids[0], "email": emails[0], "first_name": first, "last_name": last,
         "country": "FR", "segment": "consumer", "signup_date": "2026-01-02", "updated_at": f"2026-06-0{tag[-1]}T00:00:00Z"}])
    order = 90000 + int(tag)
    _write_lines(landing / "orders" / f"orders-{tag}.jsonl", [
        {"order_id": order, "customer_id": ids[1], "status": "placed", "order_ts": "2026-05-30T10:00:00Z",
         "updated_at": "2026-05-30T10:00:00Z"},
        {"order_id": order, "customer_id": ids[2], "status": "paid", "order_ts": "2026-05-30T10:00:00Z",
         "updated_at": "2026-05-30T10:05:00Z"}])
    (landing / "order_items" / f"order_items-{tag}.csv").write_text(
        "order_id,line_number,product_id,quantity,unit_price,updated_at\n"
        f"{order},1,3,2,30.99,2026-05-30T10:00:00Z\n")
    _write_lines(landing / "events" / f"events-{tag}.jsonl", [
        {"event_id": f"e9{tag}1", "customer_id": subject, "session_id": f"s9{tag}", "event_type": "page_view",
         "event_ts": "2026-05-30T09:58:00Z", "payload": {"page": "/p/3", "product_id": 3}},
        {"event_id": f"e9{tag}2", "customer_id": ids[3], "session_id": f"s9{tag}", "event_type": "search",
         "event_ts": "2026-05-30T09:59:00Z", "payload": {"query": f"{first} {last}"}},
        {"event_id": f"e9{tag}3", "customer_id": ids[4], "session_id": f"s9{tag}", "event_type": "page_view",
         "event_ts": "yesterday", "payload": {"page": f"/account/{emails[0]}"}}])


def _run(root: Path) -> RunResult:
    from pipelines.retail.pipeline import retail

    return Runner(retail, settings_at(root)).run()


def _leftovers(root: Path, spelled: Spelled) -> list[str]:
    """Every place under the root that still holds the subject: an email, the name, or any spelling of the id."""
    hits = findings(root, spelled.emails, ("customer_id", str(spelled.subject)), spelled.person)
    for spelling in _spellings(spelled.subject):
        hits += findings(root, [], ("customer_id", spelling.strip()))
    return hits


@pytest.fixture(scope="module")
def spelled(retail_build: RetailBuild, tmp_path_factory: pytest.TempPathFactory) -> Spelled:
    """A copy of the session's retail build, then a delivery spelling the subject's id five ways, run: silver
    merges them into the subject (checked here, so the erasure below has something to miss)."""
    root = tmp_path_factory.mktemp("spelled") / "root"
    shutil.copytree(retail_build.root, root)
    subject_text, emails, person = _pick_subject(root)
    subject = int(subject_text)
    _deliver(root / "landing", subject, emails, person, "9001")
    result = _run(root)
    assert result.succeeded, [r.error for r in result.failures()]
    customer = _frame(root, "silver.customers").filter(pl.col("customer_id") == subject)
    assert customer["country"].to_list() == ["FR"], "the update spelled `00<id>` reached the subject"
    assert _frame(root, "silver.orders").filter(pl.col("order_id") == 99001)["customer_id"].to_list() == [subject]
    assert _quarantine(root, "silver.events").filter(pl.col("customer_id") == subject).height == 1
    return Spelled(root, subject, emails, person)


@pytest.fixture(scope="module")
def erased(spelled: Spelled, tmp_path_factory: pytest.TempPathFactory) -> Erased:
    """A copy of the spelled root, erased through the CLI with a sixth spelling, then run once."""
    root = tmp_path_factory.mktemp("erased") / "root"
    shutil.copytree(spelled.root, root)
    outcome = CliRunner().invoke(main, ["--root", str(root), "erase", "--customer-id", f"0{spelled.subject}"])
    assert outcome.exit_code == 0, outcome.output
    runs = read_records(Layout.at(str(root)).runs()).filter(pl.col("operation") == "erase")
    quarantined = {t: _quarantine(root, t).height for t in QUARANTINES}
    return Erased(spelled, root, runs["run_id"][0], quarantined, _run(root))


def test_an_id_spelled_differently_in_the_source_is_erased_to_the_last_byte(erased: Erased) -> None:
    """Erasure removes a person for good: every record silver merges into the subject (ids `"004"`, `" 4"`,
    `+4`, the JSON number, a rejected event) is gone from every file under the root after the erasure and
    the next run, the Delta logs, checkpoints, quarantines, change logs and landing files included."""
    spelled = erased.spelled
    assert _leftovers(spelled.root, spelled), "the subject is in the root before the erasure"
    assert erased.result.succeeded, [r.error for r in erased.result.failures()]
    for table in SUBJECT_TABLES:
        assert _of_subject(erased.root, table, spelled.subject) == 0, table
    assert _leftovers(erased.root, spelled) == []
    audited = read_records(Layout.at(str(erased.root)).runs()).filter(pl.col("run_id") == erased.run_id)
    token = subject_hash(settings_at(erased.root), str(spelled.subject))
    assert {json.loads(d)["subject"] for d in audited["details"]} == {token}, "`0<id>` is audited as `<id>`"


def test_the_run_after_an_erasure_equals_a_rebuild_without_the_subject(erased: Erased, tmp_path: Path) -> None:
    """The next run rebuilds on its own after an erasure: with no flag it gives every table, quarantines
    included, the rows a fresh build of the same landing files (now without the subject) gives."""
    records = {r.table: r for r in erased.result.records}
    assert records["gold.customer_daily"].status == "succeeded"
    assert records["gold.customer_daily"].details.get("keys_recomputed") is None, "recomputed in full"
    fresh = tmp_path / "fresh"
    shutil.copytree(erased.root / "landing", fresh / "landing")
    assert _run(fresh).succeeded
    # Order lines carry no customer id, so erasure keeps the lines of the subject's orders (a documented
    # limit): the erased root holds them as accepted, a fresh build rejects them (their order is gone).
    orders = _subject_orders(erased.spelled)
    for table in REBUILT_TABLES:
        _assert_same(_without(_frame(erased.root, table), orders), _without(_frame(fresh, table), orders), table)
    for table in QUARANTINES:
        _assert_same(_without(_quarantine(erased.root, table), orders), _without(_quarantine(fresh, table), orders),
                     f"quarantine.{table}")


def test_quarantines_do_not_grow_after_an_erasure_nor_a_forced_rebuild(erased: Erased, tmp_path: Path) -> None:
    """Erasure removes a person for good and the next run rebuilds on its own: the run after the erasure
    quarantines no row again (the subject's rejected event stays gone), nor does a forced run that reads
    every input in full (it newly rejects only the lines of the subject's orders, whose orders are gone)."""
    after_run = {t: _quarantine(erased.root, t).height for t in QUARANTINES}
    assert after_run == erased.quarantined
    assert _quarantine(erased.root, "silver.events").filter(pl.col("customer_id") == erased.spelled.subject).height == 0
    forced = tmp_path / "forced"
    shutil.copytree(erased.root, forced)
    from pipelines.retail.pipeline import retail

    assert Runner(retail, settings_at(forced)).run(force=True).succeeded
    orders = _subject_orders(erased.spelled)
    for table in QUARANTINES:
        _assert_same(_without(_quarantine(forced, table), orders), _without(_quarantine(erased.root, table), orders),
                     f"quarantine.{table}")


def test_erase_run_erase_again_run_when_the_subject_comes_back(erased: Erased, tmp_path: Path) -> None:
    """Erasure removes a person for good, twice: the customer returns in a new delivery (ids spelled again),
    is back after a run, and a second erasure and run leave no byte of them again."""
    spelled = erased.spelled
    root = tmp_path / "root"
    shutil.copytree(erased.root, root)
    _deliver(root / "landing", spelled.subject, spelled.emails, spelled.person, "9002")
    assert _run(root).succeeded
    assert _of_subject(root, "silver.customers", spelled.subject) == 1
    assert _of_subject(root, "gold.fct_order_lines", spelled.subject) == 1

    from pipelines.retail.pipeline import retail

    report = erase_subject(settings_at(root), [retail], f" +{spelled.subject}")
    assert {"silver.customers", "bronze.events", "quarantine.silver.events"} <= {t.table for t in report.tables}
    result = _run(root)

    assert result.succeeded, [r.error for r in result.failures()]
    for table in SUBJECT_TABLES:
        assert _of_subject(root, table, spelled.subject) == 0, table
    assert _leftovers(root, spelled) == []
    assert {t: _quarantine(root, t).height for t in QUARANTINES} == erased.quarantined


def test_restores_across_an_erasure_are_refused_and_a_restore_then_run_rebuilds(erased: Erased,
                                                                                tmp_path: Path) -> None:
    """The next run rebuilds on its own after a restore or erase: a restore to a version the erasure emptied
    of the subject's files is refused with a message (nothing restored, no traceback), and a restore to the
    erasure's version followed by a plain run gives the tables back their rows."""
    root = tmp_path / "root"
    shutil.copytree(erased.root, root)
    layout = Layout.at(str(root))
    versions = {t: DeltaTable(layout.table(t)).version() for t in SUBJECT_TABLES}
    before = {t: _frame(root, t) for t in ("gold.fct_order_lines", "gold.customer_daily")}

    refused = CliRunner().invoke(main, ["--root", str(root), "restore", "silver.orders", "--version", "0"])
    assert refused.exit_code == 1 and "cannot be restored to version 0" in refused.output
    assert isinstance(refused.exception, SystemExit) and "Traceback" not in refused.output
    undo = CliRunner().invoke(main, ["--root", str(root), "restore", "--before-run", erased.run_id])
    assert undo.exit_code == 1 and "erasure at version" in undo.output
    assert {t: DeltaTable(layout.table(t)).version() for t in SUBJECT_TABLES} == versions

    erase_version = next(c["version"] for c in DeltaTable(layout.table("gold.fct_order_lines")).history()
                         if c.get("medallion.operation") == "erase")
    back = CliRunner().invoke(main, ["--root", str(root), "restore", "gold.fct_order_lines",
                                     "--version", str(erase_version)])
    assert back.exit_code == 0, back.output
    result = _run(root)

    assert result.succeeded, [r.error for r in result.failures()]
    for table, rows in before.items():
        _assert_same(_frame(root, table), rows, table)
