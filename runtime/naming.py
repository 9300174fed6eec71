"""Resource naming and tenant scoping, written once.

A namespace lives inside a tenant. Components receive the opaque scoped key ``"<tenant>/<namespace>"``;
since neither part may contain ``/``, two tenants can never produce the same key.
"""

from __future__ import annotations

import contextvars
import fnmatch
import re
from dataclasses import dataclass

from core.errors import InvalidArgumentError, PermissionDeniedError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
NAME_RULE = "1-128 characters of letters, digits, '_', '.', ':' or '-', starting with a letter or digit"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant its token maps to and what the token allows."""

    tenant: str
    namespaces: tuple[str, ...] = ("*",)
    read_only: bool = False

    def may_use(self, namespace: str) -> bool:
        return any(fnmatch.fnmatchcase(namespace, pattern) for pattern in self.namespaces)


DEFAULT_TENANT = "default"
ANONYMOUS = Principal(DEFAULT_TENANT)

# Set by the server's call wrapper for the duration of one RPC.
current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "current_principal", default=ANONYMOUS
)


def validate_name(value: str, field_name: str) -> str:
    """Return ``value`` if it is a valid tenant/namespace name, else raise InvalidArgumentError naming the field."""
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(field_name, "must not be empty")
    if not _NAME.match(value):
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise InvalidArgumentError(field_name, f"{shown!r} is not a valid name: {NAME_RULE}")
    return value


def scoped_namespace(namespace: str, *, write: bool = False, field_name: str = "namespace") -> str:
    """The scoped key of ``namespace`` for the calling principal; checks the token's permissions."""
    validate_name(namespace, field_name)
    principal = current_principal.get()
    if not principal.may_use(namespace):
        raise PermissionDeniedError(f"this token may not use namespace {namespace!r}")
    if write and principal.read_only:
        raise PermissionDeniedError("this token is read-only")
    return f"{principal.tenant}/{namespace}"


def split_scoped(key: str) -> tuple[str, str]:
    """(tenant, namespace) of a scoped key."""
    tenant, _, namespace = key.partition("/")
    return tenant, namespace


def require_writable() -> None:
    """Raise PermissionDeniedError when the caller's token is read-only."""
    if current_principal.get().read_only:
        raise PermissionDeniedError("this token is read-only")
