"""Roles from config, enforced where the engine reads, writes and manages tables, and rendered as S3 policies
that a real S3 endpoint with IAM enforcement honours."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError
from click.testing import CliRunner
from deltalake import DeltaTable

from engine import Runner
from engine.cli.main import main
from engine.config import Settings, load_settings
from engine.errors import AccessDenied, ConfigError, GovernanceError
from engine.governance.access import allowed, authorize, principal
from engine.governance.actor import ACTOR_ENV
from engine.governance.policies import bucket_policy, identity_policies
from engine.layout import Layout
from engine.training.dataset import TableReader
from tests.engine.test_runner import build_pipeline, write_orders

ROLES: dict[str, Any] = {
    "ingest": {"read": ["landing.*"], "write": ["bronze.*"]},
    "engineer": {"read": ["bronze.*", "silver.*", "gold.*", "quarantine.*"], "write": ["silver.*", "gold.*"],
                 "manage": ["silver.*", "gold.*"]},
    "analyst": {"read": ["gold.*"]},
}
ACCESS: dict[str, Any] = {"enforce": True, "roles": ROLES,
                          "members": {"ian": ["ingest"], "eve": ["engineer", "ingest"], "ann": ["analyst"]}}


def settings_for(root: Path, access: dict[str, Any] | None = None) -> Settings:
    return load_settings(overrides={"storage": {"root": str(root)}, "access": access or ACCESS})


@pytest.fixture
def as_actor(monkeypatch: pytest.MonkeyPatch) -> Any:
    return lambda name: monkeypatch.setenv(ACTOR_ENV, name)


def test_grants_match_tables_by_layer_and_name() -> None:
    access = settings_for(Path("/unused")).access
    ann, eve = principal(access, "ann"), principal(access, "eve")
    assert allowed(access, "read", "gold.daily_revenue", ann)
    assert not allowed(access, "read", "silver.orders", ann)
    assert not allowed(access, "write", "gold.daily_revenue", ann)
    assert allowed(access, "write", "quarantine.silver.orders", eve)  # a table's writer writes its quarantine
    assert allowed(access, "manage", "changes.silver.orders", eve)  # and manages its change log
    assert not allowed(access, "read", "quarantine.gold.x", ann)  # reading a quarantine is granted on its own
    assert principal(access, "stranger").roles == ()
    assert not allowed(access, "read", "gold.daily_revenue", principal(access, "stranger"))
    off = settings_for(Path("/unused"), {"roles": ROLES}).access
    assert allowed(off, "manage", "silver.orders", principal(off, "stranger"))


def test_a_refusal_names_the_actor_its_roles_the_action_and_the_table(as_actor: Any) -> None:
    as_actor("ann")
    access = settings_for(Path("/unused")).access
    with pytest.raises(AccessDenied, match=r"`ann` \(roles: analyst\) may not read `silver.orders`, which a "
                                           r"backfill needs.*access.roles.<role>.read") as refused:
        authorize(access, "read", ["gold.x", "silver.orders"], "a backfill")
    assert refused.value.table == "silver.orders" and isinstance(refused.value, GovernanceError)
    authorize(access, "read", ["gold.x", "gold.y"], "a report")


def test_roles_given_to_actors_must_be_declared() -> None:
    with pytest.raises(ConfigError, match=r"\['auditor'\].*access.roles"):
        settings_for(Path("/unused"), {"roles": ROLES, "members": {"ann": ["auditor"]}})


@pytest.mark.usefixtures("ray_local")
def test_runs_write_only_the_layers_their_roles_allow(tmp_path: Path, as_actor: Any) -> None:
    write_orders(tmp_path, "orders-1.jsonl", [{"order_id": 1, "status": "placed", "updated_at": "2026-01-01T00:00:00Z"}])
    settings, pipeline = settings_for(tmp_path), build_pipeline()
    layout = Layout.at(str(tmp_path))
    as_actor("ann")
    with pytest.raises(AccessDenied, match="`ann`.*may not write `bronze.orders`, `silver.orders`"):
        Runner(pipeline, settings).run()
    as_actor("ian")
    with pytest.raises(AccessDenied, match="`ian` \\(roles: ingest\\) may not write `silver.orders`"):
        Runner(pipeline, settings).run()
    assert not (tmp_path / "bronze").exists() and not DeltaTable.is_deltatable(layout.runs())  # refused up front
    assert Runner(pipeline, settings).run("bronze.orders").succeeded
    assert DeltaTable(layout.table("bronze.orders")).to_pyarrow_table().num_rows == 1
    as_actor("eve")
    assert Runner(pipeline, settings).run().succeeded
    assert DeltaTable(layout.table("gold.status_counts")).to_pyarrow_table().num_rows == 1
    as_actor("ann")
    assert TableReader(str(tmp_path), access=settings.access).read("gold.status_counts", ["status"]).count() == 1
    with pytest.raises(AccessDenied, match="may not read `silver.orders`, which building a training set needs"):
        TableReader(str(tmp_path), access=settings.access).read("silver.orders", ["status"])


def test_the_cli_refuses_reads_and_maintenance_outside_the_roles(tmp_path: Path, as_actor: Any) -> None:
    config = tmp_path / "medallion.yaml"
    config.write_text(yaml.safe_dump({"access": ACCESS}))

    def invoke(*args: str) -> tuple[int, str]:
        done = CliRunner().invoke(main, ["--root", str(tmp_path / "root"), "--config", str(config), *args])
        return done.exit_code, done.output

    as_actor("ann")
    assert invoke("access", "check", "read", "gold.daily_revenue") == (0, "allowed: read gold.daily_revenue\n")
    code, output = invoke("access", "check", "read", "silver.orders")
    assert code == 1 and "`ann` (roles: analyst) may not read `silver.orders`" in " ".join(output.split())
    for command in (["history", "silver.orders"], ["show", "quarantine.gold.x"], ["maintain", "vacuum", "gold.daily_revenue"],
                    ["restore", "gold.daily_revenue", "--version", "0"], ["maintain", "pin", "silver.x", "--who", "m"]):
        code, output = invoke(*command)
        assert code == 1 and "may not" in output, (command, output)
    code, output = invoke("access", "show")
    assert code == 0 and "roles: analyst" in output and "gold.*" in output


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{server._port}"
    finally:
        server.stop()


def test_rendered_iam_policies_are_enforced_by_an_s3_endpoint(s3_endpoint: str) -> None:
    from moto.core.authorization import enable_iam_authentication

    admin = {"endpoint_url": s3_endpoint, "region_name": "us-east-1", "aws_access_key_id": "admin",
             "aws_secret_access_key": "admin"}
    s3, iam = boto3.client("s3", **admin), boto3.client("iam", **admin)
    s3.create_bucket(Bucket="lake")
    for key in ("prod/silver/orders/_delta_log/0.json", "prod/gold/revenue/part-0.parquet",
                "prod/quarantine/silver/orders/part-0.parquet"):
        s3.put_object(Bucket="lake", Key=key, Body=b"data")
    clients = {}
    for role, document in identity_policies(settings_for(Path("/unused")).access, "s3://lake/prod").items():
        iam.create_user(UserName=role)
        arn = iam.create_policy(PolicyName=role, PolicyDocument=json.dumps(document))["Policy"]["Arn"]
        iam.attach_user_policy(UserName=role, PolicyArn=arn)
        key = iam.create_access_key(UserName=role)["AccessKey"]
        clients[role] = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                                     aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])

    def attempt(role: str, operation: str, key: str) -> str:
        extra = {"Body": b"new"} if operation == "put_object" else {}
        try:
            getattr(clients[role], operation)(Bucket="lake", Key=key, **extra)
        except ClientError as err:
            return str(err.response["Error"]["Code"])
        return "ok"

    with enable_iam_authentication():
        assert attempt("analyst", "get_object", "prod/gold/revenue/part-0.parquet") == "ok"
        assert attempt("analyst", "get_object", "prod/silver/orders/_delta_log/0.json") == "AccessDenied"
        assert attempt("analyst", "put_object", "prod/gold/revenue/part-1.parquet") == "AccessDenied"
        assert attempt("engineer", "put_object", "prod/gold/revenue/part-1.parquet") == "ok"
        assert attempt("engineer", "put_object", "prod/quarantine/silver/orders/part-1.parquet") == "ok"
        assert attempt("engineer", "put_object", "prod/bronze/orders/part-1.parquet") == "AccessDenied"
        assert attempt("engineer", "delete_object", "prod/gold/revenue/part-1.parquet") == "ok"
        assert attempt("ingest", "delete_object", "prod/gold/revenue/part-0.parquet") == "AccessDenied"
        assert attempt("ingest", "put_object", "prod/bronze/orders/part-0.parquet") == "ok"
        assert attempt("ingest", "get_object", "prod/quarantine/silver/orders/part-0.parquet") == "AccessDenied"


def test_the_bucket_policy_names_each_roles_principal() -> None:
    access = settings_for(Path("/unused")).access
    arns = {role: f"arn:aws:iam::123456789012:role/medallion-{role}" for role in ROLES}
    policy = bucket_policy(access, "s3://lake/prod", arns)
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["AnalystRead"]["Principal"] == {"AWS": arns["analyst"]}
    assert by_sid["AnalystRead"]["Resource"] == ["arn:aws:s3:::lake/prod/gold/*"]
    assert "AnalystWrite" not in by_sid and by_sid["EngineerManage"]["Action"][-1] == "s3:DeleteObject"
    assert by_sid["AnalystList"]["Condition"] == {"StringLike": {"s3:prefix": ["prod/gold/*"]}}
    with pytest.raises(GovernanceError, match=r"\['ingest'\] have no principal ARN"):
        bucket_policy(access, "s3://lake/prod", {r: a for r, a in arns.items() if r != "ingest"})
    with pytest.raises(GovernanceError, match="not one"):
        identity_policies(access, "/local/root")
