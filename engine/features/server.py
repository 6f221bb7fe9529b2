"""Online serving over HTTP: Feast's feature server behind a guard that turns bad requests into 4xx answers.

The guard reads at most `max_body` bytes, parses the JSON of `POST /get-online-features`, and checks it
against the registry (known feature views, features and services; no two requested features under one
output name; every needed entity key and request field present, of the right type, in equal-length lists)
before Feast sees it; a body without `Content-Type: application/json` is refused (415) before it is read.
Errors come back as `{"error": {"code": ..., "message": ..., "details": ...}}`, Feast's request validation
errors too, and echo at most `ECHO_LIMIT` characters of any value the caller sent (`shown`). Only reads are
served (`/get-online-features`, `/health`): Feast's write and materialize endpoints have no authentication, so
they are not exposed.

With `auth` in the Feast configuration (OIDC), the guard first checks the bearer token (401 without a valid
one, before the body is read or the catalog described), passes the `Authorization` header on, and Feast
enforces the `medallion-*` permissions (`engine.features.permissions`) with the token's roles; Feast's 401
and 403 answers are rewritten into the error document above. `GET /metrics` answers the server's
Prometheus metrics: requests by path and status, and their latency.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from feast import FeatureStore
from feast.permissions.auth.token_parser import TokenParser
from feast.permissions.user import User
from feast.value_type import ValueType
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from engine.config import AccessSettings
from engine.errors import FeatureStoreError
from engine.metrics import HttpMetrics

ONLINE_PATH = "/get-online-features"
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
MAX_BODY = 1 << 20
MAX_ROWS = 1000
ECHO_LIMIT = 200
"""Characters of a value the caller sent that an error document repeats; longer ones are cut."""
ECHO_ITEMS = 50
"""Items of a list or object in an error document's details; the rest are counted."""
MEDIA_TYPE = "application/json"
REQUEST_FIELDS = {"features", "feature_service", "entities", "full_feature_names"}
INT_RANGES = {ValueType.INT32: (-(2**31), 2**31 - 1), ValueType.INT64: (-(2**63), 2**63 - 1)}
CHALLENGE = [(b"www-authenticate", b"Bearer")]
KINDS = {"FeatureView": "feature view", "OnDemandFeatureView": "on-demand feature view",
         "FeatureService": "feature service"}
REFUSED = (re.compile(r"to (\w+):([^\s:,]+)"), re.compile(r"on <class '[\w.]*?(\w+)'>/([^\s,]+?)\.?(?:\s|$)"))
log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def shown(value: Any, limit: int = ECHO_LIMIT) -> str:
    """`value` as an error document may repeat it: its text, cut after `limit` characters with an ellipsis and
    its length (`aaa… (512000 characters)`)."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _bounded(value: Any) -> Any:
    """`value` (details of an error document) with every string `shown` and at most `ECHO_ITEMS` items per
    list or object."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        rest = [f"… {len(items) - ECHO_ITEMS} more"] if len(items) > ECHO_ITEMS else []
        return [_bounded(item) for item in items[:ECHO_ITEMS]] + rest
    if isinstance(value, dict):
        kept = {shown(key): _bounded(item) for key, item in list(value.items())[:ECHO_ITEMS]}
        return kept | ({"…": f"{len(value) - ECHO_ITEMS} more"} if len(value) > ECHO_ITEMS else {})
    return value


