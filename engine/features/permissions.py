"""The roles of `access.roles` as Feast permissions, so that the feature server enforces them.

A role may read a feature view when one of its `read` patterns matches `features.<view>` (as in
`engine.governance.access`), and write it (materialize, push) when a `write` pattern does. Feast matches
permissions by object type and by regular expressions over object names, with the roles of the caller's
token (`RoleBasedPolicy`); so each role becomes, per action, one `Permission` named
`medallion-<role>-<action>` whose name patterns are its shell-style patterns with the `features.` prefix
taken off, translated to regular expressions with exactly `fnmatch`'s meaning (`features.customer_*` ->
`customer_.*`; `*` -> `.*`; `gold.*` -> nothing, so no permission).

Feast checks a feature service request against the service alone, not the views it serves. A role may
therefore read a service only when it may read every view the service serves (and every view those
on-demand views are computed from): `medallion-<role>-read-services` names those services exactly.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from feast import FeatureService, FeatureView, OnDemandFeatureView
from feast.permissions.action import AuthzedAction
from feast.permissions.permission import Permission
from feast.permissions.policy import RoleBasedPolicy

from engine.config import AccessSettings
from engine.governance.access import patterns

PREFIX = "medallion-"
RESOURCE_PREFIX = "features."
READ = [AuthzedAction.READ_ONLINE, AuthzedAction.READ_OFFLINE]
WRITE = [AuthzedAction.WRITE_ONLINE, AuthzedAction.WRITE_OFFLINE]
VIEW_TYPES: list[Any] = [FeatureView, OnDemandFeatureView]  # Feast annotates types as instances
SERVICE_TYPES: list[Any] = [FeatureService]
MANAGED_TAG = {"managed-by": "medallion"}


def view_patterns(pattern: str) -> list[str]:
    """Regular expressions matching exactly the view names `v` for which `features.<v>` matches the shell-style
    `pattern` (as `fnmatch.fnmatchcase`); empty when the pattern matches no feature view."""
    tokens = _tokens(pattern)
    states = _closure(tokens, {0})
    for char in RESOURCE_PREFIX:
        states = _closure(tokens, {after for state in states for after in _step(tokens, state, char)})
    regexes = list(dict.fromkeys("".join(_regex(t) for t in tokens[state:]) for state in sorted(states)
                                 if state < len(tokens)))
    return [".*"] if ".*" in regexes else regexes


def feast_permissions(access: AccessSettings, services: Mapping[str, Collection[str]] | None = None
                      ) -> list[Permission]:
    """One Feast permission per role and action (`read`, `write`) that concerns feature views, and per role
    one for the feature services all of whose views it may read.

    Args:
        access: the roles and their patterns (`enforce` is not looked at here).
        services: feature service name -> names of every view it reads (see `served_views`).
    """
    found: list[Permission] = []
    for role, grant in sorted(access.roles.items()):
        policy = RoleBasedPolicy(roles=[role])
        read = _regexes(patterns(grant, "read"))
        if read:
            found.append(Permission(name=f"{PREFIX}{role}-read", types=list(VIEW_TYPES), name_patterns=read,
                                    actions=list(READ), policy=policy, tags=dict(MANAGED_TAG)))
        readable = sorted(name for name, views in (services or {}).items()
                          if read and all(any(re.fullmatch(r, view) for r in read) for view in views))
        if readable:
            found.append(Permission(name=f"{PREFIX}{role}-read-services", types=list(SERVICE_TYPES),
                                    name_patterns=[re.escape(name) for name in readable], actions=list(READ),
                                    policy=policy, tags=dict(MANAGED_TAG)))
        write = _regexes(patterns(grant, "write"))
        if write:
            found.append(Permission(name=f"{PREFIX}{role}-write", types=list(VIEW_TYPES), name_patterns=write,
                                    actions=list(WRITE), policy=policy, tags=dict(MANAGED_TAG)))
    return found


def served_views(services: Iterable[FeatureService], on_demand: Iterable[OnDemandFeatureView]
                 ) -> dict[str, list[str]]:
    """Feature service name -> the views it reads: its projections, and the views its on-demand views are
    computed from."""
    sources = {odfv.name: [p.name for p in odfv.source_feature_view_projections.values()] for odfv in on_demand}
    served: dict[str, list[str]] = {}
    for service in services:
        names = [p.name for p in service.feature_view_projections]
        served[service.name] = sorted({*names, *(s for n in names for s in sources.get(n, []))})
    return served


def is_managed(permission: Permission) -> bool:
    """Whether `permission` is one `feast_permissions` makes (and `apply_repo` replaces)."""
    return permission.name.startswith(PREFIX)


def _regexes(grants: Sequence[str]) -> list[str]:
    found = list(dict.fromkeys(r for pattern in grants for r in view_patterns(pattern)))
    return [".*"] if ".*" in found else found


def _tokens(pattern: str) -> list[str]:
    """`pattern` split into `*`, `?`, `[...]` classes and literal characters, as `fnmatch` reads it."""
    tokens, i = [], 0
    while i < len(pattern):
        if pattern[i] == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] == "!":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            while j < len(pattern) and pattern[j] != "]":
                j += 1
            if j < len(pattern):
                tokens.append(pattern[i:j + 1])
                i = j + 1
                continue
        tokens.append(pattern[i])
        i += 1
    return tokens


def _closure(tokens: list[str], states: set[int]) -> set[int]:
    """States reachable by letting `*` match nothing."""
    found, todo = set(states), list(states)
    while todo:
        state = todo.pop()
        if state < len(tokens) and tokens[state] == "*" and state + 1 not in found:
            found.add(state + 1)
            todo.append(state + 1)
    return found


def _step(tokens: list[str], state: int, char: str) -> list[int]:
    if state >= len(tokens):
        return []
    token = tokens[state]
    if token == "*":
        return [state]
    if token == "?" or (len(token) > 1 and fnmatch.fnmatchcase(char, token)) or token == char:
        return [state + 1]
    return []


def _regex(token: str) -> str:
    if token == "*":
        return ".*"
    if token == "?":
        return "."
    if len(token) > 1:
        return fnmatch.translate(token).removeprefix("(?s:").removesuffix(")\\Z")
    return re.escape(token)
