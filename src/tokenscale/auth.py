"""Tenants and API keys: hashed secrets, scopes, a short-lived cache, and the tenant of each request."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from tokenscale.errors import PermanentError, RetryableError
from tokenscale.pipeline import DEFAULT_TENANT
from tokenscale.tenants import tenant_uuid

__all__ = [
    "ANONYMOUS_TENANT",
    "DEFAULT_CACHE_SECONDS",
    "KEY_PREFIX",
    "SCOPES",
    "ApiKey",
    "AuthPolicy",
    "AuthenticationError",
    "KeyCache",
    "PermissionDeniedError",
    "Principal",
    "authenticate",
    "bearer_token",
    "create_key",
    "is_loopback",
    "list_keys",
    "revoke_key",
    "validate_tenant",
]

#: What a key may do: ``ingest`` (OTLP exports, pushes, recorded chat usage), ``read`` (listings,
#: series, budget checks), ``admin`` (everything, within its own tenant).
SCOPES: Final = ("ingest", "read", "admin")
#: Every secret starts with this, so a leaked one is recognisable (and cheap to reject when not).
KEY_PREFIX: Final = "tsk_"
#: Characters of the secret kept in clear for display (``tsk_`` and 8 more).
_DISPLAY_CHARS: Final = 12
_MAX_TOKEN_CHARS: Final = 256
#: How long an authentication answer is reused: a revoked key stops working within this time.
DEFAULT_CACHE_SECONDS: Final = 5.0
#: Seconds a key lookup waits for a pooled connection before the key store counts as unavailable.
DEFAULT_LOOKUP_TIMEOUT: Final = 4.0
#: While the database cannot be asked, a key found valid within this many seconds is still
#: accepted (its exports go to the outage spool): an outage does not turn into lost exports.
STALE_KEY_SECONDS: Final = 3600.0
DEFAULT_CACHE_ENTRIES: Final = 4096
#: The tenant of anonymous requests (loopback bind with authentication not required).
ANONYMOUS_TENANT: Final = DEFAULT_TENANT

_TENANT_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}$")

Connection = psycopg.Connection[Any]


class AuthenticationError(PermanentError):
    """No credentials, or credentials that name no live key (HTTP 401, gRPC UNAUTHENTICATED)."""


class PermissionDeniedError(PermanentError):
    """Valid credentials without the scope or tenant the request needs (HTTP 403, PERMISSION_DENIED)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant every query is confined to, and what the caller may do."""

    tenant: str
    scopes: frozenset[str]
    #: The API key's id; ``None`` for the anonymous loopback principal.
    key_id: str | None = None

    def allows(self, scope: str) -> bool:
        """Whether the caller holds ``scope`` (``admin`` holds every scope)."""
        return scope in self.scopes or "admin" in self.scopes

    def require(self, scope: str) -> None:
        """Raise :class:`PermissionDeniedError` unless the caller holds ``scope``."""
        if not self.allows(scope):
            raise PermissionDeniedError(f"this API key lacks the {scope!r} scope")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One API key as listed; the secret itself is never stored, only its SHA-256 hash."""

    id: str
    tenant: str
    name: str
    scopes: tuple[str, ...]
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def validate_tenant(tenant: str) -> str:
    """``tenant`` if it is a valid tenant (company) id, else :class:`ValueError`."""
    if not isinstance(tenant, str) or not _TENANT_RE.match(tenant):
        raise ValueError(
            f"invalid tenant {tenant!r}: 1-200 characters of letters, digits and ._:@+- "
            "(starting with a letter or digit)"
        )
    return tenant


def _validate_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    found = tuple(dict.fromkeys(scopes))
    unknown = [s for s in found if s not in SCOPES]
    if unknown or not found:
        raise ValueError(f"scopes must be a non-empty subset of {', '.join(SCOPES)}; got {list(found)}")
    return found


def _hash(secret: str) -> bytes:
    # The secret carries 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(secret.encode("utf-8")).digest()


