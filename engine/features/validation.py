"""Online-feature requests checked against the registry before Feast sees them: known feature views, features
and services; no two requested features under one output name; every needed entity key and request field
present, of the right type, in equal-length lists."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from feast import FeatureStore
from feast.value_type import ValueType

from engine.features.problems import RequestProblem, shown

MAX_ROWS = 1000
REQUEST_FIELDS = {"features", "feature_service", "entities", "full_feature_names"}
INT_RANGES = {ValueType.INT32: (-(2**31), 2**31 - 1), ValueType.INT64: (-(2**63), 2**63 - 1)}


@dataclass
class Catalog:
    """What the registry says a request may ask for.

    Attributes:
        views: feature view name -> (feature names, join key -> value type).
        on_demand: on-demand view name -> (feature names, source view names, request field -> value type).
        services: feature service name -> feature references (`view:feature`).
    """

    views: dict[str, tuple[set[str], dict[str, ValueType]]] = field(default_factory=dict)
    on_demand: dict[str, tuple[set[str], list[str], dict[str, ValueType]]] = field(default_factory=dict)
    services: dict[str, list[str]] = field(default_factory=dict)


def catalog_of(store: FeatureStore) -> Catalog:
    """The registry's views, on-demand views and services (from the registry cache)."""
    registry, project = store.registry, store.project
    entities = {e.name: e for e in registry.list_entities(project, allow_cache=True)}
    catalog = Catalog()
    for view in registry.list_feature_views(project, allow_cache=True):
        types = {c.name: c.dtype.to_value_type() for c in view.entity_columns}
        keys = {entities[e].join_key: types.get(entities[e].join_key, entities[e].value_type)
                for e in view.entities if e in entities and entities[e].join_key in types}
        catalog.views[view.name] = ({f.name for f in view.features}, keys)
    for odfv in registry.list_on_demand_feature_views(project, allow_cache=True):
        sources = [p.name for p in odfv.source_feature_view_projections.values()]
        catalog.on_demand[odfv.name] = ({f.name for f in odfv.features}, sources, odfv.get_request_data_schema())
    for service in registry.list_feature_services(project, allow_cache=True):
        catalog.services[service.name] = [f"{p.name_to_use()}:{f.name}" for p in service.feature_view_projections
                                          for f in p.features]
    return catalog


def check_request(payload: Any, catalog: Catalog, max_rows: int = MAX_ROWS) -> None:
    """Check an online-features request against the catalog.

    Raises:
        RequestProblem: the first thing wrong with it.
    """
    if not isinstance(payload, dict):
        raise RequestProblem(400, "invalid_request", "the body must be a JSON object")
    unknown = sorted(set(payload) - REQUEST_FIELDS)
    if unknown:
        raise RequestProblem(400, "unknown_field", f"unknown request field(s) {shown(unknown)}",
                             allowed=sorted(REQUEST_FIELDS))
    if not isinstance(payload.get("full_feature_names", False), bool):
        raise RequestProblem(422, "wrong_type", "`full_feature_names` must be true or false")
    refs = _requested_refs(payload, catalog)
    _check_collisions(refs, payload.get("full_feature_names", False))
    needed = _needed_inputs(refs, catalog)
    entities = payload.get("entities")
    if not isinstance(entities, dict) or not entities:
        raise RequestProblem(400, "missing_entities", "`entities` must be an object of entity key -> list of values",
                             expected=sorted(needed))
    missing = sorted(set(needed) - set(entities))
    if missing:
        raise RequestProblem(400, "missing_entity", f"the requested features need value(s) for {missing}",
                             missing=missing, expected=sorted(needed))
    extra = sorted(set(entities) - set(needed))
    if extra:
        raise RequestProblem(400, "unknown_entity", f"{shown(extra)} are neither entity keys nor request fields of the "
                             "requested features", unknown=extra, expected=sorted(needed))
    lengths = set()
    for name, values in entities.items():
        if not isinstance(values, list) or not values:
            raise RequestProblem(422, "wrong_type", f"`entities.{shown(name)}` must be a non-empty list", entity=name)
        lengths.add(len(values))
        _check_values(name, values, needed[name])
    if len(lengths) > 1:
        raise RequestProblem(400, "length_mismatch", "every list in `entities` must have the same length",
                             lengths={n: len(v) for n, v in entities.items()})
    if lengths.pop() > max_rows:
        raise RequestProblem(413, "too_many_rows", f"at most {max_rows} entity rows per request", limit=max_rows)


