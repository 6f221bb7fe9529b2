"""The roles of `access.roles` enforced by the feature server through Feast's permission framework, against a
real OIDC provider (discovery document and JWKS served on 127.0.0.1) and RS256 tokens: a role reads the
views its patterns grant and gets a structured 403 for the others; no, expired or forged token, 401."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa
from feast import FeatureStore
from feast.feature_server import get_app
from feast.infra.infra_object import Infra
from feast.permissions.action import AuthzedAction
from feast.permissions.auth.auth_manager import AllowAll, set_auth_manager
from feast.permissions.permission import Permission
from feast.permissions.policy import RoleBasedPolicy
from feast.permissions.security_manager import no_security_manager

from engine.cli.main import main
from engine.config import AccessSettings, RoleGrant
from engine.errors import FeatureStoreError
from engine.features.guard import RequestGuard
from engine.features.permissions import feast_permissions, served_views, view_patterns
from engine.features.repo import apply_repo, load_definitions, open_store
from engine.features.server import build_app
from tests.features.conftest import REPO, RetailFeatures, serving
from tests.features.test_server import as_columns, call, expected_online

CLIENT_ID = "feature-server"
ACCESS = AccessSettings(enforce=True, roles={
    "analyst": RoleGrant(read=("features.customer_*",)),
    "ops": RoleGrant(read=("gold.*",), write=("silver.*",)),
    "scientist": RoleGrant(read=("features.customer_*", "features.cart_*")),
    "loader": RoleGrant(read=("silver.*",), write=("features.*",)),
})
PROFILE = ["customer_features:revenue_30d", "customer_profile:country"]


# --- the pattern translation -------------------------------------------------------------------------

@pytest.mark.parametrize(("pattern", "regexes"), [
    ("features.customer_*", ["customer_.*"]),
    ("features.customer_features", ["customer_features"]),
    ("features.*", [".*"]),
    ("*", [".*"]),
    ("feat*", [".*"]),
    ("gold.*", []),
    ("silver.orders", []),
    ("features.", []),
    ("features.cust?mer_[a-c]*", ["cust.mer_[a-c].*"]),
    ("features.[!p]*", ["[^p].*"]),
    ("features.a.b", ["a\\.b"]),
])
def test_shell_patterns_become_regexes_over_view_names(pattern: str, regexes: list[str]) -> None:
    assert view_patterns(pattern) == regexes


PATTERNS = ["*", "features.*", "features.customer_*", "*_features", "*s", "f*s.c*", "*.cust?mer_*", "gold.*",
            "features.[cp]*", "features.[!c]*", "?eatures.*profile", "features.customer_features", "*e*.*", "["]
NAMES = ["customer_features", "customer_profile", "product_features", "cart_context", "s", "x.customer_y",
         "customer_features_v2", ".hidden", "features", "p"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_translated_patterns_match_exactly_what_fnmatch_grants(pattern: str) -> None:
    regexes = view_patterns(pattern)
    for name in NAMES:
        assert any(re.fullmatch(r, name) for r in regexes) == fnmatch.fnmatchcase(f"features.{name}", pattern), name


def test_one_permission_per_role_and_action_about_features() -> None:
    services = {"customer_training": ["cart_context", "customer_features", "customer_profile"],
                "customer_basics": ["customer_features"]}

    found = {p.name: p for p in feast_permissions(ACCESS, services)}

    assert sorted(found) == ["medallion-analyst-read", "medallion-analyst-read-services", "medallion-loader-write",
                             "medallion-scientist-read", "medallion-scientist-read-services"]
    analyst = found["medallion-analyst-read"]
    assert analyst.name_patterns == ["customer_.*"]
    assert analyst.policy == RoleBasedPolicy(roles=["analyst"])
    assert analyst.actions == [AuthzedAction.READ_ONLINE, AuthzedAction.READ_OFFLINE]
    assert {t.__name__ for t in analyst.types} == {"FeatureView", "OnDemandFeatureView"}
    assert found["medallion-analyst-read-services"].name_patterns == ["customer_basics"]
    assert found["medallion-scientist-read-services"].name_patterns == ["customer_basics", "customer_training"]
    assert {t.__name__ for t in found["medallion-scientist-read-services"].types} == {"FeatureService"}
    loader = found["medallion-loader-write"]
    assert (loader.name_patterns, loader.actions) == ([".*"], [AuthzedAction.WRITE_ONLINE, AuthzedAction.WRITE_OFFLINE])
    assert feast_permissions(AccessSettings(roles={"ops": RoleGrant(read=("gold.*",))})) == []


def test_a_feature_service_serves_its_views_and_the_sources_of_its_on_demand_views() -> None:
    objects = load_definitions(REPO)
    services = [o for o in objects if type(o).__name__ == "FeatureService"]
    on_demand = [o for o in objects if type(o).__name__ == "OnDemandFeatureView"]

    assert served_views(services, on_demand) == {
        "customer_training": ["cart_context", "customer_features", "customer_profile"]}


# --- a real OIDC provider ------------------------------------------------------------------------------

@dataclass
class Provider:
    """An OIDC provider on 127.0.0.1: discovery document and JWKS; tokens signed with its key."""

    discovery_url: str
    key: rsa.RSAPrivateKey
    kid: str

    def token(self, roles: list[str] | None = None, *, user: str = "alice", expires_in: int = 300,
              key: rsa.RSAPrivateKey | None = None, kid: str | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {"sub": f"id-{user}", "preferred_username": user, "iat": now, "exp": now + expires_in, **claims}
        if roles is not None:
            payload["roles"] = roles
        return jwt.encode(payload, key or self.key, algorithm="RS256", headers={"kid": kid or self.kid})


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": "test-key", "use": "sig",
           "alg": "RS256"}
    documents: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = documents.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    documents["/.well-known/openid-configuration"] = json.dumps({
        "issuer": base, "authorization_endpoint": f"{base}/auth", "token_endpoint": f"{base}/token",
        "jwks_uri": f"{base}/jwks"}).encode()
    documents["/jwks"] = json.dumps({"keys": [jwk]}).encode()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Provider(f"{base}/.well-known/openid-configuration", key, "test-key")
    server.shutdown()
    server.server_close()


# --- the feature store and server with authentication ------------------------------------------------

def copy_root(retail_features: RetailFeatures, destination: Path) -> Path:
    """A copy of the applied and materialized retail root (tables, registry, online store).

    The copied registry records the online tables by their paths under the original root; they are forgotten,
    or the copy's next apply would drop the original's tables as no longer used."""
    shutil.copytree(retail_features.root, destination)
    store = open_store(str(destination), REPO)
    store.registry.update_infra(Infra(), store.project, commit=True)
    return destination


def auth_overrides(provider: Provider) -> dict[str, Any]:
    return {"auth": {"type": "oidc", "auth_discovery_url": provider.discovery_url, "client_id": CLIENT_ID}}


@pytest.fixture(scope="module")
def secured(retail_features: RetailFeatures, provider: Provider, tmp_path_factory: pytest.TempPathFactory
            ) -> FeatureStore:
    """The retail feature store with OIDC authentication and the roles of ACCESS applied as permissions."""
    root = copy_root(retail_features, tmp_path_factory.mktemp("secured") / "root")
    store = open_store(str(root), REPO, overrides=auth_overrides(provider))
    report = apply_repo(store, load_definitions(REPO), access=ACCESS)
    assert report.changes == {"created": {"permission": [
        "medallion-analyst-read", "medallion-loader-write", "medallion-scientist-read",
        "medallion-scientist-read-services"]}}
    return store


@pytest.fixture(scope="module")
def server(secured: FeatureStore) -> Iterator[int]:
    try:
        with serving(build_app(secured, access=ACCESS)) as port:
            yield port
    finally:
        no_security_manager()
        set_auth_manager(AllowAll())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def online(port: int, token: str | None, features: list[str] | None = None, service: str | None = None,
           **entities: list[Any]) -> tuple[int, Any]:
    body: dict[str, Any] = {"entities": entities or {"customer_id": [1, 2, 3]}}
    body.update({"feature_service": service} if service else {"features": features or PROFILE})
    return call(port, "POST", "/get-online-features", body, bearer(token) if token else None)


def refused(answer: Any, code: str) -> str:
    assert set(answer) == {"error"} and answer["error"]["code"] == code, answer
    return str(answer["error"]["message"])


# --- enforcement -----------------------------------------------------------------------------------------

def test_a_role_reads_the_views_its_patterns_grant(server: int, provider: Provider,
                                                   retail_features: RetailFeatures) -> None:
    status, answer = online(server, provider.token(["analyst"]))

    assert status == 200, answer
    expected = expected_online(retail_features.root, [1, 2, 3])
    assert as_columns(answer)["revenue_30d"] == expected["revenue_30d"].to_list()
    assert any(v is not None for v in as_columns(answer)["country"])


def test_roles_from_the_clients_resource_access_claim_count_too(server: int, provider: Provider) -> None:
    token = provider.token(None, resource_access={CLIENT_ID: {"roles": ["analyst"]}, "other": {"roles": ["x"]}})

    assert online(server, token)[0] == 200


CUSTOMER, PRODUCT, CART = {"customer_id": [1]}, {"product_id": [1]}, {"customer_id": [1], "cart_value": [10.0]}


@pytest.mark.parametrize(("roles", "features", "entities", "view"), [
    (["ops"], PROFILE, CUSTOMER, "customer_features"),
    ([], PROFILE, CUSTOMER, "customer_features"),
    (["analyst"], ["product_features:price"], PRODUCT, "product_features"),
    (["analyst"], ["cart_context:revenue_share_7d"], CART, "cart_context"),
    (["scientist"], ["customer_features:revenue_30d", "product_features:price"], {**CUSTOMER, **PRODUCT},
     "product_features"),
], ids=["other role", "no role", "view not granted", "on-demand view not granted", "one of two views"])
def test_a_view_no_role_grants_is_refused_with_403_naming_it(server: int, provider: Provider, roles: list[str],
                                                              features: list[str], entities: dict[str, list[Any]],
                                                              view: str) -> None:
    status, answer = online(server, provider.token(roles, user="bob"), features, **entities)

    assert status == 403, answer
    message = refused(answer, "forbidden")
    assert f"`{view}`" in message and "`bob`" in message
    assert answer["error"]["details"]["name"] == view


def test_a_feature_service_needs_read_on_every_view_it_serves(server: int, provider: Provider) -> None:
    cart = {"customer_id": [1, 2], "cart_value": [10.0, 20.0]}

    status, answer = online(server, provider.token(["analyst"]), service="customer_training", **cart)
    assert status == 403
    assert "`customer_training`" in refused(answer, "forbidden")

    status, answer = online(server, provider.token(["scientist"]), service="customer_training", **cart)
    assert status == 200, answer
    assert {"revenue_30d", "country", "cart_to_avg_order_value"} <= set(as_columns(answer))


@pytest.mark.parametrize("case", ["none", "basic scheme", "garbage", "expired", "other key", "unknown key id",
                                  "none, bad body"])
def test_requests_without_a_valid_token_get_401(server: int, provider: Provider, case: str) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    headers = {
        "none": {}, "none, bad body": {},
        "basic scheme": {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        "garbage": bearer("not-a-token"),
        "expired": bearer(provider.token(["analyst"], expires_in=-120)),
        "other key": bearer(provider.token(["analyst"], key=other)),
        "unknown key id": bearer(provider.token(["analyst"], key=other, kid="rotated")),
    }[case]
    body: Any = {"features": ["orders:total"], "entities": {}} if case == "none, bad body" else {
        "features": PROFILE, "entities": {"customer_id": [1]}}

    status, answer = call(server, "POST", "/get-online-features", body, headers)

    assert status == 401, answer
    refused(answer, "unauthenticated")
    assert "known" not in answer["error"]["details"]


def test_health_needs_no_token(server: int) -> None:
    assert call(server, "GET", "/health")[0] == 200


def test_feasts_own_refusals_come_back_as_error_documents(server: int, secured: FeatureStore,
                                                          provider: Provider) -> None:
    """Without the guard's own token check, Feast answers 401 and 403 itself; they are rewritten."""
    with serving(RequestGuard(get_app(secured), secured)) as port:
        status, answer = online(port, None)
        assert status == 401
        refused(answer, "unauthenticated")

        status, answer = online(port, provider.token(["ops"]))
        assert status == 403
        assert "`customer_features`" in refused(answer, "forbidden")
        assert "Requires roles" in answer["error"]["details"]["reason"]

        assert online(port, provider.token(["analyst"]))[0] == 200


