"""The built-in dashboard: an HTML page at ``/`` and its JSON API, read from ``tokenscale.usage_daily``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Final, Protocol

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route

from tokenscale.dashboard._page import CONTENT_SECURITY_POLICY, PAGE_HTML
from tokenscale.dashboard._queries import MAX_DAYS, summary
from tokenscale.errors import PermanentError, RetryableError

__all__ = ["DEFAULT_DAYS", "SUMMARY_PATH", "DashboardAuth", "create_dashboard_routes", "summary"]

log = logging.getLogger(__name__)

DEFAULT_DAYS: Final = 30
SUMMARY_PATH: Final = "/api/dashboard/summary"
_MAX_TENANT_CHARS: Final = 200
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


class _Principal(Protocol):
    @property
    def tenant(self) -> str: ...

    def require(self, scope: str) -> None: ...


class DashboardAuth(Protocol):
    """Who is asking (:class:`tokenscale.auth.AuthPolicy` fits): a principal, or an exception."""

    def principal(self, headers: Mapping[str, str]) -> _Principal: ...


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


def _auth_failure(exc: PermanentError) -> JSONResponse:
    # tokenscale.auth: AuthenticationError (no or bad key) -> 401, PermissionDeniedError -> 403.
    if type(exc).__name__ == "PermissionDeniedError":
        return _error(403, str(exc))
    return _error(401, str(exc) or "authentication required", {"WWW-Authenticate": "Bearer"})


def _read_summary(pool: ConnectionPool, days: int, tenant: str | None, timeout: float) -> dict[str, Any]:
    with pool.connection(timeout=timeout) as conn:
        return summary(conn, days, tenant)


def create_dashboard_routes(
    pool: ConnectionPool, *, auth: DashboardAuth | None = None, timeout: float = 10.0
) -> list[Route | Mount]:
    """``GET /`` (the page) and ``GET /api/dashboard/summary?days=30&tenant=T`` (its JSON).

    With ``auth`` (e.g. :class:`tokenscale.auth.AuthPolicy`), the JSON API needs a key with the
    ``read`` scope and is confined to the key's tenant; the page asks for a key when refused.
    Without it, every tenant's usage is readable by whoever reaches the port.
    """

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE_HTML, headers=_PAGE_HEADERS)

    async def summary_json(request: Request) -> Response:
        raw_days = request.query_params.get("days", str(DEFAULT_DAYS))
        try:
            days = int(raw_days)
        except ValueError:
            return _error(400, f"days: {raw_days!r} is not an integer")
        if not 1 <= days <= MAX_DAYS:
            return _error(400, f"days must be between 1 and {MAX_DAYS}")
        tenant = request.query_params.get("tenant") or None
        if tenant is not None and len(tenant) > _MAX_TENANT_CHARS:
            return _error(400, "tenant is too long")
        if auth is not None:
            headers = {k.lower(): v for k, v in request.headers.items()}
            try:
                principal = await asyncio.to_thread(auth.principal, headers)
                principal.require("read")
            except PermanentError as exc:
                return _auth_failure(exc)
            except RetryableError:  # the key store cannot be asked
                return _error(503, "database unavailable", {"Retry-After": "5"})
            if tenant is not None and tenant != principal.tenant:
                return _error(403, f"this API key cannot read tenant {tenant!r}")
            tenant = principal.tenant
        try:
            body = await asyncio.to_thread(_read_summary, pool, days, tenant, timeout)
        except psycopg.errors.UndefinedTable:
            return _error(503, "the tokenscale schema is not created (run `tokenscale migrate`)")
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("dashboard: database unavailable: %s", exc)
            return _error(503, "database unavailable", {"Retry-After": "5"})
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    return [
        Route("/", page, methods=["GET"], name="dashboard"),
        Route(SUMMARY_PATH, summary_json, methods=["GET"], name="dashboard_summary"),
    ]