def _requested_refs(payload: Mapping[str, Any], catalog: Catalog) -> list[str]:
    service, features = payload.get("feature_service"), payload.get("features")
    if (service is None) == (features is None):
        raise RequestProblem(400, "invalid_request", "give exactly one of `features` (a list of `view:feature`) "
                             "and `feature_service`")
    if service is not None:
        if not isinstance(service, str):
            raise RequestProblem(422, "wrong_type", "`feature_service` must be a string")
        if service not in catalog.services:
            raise RequestProblem(404, "unknown_feature_service", f"no feature service `{shown(service)}`",
                                 known=sorted(catalog.services))
        return catalog.services[service]
    if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
        raise RequestProblem(422, "wrong_type", "`features` must be a non-empty list of `view:feature` strings")
    for ref in features:
        view, _, name = ref.partition(":")
        known = catalog.views.get(view, catalog.on_demand.get(view, (None,)))[0]
        if known is None:
            raise RequestProblem(404, "unknown_feature_view", f"no feature view `{shown(view)}` (in `{shown(ref)}`)",
                                 known=sorted([*catalog.views, *catalog.on_demand]))
        if name not in known:
            raise RequestProblem(404, "unknown_feature", f"feature view `{view}` has no feature `{shown(name)}`",
                                 known=sorted(known))
    return features


def _check_collisions(refs: list[str], full_feature_names: bool) -> None:
    """Refuse references Feast would answer under one name: a reference given twice, or (without full feature
    names) features of different views sharing a name."""
    names = refs if full_feature_names else [ref.partition(":")[2] for ref in refs]
    counts = Counter(names)
    clashing = sorted({ref for ref, name in zip(refs, names) if counts[name] > 1})
    if not clashing:
        return
    repeated = sorted(ref for ref, count in Counter(refs).items() if count > 1)
    if repeated:
        message = f"feature reference(s) {shown(repeated)} are requested more than once; request each once"
    else:
        message = (f"features {shown(clashing)} would all be answered as "
                   f"{shown(sorted({n for n in names if counts[n] > 1}))}; "
                   "set `full_feature_names` to true to name them `view__feature`, or request one of them")
    raise RequestProblem(400, "feature_name_collision", message, refs=clashing)


def _needed_inputs(refs: list[str], catalog: Catalog) -> dict[str, ValueType]:
    """Entity keys and request fields the references need, with their value types."""
    needed: dict[str, ValueType] = {}
    views = {ref.partition(":")[0] for ref in refs}
    for view in sorted(views):
        if view in catalog.on_demand:
            _, sources, request = catalog.on_demand[view]
            needed.update(request)
            for source in sources:
                needed.update(catalog.views.get(source, (set(), {}))[1])
        else:
            needed.update(catalog.views[view][1])
    return needed


def _check_values(name: str, values: list[Any], kind: ValueType) -> None:
    for position, value in enumerate(values):
        if not _fits(value, kind):
            raise RequestProblem(422, "wrong_type", f"`entities.{shown(name)}[{position}]` is "
                                 f"{shown(json.dumps(value))}, not a "
                                 f"{kind.name.lower()} value", entity=name, index=position, expected=kind.name)


def _fits(value: Any, kind: ValueType) -> bool:
    if kind in INT_RANGES:
        low, high = INT_RANGES[kind]
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    if kind in (ValueType.FLOAT, ValueType.DOUBLE):
        if isinstance(value, int) and not isinstance(value, bool):
            low, high = INT_RANGES[ValueType.INT64]
            return low <= value <= high  # Feast sends a whole number on as an int64
        return isinstance(value, float) and math.isfinite(value)
    if kind == ValueType.STRING:
        return isinstance(value, str) and _encodable(value)
    if kind == ValueType.BOOL:
        return isinstance(value, bool)
    return value is not None


def _encodable(text: str) -> bool:
    """Whether `text` is valid Unicode (JSON escapes can produce lone surrogates, which Feast cannot encode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
