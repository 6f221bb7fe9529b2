"""Tests of engine.pipeline: declaring tables, resolving inputs, ordering and selection expressions."""

from __future__ import annotations

from typing import Any

import pytest
import ray.data

from engine.errors import PipelineDefinitionError, SelectionError
from engine.ingest.postgres.source import PostgresSource
from engine.ingest.sources import FileSource
from engine.kinds import Append, Merge, Overwrite
from engine.pipeline import Pipeline, parameter_name


def diamond() -> Pipeline:
    """bronze.a -> silver.b, silver.c -> gold.d (reads b and c); bronze.e stands alone."""
    p = Pipeline("diamond")
    p.ingest("bronze.a", FileSource("a", "jsonl"))

    @p.table("silver.b")
    def b(bronze_a: Any) -> Any:
        return bronze_a

    @p.table("silver.c")
    def c(bronze_a: Any) -> Any:
        return bronze_a

    @p.table("gold.d")
    def d(silver_c: Any, silver_b: Any) -> Any:
        return silver_b

    p.ingest("bronze.e", FileSource("e", "csv"))
    return p


def test_parameter_name() -> None:
    assert parameter_name("silver.orders") == "silver_orders"


def test_inputs_come_from_parameter_names_in_order() -> None:
    p = diamond()
    assert p.tables["gold.d"].inputs == ("silver_c", "silver_b")
    resolved = p.resolve()
    assert resolved["gold.d"].inputs == ("silver.c", "silver.b")
    assert resolved["silver.b"].inputs == ("bronze.a",)
    assert resolved["bronze.a"].inputs == ()
    assert list(p.tables) == ["bronze.a", "silver.b", "silver.c", "gold.d", "bronze.e"]


def test_table_defaults() -> None:
    p = Pipeline("p")

    @p.table("silver.x", ray_options={"num_cpus": 2})
    def x(bronze_y: Any) -> Any:
        """Cleaned x rows."""
        return bronze_y

    definition = p.tables["silver.x"]
    assert definition.kind == Overwrite()
    assert definition.description == "Cleaned x rows."
    assert definition.ray_options == {"num_cpus": 2}
    assert definition.function is x
    assert definition.layer == "silver"
    assert definition.source is None


def test_explicit_description_and_kind_win() -> None:
    p = Pipeline("p")
    kind = Merge(keys=["id"])

    @p.table("silver.x", kind=kind, description="")
    def x(bronze_y: Any) -> Any:
        """Ignored docstring."""
        return bronze_y

    assert p.tables["silver.x"].description == ""
    assert p.tables["silver.x"].kind is kind


def test_no_docstring_means_empty_description() -> None:
    p = Pipeline("p")

    @p.table("gold.x")
    def x(silver_y: Any) -> Any:
        return silver_y

    assert p.tables["gold.x"].description == ""


def test_ingest_declares_append_table_with_source() -> None:
    p = Pipeline("p")
    source = FileSource("orders", "jsonl", pattern="*.json")
    definition = p.ingest("bronze.orders", source, description="raw orders")
    assert definition.kind == Append()
    assert definition.source is source
    assert definition.function is None
    assert definition.inputs == ()
    assert definition.description == "raw orders"
    assert p.tables["bronze.orders"] is definition


def test_resolve_rejects_unknown_input() -> None:
    p = Pipeline("p")
    p.ingest("bronze.orders", FileSource("orders", "jsonl"))

    @p.table("silver.orders")
    def orders(bronze_order: Any) -> Any:
        return bronze_order

    with pytest.raises(PipelineDefinitionError) as caught:
        p.resolve()
    message = str(caught.value)
    assert "silver.orders" in message
    assert "bronze_order" in message
    assert "bronze.orders" in message
    assert caught.value.table == "silver.orders"


def test_cycle_is_rejected_naming_tables() -> None:
    p = Pipeline("p")

    @p.table("silver.a")
    def a(silver_b: Any) -> Any:
        return silver_b

    @p.table("silver.b")
    def b(silver_a: Any) -> Any:
        return silver_a

    with pytest.raises(PipelineDefinitionError, match="cycle") as caught:
        p.order()
    message = str(caught.value)
    assert "silver.a" in message and "silver.b" in message
    assert caught.value.table in {"silver.a", "silver.b"}


