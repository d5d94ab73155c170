"""The usage API over HTTP/JSON: Starlette routes in the shapes of the seed APIs, plus ``/openapi.json``.

Each family of routes answers errors the way its original does: DX pushes with ``{"ok": false,
"error": ...}``, the Bookmore-style budget endpoints with a ServiceStack ``ResponseStatus``, the
Revenium listings and usage records with a Spring-style error object. Mount the routes on any
Starlette app (the OTLP receiver's, port 4318): ``app.router.routes.extend(create_api_routes(...))``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl

import grpc
from psycopg_pool import ConnectionPool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tokenscale.api._errors import ApiError, Failure, InvalidRequestError, classify
from tokenscale.api._values import Params
from tokenscale.api.ai_metrics import COLLECTIONS, MODALITIES, AiMetricsPage
from tokenscale.api.budgets import Budget
from tokenscale.api.openapi import openapi_document
from tokenscale.api.service import UsageApiService
from tokenscale.api.tool_metrics import parse_push, parse_push_all
from tokenscale.auth import AuthPolicy
from tokenscale.pipeline import ResultWriter

__all__ = ["DEFAULT_MAX_BODY_BYTES", "REVENIUM_BASE_PATH", "create_api_routes"]

#: The largest request body accepted (HTTP 413 beyond it).
DEFAULT_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
_JSV: Final = "text/jsv"
#: The base path of Revenium's public API; the AI metrics listings answer under it too.
REVENIUM_BASE_PATH: Final = "/profitstream"

T = TypeVar("T")
Endpoint = Callable[[Request], Awaitable[Response]]


class PayloadTooLargeError(ApiError):
    """The request body exceeds the limit."""

    status = 413
    code = "payload_too_large"


def create_api_routes(
    pool: ConnectionPool | UsageApiService,
    *,
    auth: AuthPolicy | None = None,
    writer: ResultWriter | None = None,
    default_budget: Budget | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> list[BaseRoute]:
    """The API's routes over ``pool`` (or an existing :class:`UsageApiService`).

    With a pool, ``auth`` is required; ``writer`` (recorded chat turns) defaults to a
    :class:`tokenscale.store.writer.UsageWriter` on the same pool.
    """
    from tokenscale.api.alerts import create_alert_routes  # noqa: PLC0415 - it imports tokenscale.alerts

    service = _service(pool, auth, writer, default_budget)
    api = _HttpApi(service, max_body_bytes)
    routes: list[BaseRoute] = [
        *create_alert_routes(service),  # before /v1/budgets/{budget_id}: /v1/budgets/forecast
        Route("/openapi.json", api.openapi, methods=["GET"], name="api_openapi"),
        Route("/api/aiToolMetrics.push", api.push, methods=["POST"], name="api_tool_metrics_push"),
        Route("/api/aiToolMetrics.pushAll", api.push_all, methods=["POST"], name="api_tool_metrics_push_all"),
        Route(
            "/assistant/ai-chat/usage", api.record_chat_usage(), methods=["POST"], name="api_ai_chat_usage"
        ),
        Route("/api/budgets/check", api.check_budget(), methods=["GET"], name="api_budget_check"),
        Route("/v1/budgets/check", api.v1_check_budgets, methods=["GET"], name="v1_budgets_check"),
        # One route per path (a 405 then names every method the path has in its Allow header).
        Route(
            "/v1/budgets",
            _by_method({"GET": api.v1_list_budgets, "POST": api.v1_create_budget}),
            methods=["GET", "POST"],
            name="v1_budgets",
        ),
        Route(
            "/v1/budgets/{budget_id}",
            _by_method({"GET": api.v1_get_budget, "DELETE": api.v1_delete_budget}),
            methods=["GET", "DELETE"],
            name="v1_budget",
        ),
        Route("/api/v1/usage/list", api.list_usage_records, methods=["GET"], name="api_usage_list"),
        Route(
            "/api/v1/usage/list",
            api.immutable,
            methods=["POST", "PUT", "PATCH", "DELETE"],
            name="api_usage_list_immutable",
        ),
        Route("/api/v1/usage/series/fetch", api.usage_series, methods=["GET"], name="api_usage_series"),
    ]
    # ServiceStack's format suffixes and predefined routes of the same request DTO.
    for fmt in _SERVICESTACK_FORMATS:
        routes.append(Route(f"/assistant/ai-chat/usage.{fmt}", api.record_chat_usage(fmt), methods=["POST"]))
        routes.append(Route(f"/{fmt}/reply/RecordAiChatUsage", api.record_chat_usage(fmt), methods=["POST"]))
        routes.append(Route(f"/api/budgets/check.{fmt}", api.check_budget(fmt), methods=["GET"]))
    routes.append(Route("/api/RecordAiChatUsage", api.record_chat_usage(), methods=["POST"]))
    routes.append(Route("/api/assistant/ai-chat/usage", api.record_chat_usage(), methods=["POST"]))
    for modality in MODALITIES:
        path = "/v2/api/sources/metrics/ai" + ("" if modality == "all" else f"/{modality}")
        routes.append(
            Route(path, api.ai_metrics(modality), methods=["GET"], name=f"api_ai_metrics_{modality}")
        )
        # Revenium's public base path, as its clients call it.
        routes.append(Route(REVENIUM_BASE_PATH + path, api.ai_metrics(modality), methods=["GET"]))
    return routes


def _service(
    pool: ConnectionPool | UsageApiService,
    auth: AuthPolicy | None,
    writer: ResultWriter | None,
    default_budget: Budget | None,
) -> UsageApiService:
    if isinstance(pool, UsageApiService):
        return pool
    if auth is None:
        raise TypeError("create_api_routes(pool) needs auth=AuthPolicy(...)")
    if writer is None:
        from tokenscale.store.writer import UsageWriter  # noqa: PLC0415 - only when not injected

        writer = UsageWriter(pool)
    return UsageApiService(pool, auth, writer, default_budget=default_budget)


async def _run(function: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(function, *args)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _json(body: bytes) -> object:
    if not body.strip():
        raise InvalidRequestError("request body: is empty; send a JSON object")
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequestError(f"request body: not valid JSON ({str(exc)[:120]})") from None


# --- error bodies, one per family ------------------------------------------------------------------


def _headers(failure: Failure) -> dict[str, str] | None:
    if failure.http_status == 401:
        return {"WWW-Authenticate": 'Bearer realm="tokenscale"'}
    if failure.http_status == 503:
        return {"Retry-After": "5"}
    return None


_DX_CODES: Final = {"unauthenticated": "not_authed", "forbidden": "not_allowed"}


def _dx_error(failure: Failure) -> Response:
    body: dict[str, Any] = {
        "ok": False,
        "error": _DX_CODES.get(failure.code, failure.code),
        "message": failure.message,
    }
    if failure.index is not None:
        body["index"] = failure.index
    if failure.field is not None:
        body["field"] = failure.field
    return JSONResponse(body, failure.http_status, headers=_headers(failure))


def _spring_error(failure: Failure, request: Request) -> Response:
    body: dict[str, Any] = {
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "status": failure.http_status,
        "error": HTTPStatus(failure.http_status).phrase,
        "message": failure.message,
        "path": request.url.path,
    }
    if failure.field is not None:
        body["field"] = failure.field
    return JSONResponse(body, failure.http_status, headers=_headers(failure))


_SERVICESTACK_CODES: Final = {
    "unauthenticated": "Unauthorized",
    "forbidden": "Forbidden",
    "not_found": "NotFound",
    "not_null": "NotNull",
    "invalid_request": "InvalidValue",
    "payload_too_large": "PayloadTooLarge",
    "not_acceptable": "NotAcceptable",
    "unsupported_media_type": "UnsupportedMediaType",
    "conflict": "Conflict",
    "unavailable": "ServiceUnavailable",
    "internal": "InternalServerError",
}


def _servicestack_error(failure: Failure, jsv: bool) -> Response:
    code = _SERVICESTACK_CODES.get(failure.code, failure.code)
    status: dict[str, Any] = {"ErrorCode": code, "Message": failure.message, "Errors": []}
    if failure.field is not None:
        status["Errors"] = [{"ErrorCode": code, "FieldName": failure.field, "Message": failure.message}]
    return _servicestack_response({"ResponseStatus": status}, failure.http_status, jsv, _headers(failure))


def _v1_error(failure: Failure) -> Response:
    """The error body of the ``/v1`` routes: ``{"error": code, "message": ..., "field": ...}``."""
    body: dict[str, Any] = {"error": failure.code, "message": failure.message}
    if failure.field is not None:
        body["field"] = failure.field
    return JSONResponse(body, failure.http_status, headers=_headers(failure))


# --- ServiceStack: content negotiation, JSV, request fields ------------------------------------------

#: Formats the Bookmore routes answer: ``?format=`` / suffix name -> media type.
_SERVICESTACK_FORMATS: Final = {"json": "application/json", "jsv": _JSV}
#: Media ranges of an ``Accept`` header and the format each selects.
_ACCEPT_FORMATS: Final = {
    "application/json": "json",
    "text/json": "json",
    "text/jsv": "jsv",
    "application/jsv": "jsv",
    "*/*": "json",
    "application/*": "json",
    "text/*": "jsv",
}


class UnsupportedMediaTypeError(ApiError):
    """A request body in a format that is not read (HTTP 415)."""

    status = 415
    code = "unsupported_media_type"


class NotAcceptableError(ApiError):
    """A requested response format that is not served (HTTP 406)."""

    status = 406
    code = "not_acceptable"


def _accepted_format(accept: str) -> str | None:
    """The format an ``Accept`` header prefers: highest q first, then the order listed."""
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept.split(",")):
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        found = _ACCEPT_FORMATS.get(media.lower())
        if found is not None and quality > 0:
            ranked.append((-quality, position, found))
    return min(ranked)[2] if ranked else None


def _response_format(request: Request, suffix: str | None = None) -> str:
    """``json`` or ``jsv``, as ServiceStack picks it: the path's format, ``?format=``, then ``Accept``.

    An unknown ``?format=`` is :class:`NotAcceptableError`; an ``Accept`` naming no served type
    gets JSON.
    """
    if suffix is not None:
        return suffix
    named = request.query_params.get("format")
    if named is not None:
        if named.lower() not in _SERVICESTACK_FORMATS:
            raise NotAcceptableError(
                f"format: {named[:40]!r} is not served; use {' or '.join(_SERVICESTACK_FORMATS)}",
                field="format",
            )
        return named.lower()
    return _accepted_format(request.headers.get("accept", "")) or "json"


def _wants_jsv(request: Request, suffix: str | None = None) -> bool:
    try:
        return _response_format(request, suffix) == "jsv"
    except NotAcceptableError:
        return False


def _jsv_value(value: Any) -> str:
    """ServiceStack's JSV text of ``value``; null fields are left out, as ServiceStack writes them."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_jsv_value(v)}" for k, v in value.items() if v is not None) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_jsv_value(v) for v in value) + "]"
    text = str(value)
    if text == "" or any(c in text for c in ',:{}[]"') or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text


