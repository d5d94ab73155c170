"""OTLP/HTTP transport: a Starlette app serving ``POST /v1/{metrics,traces,logs}`` and ``GET /healthz``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tokenscale.errors import PermanentError
from tokenscale.mapping.model import Signal
from tokenscale.otlp import (
    JSON_CONTENT_TYPE,
    SUPPORTED_CONTENT_TYPES,
    PayloadTooLargeError,
    decode_request,
    encode_response,
    media_type,
    response_to_json,
)
from tokenscale.receiver._export import (
    SIGNALS,
    ExportHandler,
    TenantResolver,
    default_tenant_for,
    resolve_tenant,
)
from tokenscale.receiver.errors import DEFAULT_RETRY_AFTER_SECONDS, classify_error

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_http_app"]

#: The largest request body accepted, on the wire and after gzip (HTTP 413 beyond it).
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024

# Decoding a small body takes less time than handing it to a worker thread; a large one (JSON
# above all) would stall every other connection, so it is decoded off the event loop.
_INLINE_DECODE_BYTES = 256 * 1024


def create_http_app(
    pipeline: ExportHandler,
    *,
    tenant_for: TenantResolver = default_tenant_for,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    retry_after: int = DEFAULT_RETRY_AFTER_SECONDS,
) -> Starlette:
    """The OTLP/HTTP app; later code may add routes to it before it is served.

    Requests are ``application/x-protobuf`` or ``application/json`` (else 415), optionally
    ``Content-Encoding: gzip``, with or without ``Content-Length``. Responses use the request's
    content type (OTLP/HTTP spec); errors carry a ``google.rpc.Status`` in it.
    """
    routes = [
        Route(
            f"/v1/{signal}",
            _export_endpoint(signal, pipeline, tenant_for, max_body_bytes, retry_after),
            methods=["POST"],
            name=f"otlp_{signal}",
        )
        for signal in SIGNALS
    ]
    routes.append(Route("/healthz", _healthz, methods=["GET"], name="healthz"))
    return Starlette(routes=routes)


async def _healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def _export_endpoint(
    signal: Signal,
    pipeline: ExportHandler,
    tenant_for: TenantResolver,
    max_body_bytes: int,
    retry_after: int,
) -> Callable[[Request], Awaitable[Response]]:
    async def export(request: Request) -> Response:
        content_type = media_type(request.headers.get("content-type", ""))
        if content_type not in SUPPORTED_CONTENT_TYPES:
            return PlainTextResponse(
                f"unsupported content type {request.headers.get('content-type', '')!r}; "
                f"supported: {', '.join(SUPPORTED_CONTENT_TYPES)}",
                status_code=415,
            )
        try:
            # The tenant first: a refused client's body is not even read.
            tenant = await resolve_tenant(tenant_for, request.headers)
            body = await _read_body(request, max_body_bytes)
            encoding = request.headers.get("content-encoding", "")
            if len(body) <= _INLINE_DECODE_BYTES:
                message = decode_request(signal, body, content_type, encoding, max_bytes=max_body_bytes)
            else:
                message = await asyncio.to_thread(
                    decode_request, signal, body, content_type, encoding, max_bytes=max_body_bytes
                )
            result = await asyncio.to_thread(pipeline.export, signal, message, tenant)
        except Exception as exc:
            failure = classify_error(exc, retry_after)
            headers = None if failure.retry_after is None else {"Retry-After": str(failure.retry_after)}
            return _respond(failure.status(), failure.http_status, content_type, headers)
        return _respond(encode_response(signal, result.rejected, result.error_message), 200, content_type)

    return export


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed ``limit`` (chunked bodies too)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise PermanentError(f"invalid Content-Length {declared!r}") from None
        if size > limit:
            raise PayloadTooLargeError(f"request body of {size} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


def _respond(
    message: Message, status_code: int, content_type: str, headers: dict[str, str] | None = None
) -> Response:
    """``message`` encoded as the request was: OTLP/JSON for JSON requests, else protobuf."""
    body = response_to_json(message) if content_type == JSON_CONTENT_TYPE else message.SerializeToString()
    return Response(body, status_code=status_code, headers=headers, media_type=content_type)