def test_table_reading_itself_is_a_cycle() -> None:
    p = Pipeline("p")

    @p.table("silver.a")
    def a(silver_a: Any) -> Any:
        return silver_a

    with pytest.raises(PipelineDefinitionError, match="silver.a -> silver.a"):
        p.resolve()


def test_duplicate_table_is_rejected() -> None:
    p = Pipeline("p")
    p.ingest("bronze.x", FileSource("x", "jsonl"))
    with pytest.raises(PipelineDefinitionError, match="declared twice") as caught:
        p.ingest("bronze.x", FileSource("y", "jsonl"))
    assert "bronze.x" in str(caught.value)
    assert p.tables["bronze.x"].source == FileSource("x", "jsonl")


def test_two_tables_sharing_a_parameter_name_are_rejected() -> None:
    p = Pipeline("p")
    p.ingest("raw.orders_daily", FileSource("x", "jsonl"))
    with pytest.raises(PipelineDefinitionError) as caught:
        p.ingest("raw_orders.daily", FileSource("y", "jsonl"))
    message = str(caught.value)
    assert "raw.orders_daily" in message and "raw_orders.daily" in message
    assert "raw_orders_daily" in message


@pytest.mark.parametrize("name", ["orders", "Silver.orders", "silver.Orders", "silver.orders.x",
                                  "silver-x.orders", "1silver.orders", "silver.", ".orders", ""])
def test_bad_table_names_are_rejected(name: str) -> None:
    p = Pipeline("p")
    with pytest.raises(PipelineDefinitionError, match="is not of the form"):
        p.ingest(name, FileSource("x", "jsonl"))
    with pytest.raises(PipelineDefinitionError, match="is not of the form"):
        p.table(name)(lambda bronze_x: bronze_x)
    assert p.tables == {}


def test_bad_pipeline_name_is_rejected() -> None:
    with pytest.raises(PipelineDefinitionError, match="snake_case"):
        Pipeline("Retail-Pipeline")


def test_star_args_are_rejected() -> None:
    p = Pipeline("p")
    with pytest.raises(PipelineDefinitionError, match=r"\*args or \*\*kwargs") as caught:
        @p.table("silver.x")
        def x(*bronze_tables: Any) -> Any:
            return bronze_tables
    assert caught.value.table == "silver.x"
    with pytest.raises(PipelineDefinitionError, match=r"\*args or \*\*kwargs"):
        @p.table("silver.y")
        def y(bronze_a: Any, **others: Any) -> Any:
            return bronze_a
    assert p.tables == {}


def test_parameter_without_layer_is_rejected() -> None:
    p = Pipeline("p")
    with pytest.raises(PipelineDefinitionError, match="parameter `orders` does not name a table"):
        @p.table("silver.x")
        def x(orders: Any) -> Any:
            return orders


def test_order_is_upstream_first_ties_in_declaration_order() -> None:
    assert diamond().order() == ["bronze.a", "bronze.e", "silver.b", "silver.c", "gold.d"]


def test_order_follows_dependencies_not_declaration() -> None:
    p = Pipeline("p")

    @p.table("gold.report")
    def report(silver_clean: Any) -> Any:
        return silver_clean

    @p.table("silver.clean")
    def clean(bronze_raw: Any) -> Any:
        return bronze_raw

    p.ingest("bronze.raw", FileSource("raw", "jsonl"))
    assert p.order() == ["bronze.raw", "silver.clean", "gold.report"]


@pytest.mark.parametrize("expression", [None, "", "   "])
def test_select_nothing_means_everything(expression: str | None) -> None:
    p = diamond()
    assert p.select(expression) == p.order()


@pytest.mark.parametrize(("expression", "expected"), [
    ("silver.b", ["silver.b"]),
    ("silver.*", ["silver.b", "silver.c"]),
    ("bronze.?", ["bronze.a", "bronze.e"]),
    ("+gold.d", ["bronze.a", "silver.b", "silver.c", "gold.d"]),
    ("+silver.b", ["bronze.a", "silver.b"]),
    ("silver.c+", ["silver.c", "gold.d"]),
    ("bronze.a+", ["bronze.a", "silver.b", "silver.c", "gold.d"]),
    ("+silver.b+", ["bronze.a", "silver.b", "gold.d"]),
    ("gold.d, bronze.e", ["bronze.e", "gold.d"]),
    ("gold.d,bronze.e", ["bronze.e", "gold.d"]),
    ("  gold.d   bronze.e  ", ["bronze.e", "gold.d"]),
    ("silver.b , silver.c+", ["silver.b", "silver.c", "gold.d"]),
    ("silver.b silver.b", ["silver.b"]),
])
def test_select(expression: str, expected: list[str]) -> None:
    assert diamond().select(expression) == expected