def create_key(conn: Connection, tenant: str, scopes: Iterable[str], name: str = "") -> str:
    """Create a key for ``tenant`` and return its secret (``tsk_...``): shown this once, never stored."""
    validate_tenant(tenant)
    scope_list = _validate_scopes(scopes)
    if len(name) > 200 or "\x00" in name:
        raise ValueError("name: at most 200 characters, no NUL")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO tokenscale.api_keys (id, tenant, name, scopes, hash, prefix) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (uuid.uuid4(), tenant, name, list(scope_list), _hash(secret), secret[:_DISPLAY_CHARS]),
    )
    tenant_uuid(conn, tenant)  # the tenant's UUID (the seed APIs' company id) exists from its first key
    return secret


def list_keys(conn: Connection, tenant: str | None = None, *, include_revoked: bool = True) -> list[ApiKey]:
    """The keys of ``tenant`` (every tenant when ``None``), oldest first."""
    rows = conn.execute(
        "SELECT id, tenant, name, scopes, prefix, created_at, revoked_at FROM tokenscale.api_keys "
        "WHERE (%(tenant)s::text IS NULL OR tenant = %(tenant)s) "
        "AND (%(all)s OR revoked_at IS NULL) ORDER BY created_at, id",
        {"tenant": tenant, "all": include_revoked},
    ).fetchall()
    return [ApiKey(str(r[0]), r[1], r[2], tuple(r[3]), r[4], r[5], r[6]) for r in rows]


def revoke_key(conn: Connection, key: str, tenant: str | None = None) -> bool:
    """Revoke the key whose id or display prefix is ``key`` (within ``tenant`` when given).

    True if a live key was revoked. This process forgets it at once; other processes within
    :data:`DEFAULT_CACHE_SECONDS`. A prefix matching several live keys is refused (ValueError).
    """
    try:
        key_id: uuid.UUID | None = uuid.UUID(key)
    except ValueError:
        key_id = None
    if key_id is None and not key.startswith(KEY_PREFIX):
        raise ValueError(f"{key!r} is neither a key id nor a key prefix ({KEY_PREFIX}...)")
    params = {"id": key_id, "prefix": None if key_id is not None else key, "tenant": tenant}
    with conn.transaction():
        matches = conn.execute(
            "SELECT id FROM tokenscale.api_keys WHERE revoked_at IS NULL "
            "AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s) "
            "AND (id = %(id)s::uuid OR prefix = %(prefix)s::text) FOR UPDATE",
            params,
        ).fetchall()
        if len(matches) > 1:
            raise ValueError(f"prefix {key!r} matches {len(matches)} keys: revoke by id")
        if not matches:
            return False
        conn.execute("UPDATE tokenscale.api_keys SET revoked_at = now() WHERE id = %s", (matches[0][0],))
    _DEFAULT_CACHE.clear()
    return True


