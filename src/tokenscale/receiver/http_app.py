"""OTLP/HTTP transport: a Starlette app serving ``POST /v1/{metrics,traces,logs}`` and ``GET /healthz``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tokenscale.errors import PermanentError
from tokenscale.mapping.model import Signal
from tokenscale.otlp import (
    JSON_CONTENT_TYPE,
    SUPPORTED_CONTENT_TYPES,
    PayloadTooLargeError,
    decode_request,
    decompress,
    encode_response,
    media_type,
    response_to_json,
)
from tokenscale.receiver._export import (
    DEFAULT_EXPORT_TIMEOUT,
    SIGNALS,
    Admission,
    ExportHandler,
    TenantResolver,
    Ticket,
    call_blocking,
    default_tenant_for,
    export_deadline,
    resolve_tenant,
)
from tokenscale.receiver.errors import (
    DEFAULT_RETRY_AFTER_SECONDS,
    BodyTimeoutError,
    classify_error,
    public_text,
)

__all__ = ["DEFAULT_BODY_TIMEOUT", "DEFAULT_MAX_BODY_BYTES", "HttpLimits", "create_http_app"]

logger = logging.getLogger("tokenscale.receiver")

#: The largest request body accepted, on the wire and after gzip (HTTP 413 beyond it).
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024

# Decoding a small body takes less time than handing it to a worker thread; a large one (JSON
# above all) would stall every other connection, so it is decoded off the event loop.
_INLINE_DECODE_BYTES = 256 * 1024


#: Seconds a client may leave a started request body without sending more of it (408 beyond).
DEFAULT_BODY_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """How much one OTLP/HTTP export may take: body size, time, and its share of the process."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    retry_after: int = DEFAULT_RETRY_AFTER_SECONDS
    export_timeout: float = DEFAULT_EXPORT_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT


def create_http_app(
    pipeline: ExportHandler,
    *,
    tenant_for: TenantResolver = default_tenant_for,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    retry_after: int = DEFAULT_RETRY_AFTER_SECONDS,
    export_timeout: float = DEFAULT_EXPORT_TIMEOUT,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    admission: Admission | None = None,
) -> Starlette:
    """The OTLP/HTTP app; later code may add routes to it before it is served.

    Requests are ``application/x-protobuf`` or ``application/json`` (else 415), optionally
    ``Content-Encoding: gzip``, with or without ``Content-Length``. Responses use the request's
    content type (OTLP/HTTP spec); errors carry a ``google.rpc.Status`` in it. Each export is
    authenticated, then admitted (``admission``, shared with the gRPC transport), before its body is
    read; see :func:`tokenscale.receiver.errors.classify_error` for every answer.
    """
    limits = HttpLimits(max_body_bytes, retry_after, export_timeout, body_timeout)
    admission = admission or Admission()
    routes = [
        Route(
            f"/v1/{signal}",
            _export_endpoint(signal, pipeline, tenant_for, limits, admission),
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
    limits: HttpLimits,
    admission: Admission,
) -> Callable[[Request], Awaitable[Response]]:
    max_body_bytes = limits.max_body_bytes

    async def export(request: Request) -> Response:
        content_type = media_type(request.headers.get("content-type", ""))
        if content_type not in SUPPORTED_CONTENT_TYPES:
            return PlainTextResponse(
                f"unsupported content type {public_text(request.headers.get('content-type', ''), 200)!r}; "
                f"supported: {', '.join(SUPPORTED_CONTENT_TYPES)}",
                status_code=415,
            )
        loop = asyncio.get_running_loop()
        ticket: Ticket | None = None
        try:
            # The tenant first: a refused client's body is not even read.
            tenant = await resolve_tenant(tenant_for, request.headers, loop.time() + limits.export_timeout)
            ticket = admission.admit(_declared_length(request, max_body_bytes))
            body = await _read_body(request, max_body_bytes, ticket, limits.body_timeout)
            encoding = request.headers.get("content-encoding", "")
            if len(body) <= _INLINE_DECODE_BYTES:
                body = decompress(body, encoding, max_body_bytes)
            else:
                body = await asyncio.to_thread(decompress, body, encoding, max_body_bytes)
            ticket.hold(len(body))  # decompressed: refused here, before it is parsed
            if len(body) <= _INLINE_DECODE_BYTES:
                message = decode_request(signal, body, content_type)
            else:
                message = await asyncio.to_thread(decode_request, signal, body, content_type)
            deadline = export_deadline(loop.time(), limits.export_timeout, len(body))
            del body
            result = await call_blocking(deadline, pipeline.export, signal, message, tenant)
        except ClientDisconnect:
            logger.debug("OTLP/HTTP client went away before its export was read")
            return Response(status_code=499)
        except Exception as exc:
            failure = classify_error(exc, limits.retry_after)
            headers = None if failure.retry_after is None else {"Retry-After": str(failure.retry_after)}
            return _respond(failure.status(), failure.http_status, content_type, headers)
        finally:
            if ticket is not None:
                ticket.release()
        return _respond(encode_response(signal, result.rejected, result.error_message), 200, content_type)

    return export


def _declared_length(request: Request, limit: int) -> int:
    """The body size the request declares (0 when chunked); refused at once beyond ``limit``."""
    declared = request.headers.get("content-length")
    if declared is None:
        return 0
    try:
        size = int(declared)
    except ValueError:
        raise PermanentError(f"invalid Content-Length {public_text(declared, 40)!r}") from None
    if size < 0:
        raise PermanentError(f"invalid Content-Length {size}")
    if size > limit:
        raise PayloadTooLargeError(f"request body of {size} bytes exceeds the limit of {limit} bytes")
    return size


async def _read_body(request: Request, limit: int, ticket: Ticket, idle_timeout: float) -> bytes:
    """The request body, refused as soon as it is known to exceed ``limit`` (chunked bodies too),
    or to exceed what ``ticket`` may hold; a client sending nothing for ``idle_timeout`` s is cut off."""
    body = bytearray()
    chunks = request.stream().__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise BodyTimeoutError(
                f"the request body stalled: nothing received for {idle_timeout:g} s"
            ) from None
        body += chunk
        if len(body) > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
        ticket.hold(len(body))
    return bytes(body)


def _respond(
    message: Message, status_code: int, content_type: str, headers: dict[str, str] | None = None
) -> Response:
    """``message`` encoded as the request was: OTLP/JSON for JSON requests, else protobuf."""
    body = response_to_json(message) if content_type == JSON_CONTENT_TYPE else message.SerializeToString()
    return Response(body, status_code=status_code, headers=headers, media_type=content_type)
