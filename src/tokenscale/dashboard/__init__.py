"""The built-in dashboard: an HTML page at ``/`` and its JSON API, read from ``tokenscale.usage_daily``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route

from tokenscale.dashboard._docs import DOCS_CONTENT_SECURITY_POLICY, DOCS_HTML
from tokenscale.dashboard._explorer import (
    FILTERS,
    GROUPS,
    MAX_LIMIT,
    SORTS,
    Range,
    groups,
    hourly,
    parse_moment,
    requests,
)
from tokenscale.dashboard._page import CONTENT_SECURITY_POLICY, PAGE_HTML
from tokenscale.dashboard._queries import MAX_DAYS, summary
from tokenscale.errors import PermanentError, RetryableError

__all__ = [
    "DEFAULT_DAYS",
    "GROUPS_PATH",
    "HOURLY_PATH",
    "REQUESTS_PATH",
    "SUMMARY_PATH",
    "DashboardAuth",
    "create_dashboard_routes",
    "summary",
]

log = logging.getLogger(__name__)

DEFAULT_DAYS: Final = 30
SUMMARY_PATH: Final = "/api/dashboard/summary"
REQUESTS_PATH: Final = "/api/dashboard/requests"
GROUPS_PATH: Final = "/api/dashboard/groups"
HOURLY_PATH: Final = "/api/dashboard/hourly"
_MAX_TENANT_CHARS: Final = 200
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
_DOCS_HEADERS: Final = {**_PAGE_HEADERS, "Content-Security-Policy": DOCS_CONTENT_SECURITY_POLICY}


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


def _read(pool: ConnectionPool, timeout: float, function: Any, *args: Any, **kwargs: Any) -> Any:
    with pool.connection(timeout=timeout) as conn:
        return function(conn, *args, **kwargs)


class _RefusedError(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def create_dashboard_routes(
    pool: ConnectionPool,
    *,
    auth: DashboardAuth | None = None,
    timeout: float = 10.0,
    admin_tenant: str = "",
) -> list[Route | Mount]:
    """``GET /`` (the page), its JSON API under ``/api/dashboard/`` and ``GET /docs``.

    ``summary?days=30&tenant=T`` (or ``since``/``until`` dates instead of ``days``): totals, daily
    series, rankings and budgets. ``requests?since=&until=&user=&tool=&model=&session=&conversation=
    &sort=&order=&limit=``: the usage events themselves. ``groups?by=session|conversation``: sessions
    or conversations. ``hourly?since=&until=``: usage per UTC hour.

    With ``auth`` (e.g. :class:`tokenscale.auth.AuthPolicy`), the JSON API needs a key with the
    ``read`` scope and is confined to the key's tenant; the page asks for a key when refused. Two
    callers read across tenants (the admin view): an ``admin`` key of ``admin_tenant`` (when set), and
    the anonymous caller of a loopback bind without ``require_auth`` (the operator at the machine).
    Without ``auth``, every tenant's usage is readable by whoever reaches the port.
    """

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE_HTML, headers=_PAGE_HEADERS)

    async def docs(request: Request) -> Response:
        return HTMLResponse(DOCS_HTML, headers=_DOCS_HEADERS)

    async def scope(request: Request) -> tuple[str | None, bool]:
        """The tenant to confine the read to (None: every tenant) and whether the caller may read
        across tenants; raises _RefusedError."""
        tenant = request.query_params.get("tenant") or None
        if tenant is not None and len(tenant) > _MAX_TENANT_CHARS:
            raise _RefusedError(_error(400, "tenant is too long"))
        if auth is None:
            return tenant, True
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            principal = await asyncio.to_thread(auth.principal, headers)
            principal.require("read")
        except PermanentError as exc:
            raise _RefusedError(_auth_failure(exc)) from None
        except RetryableError:  # the key store cannot be asked
            raise _RefusedError(_error(503, "database unavailable", {"Retry-After": "5"})) from None
        key_id = getattr(principal, "key_id", "")
        admin = key_id is None or bool(
            admin_tenant and principal.tenant == admin_tenant and _allows(principal, "admin")
        )
        if admin:
            return tenant, True
        if tenant is not None and tenant != principal.tenant:
            raise _RefusedError(_error(403, f"this API key cannot read tenant {tenant!r}"))
        return principal.tenant, False

    async def read(function: Any, *args: Any, **kwargs: Any) -> Response:
        try:
            body = await asyncio.to_thread(_read, pool, timeout, function, *args, **kwargs)
        except psycopg.errors.UndefinedTable:
            return _error(503, "the tokenscale schema is not created (run `tokenscale migrate`)")
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("dashboard: database unavailable: %s", exc)
            return _error(503, "database unavailable", {"Retry-After": "5"})
        except ValueError as exc:
            return _error(400, str(exc))
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    def time_range(request: Request, default_days: int = DEFAULT_DAYS) -> Range:
        query = request.query_params
        try:
            until = parse_moment(query["until"], end=True) if "until" in query else None
            since = parse_moment(query["since"]) if "since" in query else None
        except ValueError as exc:
            raise _RefusedError(_error(400, str(exc))) from None
        if until is None:
            until = datetime.combine(datetime.now(UTC).date() + timedelta(days=1), datetime.min.time(), UTC)
        if since is None:
            since = until - timedelta(days=default_days)
        # Lenient, as a date picker's user expects: a range given backwards is the same range, an
        # empty one the instant it names, a longer one its last MAX_DAYS - 1 days (so at most
        # MAX_DAYS calendar days).
        if until < since:
            since, until = until, since
        if until == since:
            until = since + timedelta(microseconds=1)
        since = max(since, until - timedelta(days=MAX_DAYS - 1))
        return Range(since, until)

    def filters(request: Request) -> dict[str, str]:
        found = {}
        for name in FILTERS:
            value = request.query_params.get(name)
            if value is not None and value != "":
                if len(value) > _MAX_TENANT_CHARS * 5:
                    raise _RefusedError(_error(400, f"{name} is too long"))
                found[name] = value
        return found

    async def summary_json(request: Request) -> Response:
        try:
            tenant, admin = await scope(request)
            query = request.query_params
            first = last = None
            if "since" in query or "until" in query:
                rng = time_range(request)
                first = rng.since.date()
                last = (rng.until - timedelta(microseconds=1)).date()
                days = (last - first).days + 1
            else:
                raw_days = query.get("days", str(DEFAULT_DAYS))
                try:
                    days = int(raw_days)
                except ValueError:
                    return _error(400, f"days: {raw_days!r} is not an integer")
                if not 1 <= days <= MAX_DAYS:
                    return _error(400, f"days must be between 1 and {MAX_DAYS}")
        except _RefusedError as refused:
            return refused.response
        response = await read(summary, days, tenant, first=first, last=last)
        if isinstance(response, JSONResponse) and response.status_code == 200:
            body = json.loads(bytes(response.body))
            body["admin"] = admin
            return JSONResponse(body, headers={"Cache-Control": "no-store"})
        return response

    async def requests_json(request: Request) -> Response:
        query = request.query_params
        try:
            tenant, _ = await scope(request)
            rng = time_range(request)
            found = filters(request)
        except _RefusedError as refused:
            return refused.response
        sort = query.get("sort", "time")
        if sort not in SORTS:
            return _error(400, f"sort must be one of {', '.join(SORTS)}")
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            return _error(400, "order must be asc or desc")
        try:
            limit = int(query.get("limit", "1000"))
        except ValueError:
            return _error(400, "limit must be an integer")
        if not 1 <= limit <= MAX_LIMIT:
            return _error(400, f"limit must be between 1 and {MAX_LIMIT}")
        return await read(
            requests,
            rng,
            tenant,
            found,
            sort=sort,
            descending=order == "desc",
            limit=limit,
            counted_only=query.get("all") not in ("1", "true"),
        )

    async def groups_json(request: Request) -> Response:
        try:
            tenant, _ = await scope(request)
            rng = time_range(request)
            found = filters(request)
        except _RefusedError as refused:
            return refused.response
        by = request.query_params.get("by", "session")
        if by not in GROUPS:
            return _error(400, f"by must be one of {', '.join(GROUPS)}")
        return await read(groups, rng, tenant, found, by)

    async def hourly_json(request: Request) -> Response:
        try:
            tenant, _ = await scope(request)
            rng = time_range(request, default_days=2)
        except _RefusedError as refused:
            return refused.response
        # The hourly view covers at most its last 62 days.
        return await read(hourly, Range(max(rng.since, rng.until - timedelta(days=62)), rng.until), tenant)

    return [
        Route("/", page, methods=["GET"], name="dashboard"),
        Route("/docs", docs, methods=["GET"], name="api_docs"),
        Route(SUMMARY_PATH, summary_json, methods=["GET"], name="dashboard_summary"),
        Route(REQUESTS_PATH, requests_json, methods=["GET"], name="dashboard_requests"),
        Route(GROUPS_PATH, groups_json, methods=["GET"], name="dashboard_groups"),
        Route(HOURLY_PATH, hourly_json, methods=["GET"], name="dashboard_hourly"),
    ]


def _allows(principal: Any, scope: str) -> bool:
    allows = getattr(principal, "allows", None)
    return bool(allows(scope)) if allows is not None else False