# --- applying and starting ---------------------------------------------------------------------------------

def test_apply_is_idempotent_keeps_foreign_permissions_and_removes_its_own_when_access_is_off(
        retail_features: RetailFeatures, provider: Provider, tmp_path: Path) -> None:
    root = copy_root(retail_features, tmp_path / "root")
    config = tmp_path / "medallion.yaml"

    def medallion_apply(access: AccessSettings) -> str:
        config.write_text(yaml.safe_dump({"access": access.model_dump(mode="json")}))
        result = CliRunner().invoke(main, ["--config", str(config), "--root", str(root), "features", "--repo",
                                           str(REPO), "apply"])
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    store = open_store(str(root), REPO)
    foreign = Permission(name="team-readers", types=[], name_patterns=["team_.*"],
                         actions=[AuthzedAction.DESCRIBE], policy=RoleBasedPolicy(roles=["team"]))
    store.registry.apply_permission(foreign, store.project, commit=True)

    assert "created permission: medallion-analyst-read, medallion-loader-write" in medallion_apply(ACCESS)
    assert "is up to date" in medallion_apply(ACCESS)
    fewer = AccessSettings(enforce=True, roles={"analyst": ACCESS.roles["analyst"]})
    assert "deleted permission: medallion-loader-write, medallion-scientist-read" in medallion_apply(fewer)
    names = {p.name for p in store.registry.list_permissions(store.project)}
    assert names == {"medallion-analyst-read", "team-readers"}
    assert apply_repo(open_store(str(root), REPO), load_definitions(REPO)).changes == {}  # no `access`: left as is
    assert {p.name for p in store.registry.list_permissions(store.project)} == names

    medallion_apply(AccessSettings(enforce=False, roles=ACCESS.roles))
    assert [p.name for p in store.registry.list_permissions(store.project)] == ["team-readers"]


def test_the_server_refuses_to_start_without_authentication_or_applied_permissions(
        secured: FeatureStore, provider: Provider, tmp_path: Path) -> None:
    root = Path(secured.config.offline_store.root)
    unauthenticated = open_store(str(root), REPO)
    with pytest.raises(FeatureStoreError, match=r"no authentication.*auth: \{type: oidc"):
        build_app(unauthenticated, access=ACCESS)

    other_roles = AccessSettings(enforce=True, roles={"analyst": RoleGrant(read=("features.*",))})
    with pytest.raises(FeatureStoreError, match="medallion features apply"):
        build_app(secured, access=other_roles)

    config = tmp_path / "medallion.yaml"
    config.write_text(yaml.safe_dump({"access": ACCESS.model_dump(mode="json")}))
    result = CliRunner().invoke(main, ["--config", str(config), "--root", str(root), "features", "--repo",
                                       str(REPO), "serve", "--port", "1"])
    output = " ".join(result.output.split())
    assert result.exit_code == 1, output
    assert "no authentication" in output and "serving" not in output