def _parse_jsv(body: bytes) -> dict[str, str]:
    """A flat JSV object (``{Key: value, ...}``) as strings."""
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidRequestError("request body: not UTF-8 text") from None
    if not (text.startswith("{") and text.endswith("}")):
        raise InvalidRequestError("request body: not a JSV object ({Key: value, ...})")
    fields: dict[str, str] = {}
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text[1:-1]:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    for part in parts:
        if not part.strip():
            continue
        key, sep, value = part.partition(":")
        if not sep or not key.strip():
            raise InvalidRequestError(f"request body: not a JSV field: {part.strip()[:60]!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('""', '"')
        fields[key.strip()] = value
    return fields


def _servicestack_response(
    body: dict[str, Any], status: int, jsv: bool, headers: dict[str, str] | None = None
) -> Response:
    if jsv:
        return Response(_jsv_value(body), status, headers=headers, media_type=_JSV)
    return JSONResponse(body, status, headers=headers)


_FORM: Final = "application/x-www-form-urlencoded"
_MAX_COMPANY_ID_CHARS: Final = 255


def _request_fields(request: Request, body: bytes) -> list[Mapping[str, Any]]:
    """The request DTO's fields in the body, read by its ``Content-Type`` (JSON when none is given)."""
    if not body.strip():
        return []
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in (_JSV, "application/jsv"):
        return [_parse_jsv(body)]
    if content_type == _FORM:
        try:
            text_body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError("request body: not UTF-8 text") from None
        return [dict(parse_qsl(text_body, keep_blank_values=True))]
    if content_type not in ("", "application/json", "text/json") and not content_type.endswith("+json"):
        raise UnsupportedMediaTypeError(
            f"Content-Type: {content_type[:60]!r} is not read; send application/json, text/jsv or {_FORM}",
            field="Content-Type",
        )
    parsed = _json(body)
    if not isinstance(parsed, dict):
        raise InvalidRequestError("request body: must be a JSON object")
    return [parsed]


def _query_fields(request: Request) -> dict[str, str]:
    """The query string's fields; a NUL in any is refused (ServiceStack would bind each one)."""
    for name, value in request.query_params.multi_items():
        if "\x00" in value or "\x00" in name:
            raise InvalidRequestError(f"{name[:60]}: must not contain NUL characters", field=name[:60])
        if name.lower() == "companyid" and len(value) > _MAX_COMPANY_ID_CHARS:
            raise InvalidRequestError(
                f"CompanyId: length must be at most {_MAX_COMPANY_ID_CHARS}", field="CompanyId"
            )
    return dict(request.query_params)


def _field(sources: list[Mapping[str, Any]], name: str) -> object:
    """A ServiceStack request field from body or query, matched case-insensitively (body first)."""
    wanted = name.lower()
    for source in sources:
        for key, value in source.items():
            if isinstance(key, str) and key.lower() == wanted:
                return value
    return None


# --- the endpoints -----------------------------------------------------------------------------------


class _HttpApi:
    def __init__(self, service: UsageApiService, max_body_bytes: int) -> None:
        self.service = service
        self.max_body_bytes = max_body_bytes
        self._openapi: bytes | None = None

    async def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            self._openapi = json.dumps(openapi_document(), separators=(",", ":")).encode()
        return Response(self._openapi, media_type="application/json")

    async def push(self, request: Request) -> Response:
        try:
            principal = await _run(self.service.principal, request.headers, "ingest")
            records = parse_push(_json(await _read_body(request, self.max_body_bytes)))
            stored = await _run(self.service.push_tool_metrics, principal, records)
        except Exception as exc:
            return _dx_error(classify(exc))
        return JSONResponse(stored[0])

    async def push_all(self, request: Request) -> Response:
        try:
            principal = await _run(self.service.principal, request.headers, "ingest")
            records = parse_push_all(_json(await _read_body(request, self.max_body_bytes)))
            stored = await _run(self.service.push_tool_metrics, principal, records)
        except Exception as exc:
            return _dx_error(classify(exc))
        return JSONResponse(stored)

    def ai_metrics(self, modality: str) -> Endpoint:
        async def list_metrics(request: Request) -> Response:
            try:
                principal = await _run(self.service.principal, request.headers, "read")
                params = Params.from_pairs(request.query_params.multi_items())
                page = await _run(self.service.list_ai_metrics, principal, params, modality)
            except Exception as exc:
                return _spring_error(classify(exc), request)
            return JSONResponse(_paged(page, modality, request), media_type=_hal_media_type(request))

        return list_metrics

    def record_chat_usage(self, suffix: str | None = None) -> Endpoint:
        """``RecordAiChatUsage`` answering in the format ``suffix`` names (else negotiated)."""

        async def record(request: Request) -> Response:
            jsv = _wants_jsv(request, suffix)
            try:
                principal = await _run(self.service.principal, request.headers, "ingest")
                _response_format(request, suffix)  # an unknown ?format= is refused before recording
                body = await _read_body(request, self.max_body_bytes)
                sources = [*_request_fields(request, body), _query_fields(request)]
                key = request.headers.get("idempotency-key")
                if key is None:
                    key = request.headers.get("x-request-id") or None
                result = await _run(
                    self.service.record_chat_usage,
                    principal,
                    _field(sources, "CompanyId"),
                    _field(sources, "TokensUsed"),
                    key,
                )
            except Exception as exc:
                return _servicestack_error(classify(exc), jsv)
            return _servicestack_response(result, 200, jsv)

        return record

    def check_budget(self, suffix: str | None = None) -> Endpoint:
        """The read-only budget check, in the PascalCase fields of ``AiChatUsageResponse``."""

        async def check(request: Request) -> Response:
            jsv = _wants_jsv(request, suffix)
            try:
                principal = await _run(self.service.principal, request.headers, "read")
                _response_format(request, suffix)
                company = request.query_params.get("company_id")
                result = await _run(self.service.check_budget, principal, company)
            except Exception as exc:
                return _servicestack_error(classify(exc), jsv)
            return _servicestack_response(result, 200, jsv)

        return check

    # --- /v1/budgets ------------------------------------------------------------------------------

    async def v1_check_budgets(self, request: Request) -> Response:
        try:
            principal = await _run(self.service.principal, request.headers, "read")
            result = await _run(self.service.check_budgets, principal, dict(request.query_params))
        except Exception as exc:
            return _v1_error(classify(exc))
        return JSONResponse(result, headers={"Cache-Control": "no-store"})

    async def v1_list_budgets(self, request: Request) -> Response:
        try:
            principal = await _run(self.service.principal, request.headers, "read")
            result = await _run(self.service.list_budgets, principal, dict(request.query_params))
        except Exception as exc:
            return _v1_error(classify(exc))
        return JSONResponse(result)

    async def v1_create_budget(self, request: Request) -> Response:
        try:
            principal = await _run(self.service.principal, request.headers, "admin")
            body = _json(await _read_body(request, self.max_body_bytes))
            result = await _run(self.service.create_budget, principal, body)
        except Exception as exc:
            return _v1_error(classify(exc))
        return JSONResponse(result, 201, headers={"Location": f"/v1/budgets/{result['id']}"})

    async def v1_get_budget(self, request: Request) -> Response:
        try:
            principal = await _run(self.service.principal, request.headers, "read")
            result = await _run(self.service.get_budget, principal, request.path_params["budget_id"])
        except Exception as exc:
            return _v1_error(classify(exc))
        return JSONResponse(result)

    async def v1_delete_budget(self, request: Request) -> Response:
        try:
            principal = await _run(self.service.principal, request.headers, "admin")
            result = await _run(self.service.delete_budget, principal, request.path_params["budget_id"])
        except Exception as exc:
            return _v1_error(classify(exc))
        return JSONResponse(result)

    async def list_usage_records(self, request: Request) -> Response:
        try:
            principal = await _run(self.service.principal, request.headers, "read")
            params = Params.from_pairs(request.query_params.multi_items())
            result = await _run(self.service.list_usage_records, principal, params)
        except Exception as exc:
            return _spring_error(classify(exc), request)
        return JSONResponse(result)

    async def usage_series(self, request: Request) -> Response:
        try:
            principal = await _run(self.service.principal, request.headers, "read")
            result = await _run(self.service.usage_series, principal)
        except Exception as exc:
            return _spring_error(classify(exc), request)
        return JSONResponse(result)

    async def immutable(self, request: Request) -> Response:
        response = _spring_error(
            Failure(
                405,
                grpc.StatusCode.UNIMPLEMENTED,
                "method_not_allowed",
                "usage records are immutable: they cannot be created, modified or deleted",
            ),
            request,
        )
        response.headers["Allow"] = "GET, HEAD"
        return response


def _by_method(endpoints: dict[str, Endpoint]) -> Endpoint:
    """One endpoint for a path served by several: each request to the one of its method (HEAD: GET's)."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await endpoints[method](request)

    return endpoint


_HAL: Final = "application/hal+json"


def _hal_media_type(request: Request) -> str:
    """``application/hal+json`` when ``Accept`` prefers it to plain JSON, else ``application/json``."""
    best: tuple[float, int] | None = None
    plain: tuple[float, int] | None = None
    for position, item in enumerate(request.headers.get("accept", "").split(",")):
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        rank = (-quality, position)
        if media.lower() == _HAL and quality > 0 and (best is None or rank < best):
            best = rank
        if media.lower() in ("application/json", "*/*", "application/*") and (plain is None or rank < plain):
            plain = rank
    return _HAL if best is not None and (plain is None or best < plain) else "application/json"


def _paged(page: AiMetricsPage, modality: str, request: Request) -> dict[str, Any]:
    """Spring HATEOAS's paged model: ``_embedded``, ``_links`` and ``page``."""
    links: dict[str, Any] = {"self": {"href": str(request.url)}}
    for rel, number in (("prev", page.number - 1), ("next", page.number + 1)):
        if 0 <= number < page.total_pages:
            links[rel] = {"href": str(request.url.include_query_params(page=number))}
    return {
        "_embedded": {COLLECTIONS[modality]: page.items},
        "_links": links,
        "page": {
            "size": page.size,
            "totalElements": page.total_elements,
            "totalPages": page.total_pages,
            "number": page.number,
        },
    }
