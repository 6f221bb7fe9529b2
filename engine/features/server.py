"""Feast's feature server app behind the request guard (`engine.features.guard`), served with uvicorn: access
control checked before it starts, Feast's auth managers set up for its configuration, and Feast's request
validation errors answered as the guard's error document."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from feast import FeatureStore
from starlette.responses import Response

from engine.config import AccessSettings
from engine.errors import FeatureStoreError
from engine.features.guard import MAX_BODY, MEDIA_TYPE, ASGIApp, RequestGuard
from engine.features.problems import RequestProblem, shown
from engine.features.validation import MAX_ROWS
from engine.metrics import HttpMetrics


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
