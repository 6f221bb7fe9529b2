"""Roles and what they may do: read, write or manage tables, by layer or by table, declared in config.

A resource is a table (`silver.orders`), a quarantine (`quarantine.silver.orders`), a landing folder
(`landing.orders`) or a feature view (`features.customer_stats`); a grant is a shell-style pattern over
resource names (`silver.*`, `gold.daily_revenue`, `*`). `write` and `manage` (maintenance, restore, erasure)
on a table cover its quarantine and change log; reading a quarantine needs a grant of its own. The actor (`$MEDALLION_ACTOR`, else the operating-
system user) has the roles `access.members` gives it, else `access.default_roles`.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from engine.errors import AccessDenied
from engine.governance.actor import current_actor

if TYPE_CHECKING:
    from engine.config import AccessSettings, RoleGrant

Action = Literal["read", "write", "manage"]
ACTIONS: tuple[Action, ...] = ("read", "write", "manage")
QUARANTINE_PREFIX = "quarantine."
CHANGES_PREFIX = "changes."
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    """Who acts, and with which roles."""

    actor: str
    roles: tuple[str, ...]


def principal(settings: AccessSettings, actor: str | None = None) -> Principal:
    """The principal of `actor` (the current actor when None)."""
    name = actor or current_actor()
    return Principal(name, tuple(settings.members.get(name, settings.default_roles)))


def patterns(grant: RoleGrant, action: Action) -> tuple[str, ...]:
    """The resource patterns `grant` allows for `action`."""
    return {"read": grant.read, "write": grant.write, "manage": grant.manage}[action]


def governing(resource: str, action: Action) -> str:
    """The resource whose grants decide `action` on `resource`: a change log is its table's; a quarantine
    is its table's for writing and managing, its own for reading (it keeps rejected rows as they came)."""
    resource = resource.removeprefix(CHANGES_PREFIX)
    return resource if action == "read" else resource.removeprefix(QUARANTINE_PREFIX)


def granting_roles(settings: AccessSettings, who: Principal, action: Action, resource: str) -> list[str]:
    """The roles of `who` that allow `action` on `resource`."""
    name = governing(resource, action)
    return [role for role in who.roles if role in settings.roles
            and any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns(settings.roles[role], action))]


def allowed(settings: AccessSettings, action: Action, resource: str, who: Principal | None = None) -> bool:
    """Whether `who` (the current principal when None) may `action` `resource`; always True when access
    control is off."""
    if not settings.enforce:
        return True
    return bool(granting_roles(settings, who or principal(settings), action, resource))


def authorize(settings: AccessSettings, action: Action, resources: Iterable[str], purpose: str) -> None:
    """Check that the current principal may `action` every resource before anything is read or written.

    Raises:
        AccessDenied: names the actor, its roles, the action, the resources refused and `purpose`.
    """
    if not settings.enforce:
        return
    who = principal(settings)
    refused = [r for r in dict.fromkeys(resources) if not granting_roles(settings, who, action, r)]
    if not refused:
        return
    roles = ", ".join(who.roles) or "none"
    log.warning("access denied: `%s` (roles: %s) may not %s %s", who.actor, roles, action, ", ".join(refused))
    raise AccessDenied(
        f"`{who.actor}` (roles: {roles}) may not {action} {', '.join(f'`{r}`' for r in refused)}, which "
        f"{purpose} needs; grant it to one of the actor's roles under `access.roles.<role>.{action}`, or give "
        f"the actor a role that has it under `access.members`", table=refused[0])


def landing_of(directory: str) -> str:
    """The resource name of a landing folder."""
    return f"landing.{directory.strip('/').replace('/', '.')}"


def feature_view(name: str) -> str:
    """The resource name of a feature view."""
    return f"features.{name}"
