"""The budget alerts' HTTP API: recent alerts, webhooks, thresholds, and the check with its forecast.

``GET /v1/alerts`` (read), ``GET|POST /v1/alerts/webhooks`` and ``DELETE /v1/alerts/webhooks/{id}``
(listing: read; changes: admin), ``PUT /v1/budgets/{id}/thresholds`` (admin) and
``GET /v1/budgets/forecast`` (read): the budget check's answer with each window's burn rate and
``forecastExhaustedAt`` added. Every route is confined to the API key's tenant; errors are the
``/v1`` routes' ``{"error", "message", "field"}``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tokenscale.alerts import DEFAULT_PERCENTS as _DEFAULT_PERCENTS
from tokenscale.alerts import (
    FORMATS,
    WindowReading,
    add_webhook,
    get_thresholds,
    list_alerts,
    list_webhooks,
    remove_webhook,
    scope_usage,
    set_thresholds,
)
from tokenscale.api._errors import InvalidRequestError, NotFoundError, classify
from tokenscale.api.scoped_budgets import check_budgets, iso
from tokenscale.api.service import UsageApiService, identity_from_query

__all__ = ["create_alert_routes"]

#: The largest JSON body these routes take.
MAX_BODY_BYTES: Final = 64 * 1024
MAX_ALERTS: Final = 500
T = TypeVar("T")


def _error(exc: BaseException) -> Response:
    failure = classify(exc)
    body: dict[str, Any] = {"error": failure.code, "message": failure.message}
    if failure.field is not None:
        body["field"] = failure.field
    headers = {"WWW-Authenticate": 'Bearer realm="tokenscale"'} if failure.http_status == 401 else None
    return JSONResponse(body, failure.http_status, headers=headers)


async def _body(request: Request) -> Any:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise InvalidRequestError(f"request body exceeds the limit of {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(bytes(body))
    except ValueError:
        raise InvalidRequestError("request body: not a JSON object") from None


def create_alert_routes(service: UsageApiService) -> list[BaseRoute]:
    """The routes above, over ``service``'s pool and key checks."""

    async def run(function: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(function, *args)

    def recent(headers: dict[str, str], query: dict[str, str]) -> dict[str, Any]:
        principal = service.principal(headers, "read")
        unknown = sorted(set(query) - {"limit"})
        if unknown:
            raise InvalidRequestError(f"{unknown[0]}: unknown query parameter", field=unknown[0])
        raw = query.get("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_ALERTS:
            raise InvalidRequestError(f"limit: a whole number from 1 to {MAX_ALERTS}", field="limit")
        with service.pool.connection(timeout=service.timeout) as conn:
            alerts = list_alerts(conn, principal.tenant, limit=int(raw))
        return {"alerts": [{**a.as_json(), "deliveries": list(a.deliveries)} for a in alerts]}

    def webhooks(headers: dict[str, str]) -> dict[str, Any]:
        principal = service.principal(headers, "read")
        with service.pool.connection(timeout=service.timeout) as conn:
            return {"webhooks": [w.as_json() for w in list_webhooks(conn, principal.tenant)]}

    def add(headers: dict[str, str], body: Any) -> dict[str, Any]:
        principal = service.principal(headers, "admin")
        if (
            not isinstance(body, dict)
            or set(body) - {"url", "format"}
            or not isinstance(body.get("url"), str)
        ):
            raise InvalidRequestError('the body must be {"url": "https://...", "format": "json" | "slack"}')
        fmt = body.get("format", "json")
        if fmt not in FORMATS:
            raise InvalidRequestError(f"format: one of {', '.join(FORMATS)}", field="format")
        with service.pool.connection(timeout=service.timeout) as conn:
            try:
                return add_webhook(conn, principal.tenant, body["url"], fmt).as_json()
            except ValueError as exc:
                raise InvalidRequestError(f"url: {exc}", field="url") from None

    def delete(headers: dict[str, str], webhook_id: str) -> dict[str, Any]:
        principal = service.principal(headers, "admin")
        with service.pool.connection(timeout=service.timeout) as conn:
            if not remove_webhook(conn, webhook_id, principal.tenant):
                raise NotFoundError(f"no webhook {webhook_id[:80]!r} in this tenant")
        return {"id": webhook_id, "deleted": True}

    def thresholds(headers: dict[str, str], budget_id: str, body: Any) -> dict[str, Any]:
        principal = service.principal(headers, "admin")
        if not isinstance(body, dict) or set(body) != {"percents"} or not isinstance(body["percents"], list):
            raise InvalidRequestError('the body must be {"percents": [50, 80, 100]}')
        if not all(isinstance(p, int | float) and not isinstance(p, bool) for p in body["percents"]):
            raise InvalidRequestError("percents: numbers", field="percents")
        with service.pool.connection(timeout=service.timeout) as conn:
            try:
                percents = set_thresholds(conn, principal.tenant, budget_id, body["percents"])
            except LookupError:
                raise NotFoundError(f"no budget {budget_id[:80]!r} in this tenant") from None
            except ValueError as exc:
                raise InvalidRequestError(f"percents: {exc}", field="percents") from None
        return {"budgetId": budget_id, "percents": [_plain(p) for p in percents]}

    def forecast(headers: dict[str, str], query: dict[str, str]) -> dict[str, Any]:
        principal = service.principal(headers, "read")
        identity = identity_from_query(query)
        with service.pool.connection(timeout=service.timeout) as conn:
            answer = check_budgets(
                conn,
                principal.tenant,
                identity,
                company_budget=service.default_budget,
                team_attribute=service.team_attribute,
            )
            now = datetime.fromisoformat(answer["checkedAt"].replace("Z", "+00:00")).astimezone(UTC)
            set_percents = get_thresholds(conn, principal.tenant)
            hours: dict[tuple[str, str | None], dict[int, Any]] = {}
            for w in answer["windows"]:
                key = (w["scope"], w["scopeValue"])
                hours.setdefault(key, {})[w["windowSeconds"]] = None
            for (scope, value), seconds in hours.items():
                hours[(scope, value)] = scope_usage(
                    conn, principal.tenant, scope, value, list(seconds), now, service.team_attribute
                )
        for w in answer["windows"]:
            usage = hours[(w["scope"], w["scopeValue"])][w["windowSeconds"]]
            reading = WindowReading(
                principal.tenant,
                w["budgetId"],
                w["scope"],
                w["scopeValue"],
                w["unit"],
                Decimal(str(w["limit"])),
                Decimal(str(w["used"])),
                w["windowSeconds"],
                now,
                usage.buckets(w["unit"]),
            )
            f = reading.forecast()
            w["ratePerHour"] = f.rate_per_hour
            w["forecastExhaustedAt"] = None if f.exhausted_at is None else iso(f.exhausted_at)
            w["thresholds"] = [
                _plain(p) for p in set_percents.get((principal.tenant, w["budgetId"]), _DEFAULT_PERCENTS)
            ]
        return answer

    async def get_recent(request: Request) -> Response:
        try:
            result = await run(recent, dict(request.headers), dict(request.query_params))
        except Exception as exc:
            return _error(exc)
        return JSONResponse(result, headers={"Cache-Control": "no-store"})

    async def get_webhooks(request: Request) -> Response:
        try:
            result = await run(webhooks, dict(request.headers))
        except Exception as exc:
            return _error(exc)
        return JSONResponse(result)

    async def post_webhook(request: Request) -> Response:
        try:
            result = await run(add, dict(request.headers), await _body(request))
        except Exception as exc:
            return _error(exc)
        return JSONResponse(result, 201)

    async def delete_webhook(request: Request) -> Response:
        try:
            result = await run(delete, dict(request.headers), request.path_params["webhook_id"])
        except Exception as exc:
            return _error(exc)
        return JSONResponse(result)

    async def put_thresholds(request: Request) -> Response:
        try:
            result = await run(
                thresholds, dict(request.headers), request.path_params["budget_id"], await _body(request)
            )
        except Exception as exc:
            return _error(exc)
        return JSONResponse(result)

    async def get_forecast(request: Request) -> Response:
        try:
            result = await run(forecast, dict(request.headers), dict(request.query_params))
        except Exception as exc:
            return _error(exc)
        return JSONResponse(result, headers={"Cache-Control": "no-store"})

    return [
        Route("/v1/alerts", get_recent, methods=["GET"], name="v1_alerts"),
        Route("/v1/alerts/webhooks", get_webhooks, methods=["GET"], name="v1_alert_webhooks"),
        Route("/v1/alerts/webhooks", post_webhook, methods=["POST"], name="v1_alert_webhooks_add"),
        Route(
            "/v1/alerts/webhooks/{webhook_id}",
            delete_webhook,
            methods=["DELETE"],
            name="v1_alert_webhooks_delete",
        ),
        Route("/v1/budgets/forecast", get_forecast, methods=["GET"], name="v1_budgets_forecast"),
        Route(
            "/v1/budgets/{budget_id}/thresholds", put_thresholds, methods=["PUT"], name="v1_budget_thresholds"
        ),
    ]


def _plain(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)
