"""Tests of engine.kinds: parsing write kinds from their dictionary form and Merge validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engine.errors import PipelineDefinitionError
from engine.kinds import Append, Merge, Overwrite, RecomputeKeys, parse_kind


def test_parse_append() -> None:
    assert parse_kind({"kind": "append"}) == Append()


def test_parse_overwrite() -> None:
    assert parse_kind({"kind": "overwrite"}) == Overwrite()


def test_parse_merge_with_every_option() -> None:
    kind = parse_kind({"kind": "merge", "keys": ["order_id", "line"], "sequence_by": "updated_at",
                       "delete_when": "op = 'd'", "except_columns": ["op"]})
    assert isinstance(kind, Merge)
    assert kind.keys == ["order_id", "line"]
    assert kind.sequence_by == "updated_at"
    assert kind.delete_when == "op = 'd'"
    assert kind.except_columns == ["op"]


def test_parse_merge_defaults() -> None:
    kind = parse_kind({"kind": "merge", "keys": ["id"]})
    assert kind == Merge(keys=["id"])
    assert kind.sequence_by is None and kind.delete_when is None and kind.except_columns == []


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_kind({"kind": "upsert"})
    assert caught.value.errors()[0]["type"] == "union_tag_invalid"
    assert "upsert" in str(caught.value)


def test_missing_kind_is_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_kind({"keys": ["id"]})
    assert caught.value.errors()[0]["type"] == "union_tag_not_found"


def test_options_of_another_kind_are_rejected() -> None:
    with pytest.raises(ValidationError, match="keys"):
        parse_kind({"kind": "append", "keys": ["id"]})


def test_merge_requires_keys() -> None:
    with pytest.raises(ValidationError, match="keys"):
        parse_kind({"kind": "merge"})
    with pytest.raises(ValidationError, match="at least 1"):
        Merge(keys=[])


def test_sequence_by_cannot_be_a_key() -> None:
    with pytest.raises(ValidationError, match="sequence_by `id` cannot also be a key"):
        Merge(keys=["id"], sequence_by="id")
    with pytest.raises(ValidationError, match="cannot also be a key"):
        parse_kind({"kind": "merge", "keys": ["a", "b"], "sequence_by": "b"})


def test_kinds_are_frozen() -> None:
    kind = Merge(keys=["id"])
    with pytest.raises(ValidationError):
        kind.sequence_by = "ts"  # type: ignore[misc]


@pytest.mark.parametrize("options", [{"except_columns": ["id"]},
                                     {"sequence_by": "ts", "except_columns": ["ts"]}])
def test_except_columns_cannot_name_a_key_or_the_sequence(options: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        parse_kind({"kind": "merge", "keys": ["id"], **options})


def test_recompute_keys_names_inputs_without_the_keys_and_refuses_when_none_holds_them() -> None:
    kind = RecomputeKeys(keys=["customer_id", "day"])
    columns = {"silver.visits": ["customer_id", "day", "n"], "silver.rates": ["rate"], "silver.days": ["day"]}
    assert kind.unkeyed_inputs("gold.t", columns) == ["silver.rates", "silver.days"]
    with pytest.raises(PipelineDefinitionError, match=r"table `gold.t` recomputes by keys \['customer_id', 'day'\], "
                       r"but no input holds them \(input `silver.rates` lacks `customer_id`, `day`; input "
                       r"`silver.days` lacks `customer_id`\)"):
        kind.unkeyed_inputs("gold.t", {t: c for t, c in columns.items() if t != "silver.visits"})
    assert kind.unkeyed_inputs("gold.t", {}) == []
