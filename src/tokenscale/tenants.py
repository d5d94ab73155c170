"""Tenant ids: every tenant (company) keeps its name as the label rows are stored under, and has a UUID.

The seed APIs name a company by UUID (Bookmore's ``CompanyId``); :func:`tenant_uuid` gives a
tenant's UUID, making it on first use, and :func:`tenant_named` finds the tenant a request names,
by UUID or (where the seed allows a free string) by name. A tenant whose name is itself a UUID has
that UUID as its id. The pairs never change, so they are cached in-process.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any, Final

import psycopg
from psycopg_pool import ConnectionPool

__all__ = ["TenantIds", "as_uuid", "tenant_named", "tenant_uuid"]

Connection = psycopg.Connection[Any]

_CACHE_ENTRIES: Final = 4096


def as_uuid(value: str) -> uuid.UUID | None:
    """``value`` as a UUID (any of the spellings :class:`uuid.UUID` reads), else ``None``."""
    try:
        return uuid.UUID(value.strip())
    except (ValueError, AttributeError):
        return None


def tenant_uuid(conn: Connection, name: str) -> uuid.UUID:
    """The UUID of the tenant named ``name``, made on first use (committed with the caller's work)."""
    own = as_uuid(name)
    for candidate in (own, None) if own is not None else (None,):
        conn.execute(
            "INSERT INTO tokenscale.tenants (name, id) VALUES (%s, coalesce(%s, gen_random_uuid())) "
            "ON CONFLICT DO NOTHING",
            (name, candidate),
        )
        row = conn.execute("SELECT id FROM tokenscale.tenants WHERE name = %s", (name,)).fetchone()
        if row is not None:
            return uuid.UUID(str(row[0]))
    raise RuntimeError(f"tenant {name!r}: no id could be assigned")  # pragma: no cover - unreachable


def tenant_named(conn: Connection, named: str) -> str | None:
    """The name of the tenant whose UUID ``named`` spells, or ``None`` (also when it is no UUID)."""
    wanted = as_uuid(named)
    if wanted is None:
        return None
    row = conn.execute("SELECT name FROM tokenscale.tenants WHERE id = %s", (wanted,)).fetchone()
    return None if row is None else str(row[0])


class TenantIds:
    """Tenant UUIDs of one database, cached (a tenant's UUID never changes)."""

    def __init__(self, pool: ConnectionPool, *, timeout: float = 10.0) -> None:
        self.pool = pool
        self.timeout = timeout
        self._ids: dict[str, uuid.UUID] = {}
        self._lock = threading.Lock()

    def uuid_of(self, name: str) -> uuid.UUID:
        """The UUID of the tenant ``name`` (made on first use)."""
        with self._lock:
            cached = self._ids.get(name)
        if cached is not None:
            return cached
        with self.pool.connection(timeout=self.timeout) as conn:
            found = tenant_uuid(conn, name)
        with self._lock:
            if len(self._ids) >= _CACHE_ENTRIES:
                self._ids.clear()
            self._ids[name] = found
        return found

    def names(self, named: str, tenant: str, *, by_name: bool) -> bool:
        """Whether ``named`` (a UUID in any spelling, or the name when ``by_name``) names ``tenant``."""
        wanted = as_uuid(named)
        if wanted is not None and wanted == self.uuid_of(tenant):
            return True
        return by_name and named == tenant
