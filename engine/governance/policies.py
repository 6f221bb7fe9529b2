"""The roles of `access` as object-store policy documents: one AWS IAM identity policy per role, or one bucket
policy for all of them, so that storage refuses what the engine refuses.

Resources map to key prefixes under the root: `silver.orders` -> `<prefix>/silver/orders/`, `silver.*` ->
`<prefix>/silver/`, `quarantine.silver.orders` -> `<prefix>/quarantine/silver/orders/`, `landing.orders` ->
`<prefix>/landing/orders/`. Writing a table also writes its quarantine and change log, stages files under
`_staging/` and appends run records and check results under `_meta/`; every writer and reader reads the
Delta log it commits to or reads from. Feature views are served by the feature server, not read from
storage, so `features.*` grants have no storage statement.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from engine.config import AccessSettings
from engine.errors import GovernanceError
from engine.governance.access import ACTIONS, Action, patterns
from engine.layout import META, STAGING

VERSION = "2012-10-17"
OBJECT_ACTIONS: dict[Action, list[str]] = {
    "read": ["s3:GetObject"],
    "write": ["s3:GetObject", "s3:PutObject"],
    "manage": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
}
WRITER_FOLDERS = (STAGING, META)


def split_s3_root(root: str) -> tuple[str, str]:
    """(bucket, key prefix) of an `s3://bucket/prefix` root.

    Raises:
        GovernanceError: the root is not an `s3://` URI.
    """
    if not root.startswith("s3://"):
        raise GovernanceError(f"storage policies are for `s3://bucket/prefix` roots; `{root}` is not one")
    bucket, _, prefix = root.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def key_prefixes(pattern: str, action: Action) -> list[str]:
    """The key prefixes (relative to the root, ending in `/` or `*`) a grant pattern stands for.

    Raises:
        GovernanceError: the pattern uses `[...]`, which storage policies cannot express.
    """
    if "[" in pattern:
        raise GovernanceError(f"grant pattern `{pattern}` uses `[...]`, which bucket policies cannot express; "
                              "list the tables instead")
    if pattern.startswith("features."):
        return []
    if pattern == "*":
        return ["*"]
    path = pattern.replace(".", "/")
    prefix = path if path.endswith("*") else f"{path}/"
    if action == "read" or pattern.startswith(("landing.", "quarantine.")):
        return [prefix]
    return [prefix, f"quarantine/{prefix}", f"_changes/{prefix}"]


def role_statements(bucket: str, prefix: str, grants: dict[Action, Iterable[str]], sid: str) -> list[dict[str, Any]]:
    """The statements of one role: object actions on its prefixes, listing of them, and for writers the
    staging and metadata folders."""
    base = f"{prefix}/" if prefix else ""
    statements: list[dict[str, Any]] = []
    listed: list[str] = []
    for action in ACTIONS:
        keys = [k for pattern in grants.get(action, ()) for k in key_prefixes(pattern, action)]
        if action != "read" and keys:
            keys += [f"{folder}/*" if folder == STAGING else f"{folder}/" for folder in WRITER_FOLDERS]
        keys = list(dict.fromkeys(keys))
        if not keys:
            continue
        listed += keys
        statements.append({
            "Sid": f"{sid}{action.capitalize()}",
            "Effect": "Allow",
            "Action": OBJECT_ACTIONS[action],
            "Resource": [f"arn:aws:s3:::{bucket}/{base}{_wildcard(k)}" for k in keys],
        })
    if listed:
        statements.append({
            "Sid": f"{sid}List",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{bucket}"],
            "Condition": {"StringLike": {"s3:prefix": [f"{base}{_wildcard(k)}" for k in dict.fromkeys(listed)]}},
        })
    return statements


def identity_policies(settings: AccessSettings, root: str) -> dict[str, dict[str, Any]]:
    """One IAM identity policy per role, to attach to the IAM role or user that acts in it."""
    bucket, prefix = split_s3_root(root)
    return {role: {"Version": VERSION,
                   "Statement": role_statements(bucket, prefix, _grants(settings, role), _sid(role))}
            for role in settings.roles}


def bucket_policy(settings: AccessSettings, root: str, principals: dict[str, str]) -> dict[str, Any]:
    """One bucket policy granting each role's statements to its principal ARN.

    Raises:
        GovernanceError: a role has no principal ARN.
    """
    bucket, prefix = split_s3_root(root)
    missing = sorted(set(settings.roles) - set(principals))
    if missing:
        raise GovernanceError(f"roles {missing} have no principal ARN; give `--principal ROLE=ARN` for each")
    statements = [statement | {"Principal": {"AWS": principals[role]}}
                  for role in settings.roles
                  for statement in role_statements(bucket, prefix, _grants(settings, role), _sid(role))]
    return {"Version": VERSION, "Statement": statements}


def render(document: dict[str, Any]) -> str:
    """A policy document as indented JSON."""
    return json.dumps(document, indent=2) + "\n"


def _grants(settings: AccessSettings, role: str) -> dict[Action, Iterable[str]]:
    return {action: patterns(settings.roles[role], action) for action in ACTIONS}


def _sid(role: str) -> str:
    return "".join(part.capitalize() for part in role.replace("-", "_").split("_") if part.isalnum())


def _wildcard(key: str) -> str:
    return key if key.endswith("*") else f"{key}*"