class RequestProblem(Exception):
    """A request the server refuses: HTTP status, a stable code, a message and details, bounded however much
    of the request they repeat (messages quote values with `shown`)."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(shown(message, 4 * ECHO_LIMIT))
        self.status = status
        self.code = code
        self.details = _bounded(details)

    def body(self) -> bytes:
        """The JSON error document."""
        return json.dumps({"error": {"code": self.code, "message": str(self), "details": self.details}}).encode()


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


class RequestGuard:
    """ASGI middleware: lets through valid online-feature requests and health checks, answers metrics and
    the rest; counts every HTTP request by path and status and times it."""

    def __init__(self, app: ASGIApp, store: FeatureStore, *, max_body: int = MAX_BODY, max_rows: int = MAX_ROWS,
                 token_parser: TokenParser | None = None, metrics: HttpMetrics | None = None) -> None:
        self.app = app
        self.store = store
        self.max_body = max_body
        self.max_rows = max_rows
        self.token_parser = token_parser
        self.metrics = metrics or HttpMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._handle(scope, receive, counted)
        finally:
            path = scope["path"] if scope["path"] in (ONLINE_PATH, HEALTH_PATH, METRICS_PATH) else "other"
            self.metrics.observe(path, status, time.perf_counter() - started)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        try:
            if path == HEALTH_PATH and method == "GET":
                await self.app(scope, receive, send)
                return
            if path == METRICS_PATH and method == "GET":
                await _metrics(send, self.metrics)
                return
            if path != ONLINE_PATH:
                raise RequestProblem(404, "not_found", f"no endpoint `{shown(path)}`; use POST {ONLINE_PATH}")
            if method != "POST":
                raise RequestProblem(405, "method_not_allowed", f"use POST {ONLINE_PATH}")
            user = await self._authenticate(scope)
            _check_media_type(scope)
            body = await self._body(scope, receive)
            payload = _parse(body)
            catalog = await run_in_threadpool(catalog_of, self.store)
            check_request(payload, catalog, self.max_rows)
        except RequestProblem as problem:
            await _answer(send, problem)
            return
        await self.app(scope, _replay(body), _refusals(send, user))

    async def _authenticate(self, scope: Scope) -> User | None:
        """The caller of a request with a valid bearer token; None when the server has no authentication."""
        if self.token_parser is None:
            return None
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1").strip()
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RequestProblem(401, "unauthenticated", "send an access token: `Authorization: Bearer <token>` "
                                 "from the identity provider", reason="missing" if not header else "not a bearer token")
        try:
            return await self.token_parser.user_details_from_access_token(access_token=token.strip())
        except Exception as err:  # noqa: BLE001 - any failure to verify the token is a refusal
            log.info("feature server: token refused: %s", err)
            raise RequestProblem(401, "unauthenticated", "the access token is invalid or expired; get a new one "
                                 "from the identity provider", reason=str(err)) from None

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            raise RequestProblem(413, "body_too_large", f"the body may have at most {self.max_body} bytes",
                                 limit=self.max_body)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestProblem(400, "incomplete_body", "the client disconnected before sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise RequestProblem(413, "body_too_large", f"the body may have at most {self.max_body} bytes",
                                     limit=self.max_body)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _check_media_type(scope: Scope) -> None:
    """Refuse a request whose `Content-Type` is missing or not `application/json` (Feast's FastAPI would answer
    it with a 422 quoting the whole body)."""
    content_type = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1")
    if content_type.split(";")[0].strip().lower() != MEDIA_TYPE:
        raise RequestProblem(415, "unsupported_media_type", f"send the body with `Content-Type: {MEDIA_TYPE}`",
                             content_type=content_type or None)


def _parse(body: bytes) -> Any:
    if not body.strip():
        raise RequestProblem(400, "empty_body", f"POST {ONLINE_PATH} needs a JSON body with `features` or "
                             "`feature_service`, and `entities`")
    try:
        return json.loads(body)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, or a number of over 4300 digits
        raise RequestProblem(400, "invalid_json", f"the body is not valid JSON: {err}") from None
    except RecursionError:
        raise RequestProblem(400, "invalid_json", "the body nests arrays or objects too deeply") from None


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _answer(send: Send, problem: RequestProblem) -> None:
    body = problem.body()
    await send({"type": "http.response.start", "status": problem.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(CHALLENGE if problem.status == 401 else [])]})
    await send({"type": "http.response.body", "body": body})


async def _metrics(send: Send, metrics: HttpMetrics) -> None:
    body, content_type = metrics.exposition()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _refusals(send: Send, user: User | None) -> Send:
    """`send` with Feast's 401 and 403 answers replaced by the error document."""
    refused: dict[str, Any] = {}

    async def translate(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] in (401, 403):
            refused.update(status=message["status"], body=b"")
            return
        if not refused or message["type"] != "http.response.body":
            await send(message)
            return
        refused["body"] += message.get("body", b"")
        if not message.get("more_body", False):
            await _answer(send, refusal(refused["status"], refused["body"], user))

    return translate


def refusal(status: int, body: bytes, user: User | None = None) -> RequestProblem:
    """Feast's 401 or 403 answer (`body`) as a `RequestProblem` naming what was refused to whom."""
    reason = _feast_message(body)
    if status == 401:
        return RequestProblem(401, "unauthenticated", "the access token is missing, invalid or expired; get a new "
                              "one from the identity provider", reason=reason)
    who = f"`{user.username}` (roles: {', '.join(user.roles) or 'none'})" if user else "the caller"
    found = next((m for m in (p.search(reason) for p in REFUSED) if m), None)
    if found is None:
        return RequestProblem(403, "forbidden", f"{who} may not read these features: {shown(reason)}", reason=reason)
    kind, name = KINDS.get(found.group(1), found.group(1)), found.group(2)
    grant = ("read on every view it serves" if kind == "feature service"
             else f"a role whose `read` patterns match `features.{name}`")
    return RequestProblem(403, "forbidden", f"{who} may not read {kind} `{name}`; it needs {grant} (`access.roles`, "
                          "then `medallion features apply`)", kind=kind, name=name, reason=reason)


