"""The request guard in front of Feast's feature server, which turns bad requests into 4xx answers.

The guard reads at most `max_body` bytes, parses the JSON of `POST /get-online-features`, and checks it against
the registry (`engine.features.validation`) before Feast sees it; a body without `Content-Type: application/json`
is refused (415) before it is read. Errors come back as the error document of `engine.features.problems`. Only
reads are served (`/get-online-features`, `/health`): Feast's write and materialize endpoints have no
authentication, so they are not exposed.

With `auth` in the Feast configuration (OIDC), the guard first checks the bearer token (401 without a valid
one, before the body is read or the catalog described), passes the `Authorization` header on, and Feast
enforces the `medallion-*` permissions (`engine.features.permissions`) with the token's roles; Feast's 401
and 403 answers are rewritten into the error document. `GET /metrics` answers the server's Prometheus
metrics: requests by path and status, and their latency.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from feast import FeatureStore
from feast.permissions.auth.token_parser import TokenParser
from feast.permissions.user import User
from starlette.concurrency import run_in_threadpool

from engine.features.problems import RequestProblem, shown
from engine.features.validation import MAX_ROWS, catalog_of, check_request
from engine.metrics import HttpMetrics

ONLINE_PATH = "/get-online-features"
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
MAX_BODY = 1 << 20
MEDIA_TYPE = "application/json"
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