@pytest.mark.parametrize("expression", ["silver.nope", "gold.d, silver.z*", "+", "bronze"])
def test_select_unknown_term_lists_tables(expression: str) -> None:
    with pytest.raises(SelectionError) as caught:
        diamond().select(expression)
    message = str(caught.value)
    assert "matches no table" in message
    assert "bronze.a, silver.b, silver.c, gold.d, bronze.e" in message


def test_select_unknown_term_names_the_term() -> None:
    with pytest.raises(SelectionError, match="`silver.nope`"):
        diamond().select("silver.b silver.nope")


def with_on_demand(p: Pipeline) -> Pipeline:
    """`p` plus gold.scores (reads gold.d), built only when named exactly."""

    @p.table("gold.scores", on_demand=True)
    def scores(gold_d: Any) -> Any:
        return gold_d

    return p


@pytest.mark.parametrize(("expression", "expected"), [
    (None, ["bronze.a", "bronze.e", "silver.b", "silver.c", "gold.d"]),
    ("gold.*", ["gold.d"]),
    ("silver.c+", ["silver.c", "gold.d"]),
    ("gold.scores", ["gold.scores"]),
    ("+gold.scores", ["bronze.a", "silver.b", "silver.c", "gold.d", "gold.scores"]),
    ("gold.* gold.scores", ["gold.d", "gold.scores"]),
])
def test_on_demand_tables_are_selected_only_by_their_exact_name(expression: str | None,
                                                                expected: list[str]) -> None:
    assert with_on_demand(diamond()).select(expression) == expected


def test_a_glob_matching_only_on_demand_tables_says_so() -> None:
    with pytest.raises(SelectionError, match=r"matches only on-demand tables \(gold.scores\)"):
        with_on_demand(diamond()).select("gold.sc*")


def test_a_table_reading_an_on_demand_table_must_be_on_demand_too() -> None:
    p = with_on_demand(diamond())

    @p.table("gold.report")
    def report(gold_scores: Any) -> Any:
        return gold_scores

    with pytest.raises(PipelineDefinitionError, match="`gold.report` reads on-demand table `gold.scores`"):
        p.select()


def test_select_checks_the_pipeline_first() -> None:
    p = Pipeline("p")

    @p.table("silver.x")
    def x(bronze_missing: Any) -> Any:
        return bronze_missing

    with pytest.raises(PipelineDefinitionError, match="bronze_missing"):
        p.select("silver.x")


def test_decorated_function_stays_callable(ray_local: None) -> None:
    p = Pipeline("p")

    @p.table("silver.doubled")
    def doubled(bronze_numbers: ray.data.Dataset) -> ray.data.Dataset:
        return bronze_numbers.map(lambda row: {"n": row["n"], "twice": row["n"] * 2})

    assert doubled.__name__ == "doubled"
    result = doubled(ray.data.from_items([{"n": 1}, {"n": 2}, {"n": 5}]))
    assert isinstance(result, ray.data.Dataset)
    assert sorted(result.take_all(), key=lambda r: r["n"]) == [
        {"n": 1, "twice": 2}, {"n": 2, "twice": 4}, {"n": 5, "twice": 10},
    ]


def test_with_sources_feeds_the_same_tables_from_other_sources() -> None:
    p = Pipeline("files", description="from files")
    p.ingest("bronze.a", FileSource("a", "jsonl"))
    p.ingest("bronze.b", FileSource("b", "csv"))

    @p.table("silver.a")
    def a(bronze_a: Any) -> Any:
        return bronze_a

    database = PostgresSource("public.a", dsn_env="A_DATABASE_URL")
    fed = p.with_sources("from_db", {"bronze.a": database})
    assert fed.name == "from_db" and fed.description == "from files" and list(fed.tables) == list(p.tables)
    assert fed.tables["bronze.a"].source == database and fed.tables["bronze.b"] == p.tables["bronze.b"]
    assert fed.tables["silver.a"] == p.tables["silver.a"] and p.tables["bronze.a"].source == FileSource("a", "jsonl")
    with pytest.raises(PipelineDefinitionError, match="no ingested table `silver.a`; its ingested tables: bronze.a"):
        p.with_sources("x", {"silver.a": database})