def _feast_message(body: bytes) -> str:
    """The message in Feast's error body (`{"detail": ...}`, or its error detail encoded as a JSON string)."""
    value: Any = body.decode("utf-8", "replace")
    for _ in range(3):
        if isinstance(value, dict):
            value = value.get("message", value.get("detail", value))
            if isinstance(value, dict | list):
                return json.dumps(value)
        if not isinstance(value, str):
            return str(value)
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            break
    return str(value).strip()


def check_access(store: FeatureStore, access: AccessSettings) -> None:
    """With access control on, check that the server can enforce it: the Feast configuration has `auth`, and
    the registry holds the permissions of the current `access.roles`.

    Raises:
        FeatureStoreError: either is missing.
    """
    from engine.features.permissions import feast_permissions, is_managed, served_views

    if not access.enforce:
        return
    if store.config.auth_config.type == "no_auth":
        raise FeatureStoreError(
            "access control is on (`access.enforce`) but the feature server has no authentication, so every caller "
            "could read every feature view; add `auth: {type: oidc, auth_discovery_url: "
            "https://<idp>/.well-known/openid-configuration, client_id: <client>}` to the Feast configuration "
            "(feature_store.yaml or --feast-config) and give callers tokens with their roles")
    registry, project = store.registry, store.project
    expected = feast_permissions(access, served_views(registry.list_feature_services(project),
                                                      registry.list_on_demand_feature_views(project)))
    registered = [p for p in registry.list_permissions(project) if is_managed(p)]
    if sorted(expected, key=lambda p: p.name) != sorted(registered, key=lambda p: p.name):
        raise FeatureStoreError(
            f"the registry's feature permissions of project `{project}` do not match `access.roles` "
            f"(registered: {sorted(p.name for p in registered) or 'none'}, expected: "
            f"{sorted(p.name for p in expected) or 'none'}); run `medallion features apply` first")


def build_app(store: FeatureStore, *, max_body: int = MAX_BODY, max_rows: int = MAX_ROWS,
              registry_ttl_s: int = 5, access: AccessSettings | None = None) -> ASGIApp:
    """Feast's feature server app for `store`, wrapped in a `RequestGuard`.

    With `auth` in the store's configuration, Feast's (process-wide) security and auth managers are set up
    for it, as `feast serve` does; without, they are cleared. With `access` given, `check_access` first.
    """
    from feast.feature_server import get_app
    from feast.permissions.auth.auth_manager import AllowAll, get_auth_manager, set_auth_manager
    from feast.permissions.security_manager import no_security_manager
    from feast.permissions.server.utils import (
        AuthManagerType,
        ServerType,
        init_auth_manager,
        init_security_manager,
        str_to_auth_manager_type,
    )

    if access is not None:
        check_access(store, access)
    auth_type = str_to_auth_manager_type(store.config.auth_config.type)
    parser = None
    if auth_type == AuthManagerType.NONE:
        no_security_manager()
        set_auth_manager(AllowAll())
    else:
        init_security_manager(auth_type=auth_type, fs=store)
        init_auth_manager(server_type=ServerType.REST, auth_type=auth_type, auth_config=store.config.auth_config)
        parser = get_auth_manager().token_parser
    app = get_app(store, registry_ttl_sec=registry_ttl_s)
    app.add_exception_handler(RequestValidationError, validation_problem)
    return RequestGuard(app, store, max_body=max_body, max_rows=max_rows, token_parser=parser, metrics=HttpMetrics())


async def validation_problem(request: Request, error: Exception) -> Response:
    """FastAPI's request validation error as the guard's error document (422 `wrong_type`), naming each field
    and what is wrong with it, not the value sent (FastAPI's own answer repeats it, however large)."""
    problems = error.errors() if isinstance(error, RequestValidationError) else []
    fields = [{"field": ".".join(str(part) for part in problem.get("loc", ())), "problem": problem.get("msg", "")}
              for problem in problems]
    first = f"{fields[0]['field']}: {fields[0]['problem']}" if fields else "invalid"
    problem = RequestProblem(422, "wrong_type", f"the request does not match the model of `{request.url.path}`: "
                             f"{shown(first)}", errors=fields)
    return Response(problem.body(), status_code=problem.status, media_type=MEDIA_TYPE)


def serve(store: FeatureStore, host: str, port: int, **options: Any) -> None:
    """Serve `build_app(store)` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(build_app(store, **options), host=host, port=port, log_level="warning")