class KeyCache:
    """A bounded, thread-safe map from secret hash to the answer of the key lookup, kept ``ttl`` s."""

    def __init__(self, ttl: float = DEFAULT_CACHE_SECONDS, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[float, Principal | None]] = OrderedDict()
        self._lock = threading.Lock()
        #: Until when (monotonic) the key store counts as unreachable after a failed lookup.
        self.down_until = 0.0

    def get(self, digest: bytes) -> tuple[bool, Principal | None]:
        """``(found, principal)``; expired entries are not found."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None or entry[0] <= now:
                return False, None  # an expired answer is kept for :meth:`stale`
            self._entries.move_to_end(digest)
            return True, entry[1]

    def stale(self, digest: bytes, max_age: float) -> Principal | None:
        """The principal of a key found valid, its answer expired less than ``max_age`` s ago: used
        only while the database cannot be asked (its exports are spooled, not refused)."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(digest)
        if entry is None or entry[1] is None or now - entry[0] > max_age:
            return None
        return entry[1]

    def put(self, digest: bytes, principal: Principal | None) -> None:
        """Remember one answer (a miss too, so unknown tokens do not hit the database every time)."""
        with self._lock:
            self._entries[digest] = (time.monotonic() + self.ttl, principal)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every answer."""
        with self._lock:
            self._entries.clear()


_DEFAULT_CACHE = KeyCache()


def authenticate(
    source: Connection | ConnectionPool,
    token: str,
    *,
    cache: KeyCache | None = None,
    timeout: float = DEFAULT_LOOKUP_TIMEOUT,
) -> Principal | None:
    """The principal of the live key whose secret is ``token``, else ``None``.

    ``source`` is a connection or a pool (waited on for at most ``timeout`` s). Answers are cached
    (see :class:`KeyCache`), so revoking a key takes effect within the cache's TTL. While the
    database cannot answer, a key found valid within :data:`STALE_KEY_SECONDS` is still accepted;
    any other raises :class:`~tokenscale.errors.RetryableError` (503 / UNAVAILABLE, never a refusal
    of the key).
    """
    if not token.startswith(KEY_PREFIX) or len(token) > _MAX_TOKEN_CHARS or not token.isascii():
        return None
    cache = _DEFAULT_CACHE if cache is None else cache
    digest = _hash(token)
    found, principal = cache.get(digest)
    if found:
        return principal
    query = "SELECT id, tenant, scopes FROM tokenscale.api_keys WHERE hash = %s AND revoked_at IS NULL"
    if time.monotonic() < cache.down_until:  # the key store failed seconds ago: do not wait again
        stale = cache.stale(digest, STALE_KEY_SECONDS)
        if stale is not None:
            return stale
    try:
        if isinstance(source, ConnectionPool):
            with source.connection(timeout=timeout) as conn:
                row = conn.execute(query, (digest,)).fetchone()
        else:
            row = source.execute(query, (digest,)).fetchone()
    except (psycopg.OperationalError, PoolTimeout) as exc:
        cache.down_until = time.monotonic() + 5.0
        stale = cache.stale(digest, STALE_KEY_SECONDS)
        if stale is not None:
            return stale
        raise RetryableError("the API key store is unavailable") from exc
    principal = None if row is None else Principal(row[1], frozenset(row[2]), str(row[0]))
    cache.put(digest, principal)
    return principal


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The API key of a request: ``Authorization: Bearer <key>`` (or a bare key), else ``x-api-key``.

    Header (and gRPC metadata) names are matched case-insensitively.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get("authorization", "").strip()
    if value:
        scheme, _, rest = value.partition(" ")
        if rest and scheme.lower() == "bearer":
            return rest.strip() or None
        if not rest:
            return value  # some clients send the bare key
    api_key = lowered.get("x-api-key", "").strip()
    return api_key or None


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes a server to this machine only (``""`` means every interface)."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AuthPolicy:
    """Turns request headers into a :class:`Principal`: the one place that decides who is calling.

    Anonymous requests (no credentials at all) get the tenant :data:`ANONYMOUS_TENANT` with every
    scope only when ``allow_anonymous``; :meth:`for_bind` allows that solely on a loopback address
    with authentication not required. Wrong credentials are always refused, anonymous or not.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        allow_anonymous: bool = False,
        cache: KeyCache | None = None,
        timeout: float = DEFAULT_LOOKUP_TIMEOUT,
    ) -> None:
        self._pool = pool
        self.allow_anonymous = allow_anonymous
        self._cache = cache
        self.timeout = timeout

    @classmethod
    def for_bind(
        cls,
        pool: ConnectionPool,
        host: str,
        *,
        require_auth: bool,
        cache: KeyCache | None = None,
        timeout: float = DEFAULT_LOOKUP_TIMEOUT,
    ) -> AuthPolicy:
        """The policy of a server bound to ``host``: never anonymous off loopback."""
        return cls(pool, allow_anonymous=not require_auth and is_loopback(host), cache=cache, timeout=timeout)

    def principal(self, headers: Mapping[str, str]) -> Principal:
        """Who sent a request with these headers; :class:`AuthenticationError` when nobody valid.

        Blocking on a cache miss (one indexed query): call it from a worker thread.
        """
        token = bearer_token(headers)
        if token is None:
            if self.allow_anonymous:
                return Principal(ANONYMOUS_TENANT, frozenset(SCOPES))
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
        principal = authenticate(self._pool, token, cache=self._cache, timeout=self.timeout)
        if principal is None:
            raise AuthenticationError("invalid or revoked API key")
        return principal

    def tenant_for(self, headers: Mapping[str, str]) -> str:
        """The tenant of an OTLP export (HTTP headers or gRPC metadata): the key needs ``ingest``.

        Raises :class:`AuthenticationError` or :class:`PermissionDeniedError` (both permanent).
        """
        principal = self.principal(headers)
        principal.require("ingest")
        return principal.tenant
