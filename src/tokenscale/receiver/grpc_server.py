"""OTLP/gRPC transport: the Export method of the metrics, trace and logs services, on grpc.aio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tokenscale.errors import PermanentError
from tokenscale.mapping.model import Signal
from tokenscale.otlp import REQUEST_TYPES, RESPONSE_TYPES, encode_response
from tokenscale.receiver._export import (
    DEFAULT_EXPORT_TIMEOUT,
    Admission,
    ExportHandler,
    TenantResolver,
    Ticket,
    call_blocking,
    default_tenant_for,
    export_deadline,
    resolve_tenant,
)
from tokenscale.receiver.errors import DEFAULT_RETRY_AFTER_SECONDS, classify_error

# A small message is parsed faster than it is handed to a worker thread.
_INLINE_PARSE_BYTES = 256 * 1024

__all__ = [
    "LogsServicer",
    "MetricsServicer",
    "TraceServicer",
    "add_otlp_services",
    "create_grpc_server",
    "service_names",
]


def _identity(data: bytes) -> bytes:
    """The request deserializer: bytes stay bytes until the export is authenticated and admitted."""
    return data


def _metadata_headers(metadata: Sequence[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """The text metadata of a call as lower-case headers (binary ``-bin`` entries are left out)."""
    return {key.lower(): value for key, value in metadata or () if isinstance(value, str)}


class _OtlpExport:
    """The ``Export`` method the three OTLP services share: tenant, admission, decode, pipeline, answer.

    It is registered as a client-streaming method (the wire format of a unary call is the same), so
    that it runs before the request message is received: an unauthenticated or unadmitted export is
    refused without its bytes ever being read, and bytes that are no valid message are answered
    INVALID_ARGUMENT (a failing gRPC deserializer would give INTERNAL).
    """

    signal: Signal

    def __init__(
        self,
        pipeline: ExportHandler,
        tenant_for: TenantResolver = default_tenant_for,
        retry_after: int = DEFAULT_RETRY_AFTER_SECONDS,
        *,
        export_timeout: float = DEFAULT_EXPORT_TIMEOUT,
        admission: Admission | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._tenant_for = tenant_for
        self._retry_after = retry_after
        self._export_timeout = export_timeout
        self._admission = admission or Admission()

    async def Export(  # noqa: N802
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        """Hand one export to the pipeline and answer with its partial success, or abort with a status."""
        loop = asyncio.get_running_loop()
        ticket: Ticket | None = None
        try:
            headers = _metadata_headers(context.invocation_metadata())
            tenant = await resolve_tenant(self._tenant_for, headers, loop.time() + self._export_timeout)
            ticket = self._admission.admit()
            async with self._admission.unsized_read():
                data = await _one_message(requests)
            ticket.hold(len(data))
            request = await _parse(self.signal, data)
            deadline = export_deadline(loop.time(), self._export_timeout, len(data))
            del data
            result = await call_blocking(deadline, self._pipeline.export, self.signal, request, tenant)
        except Exception as exc:
            failure = classify_error(exc, self._retry_after)
        else:
            return encode_response(self.signal, result.rejected, result.error_message)
        finally:
            if ticket is not None:
                ticket.release()
        trailers: tuple[tuple[str, str | bytes], ...] = ()
        if failure.retry_after is not None:
            # The status details are the standard carrier; the OTel Python exporter reads the
            # RetryInfo from its own trailer instead, so it is sent both ways.
            trailers = (
                ("grpc-status-details-bin", failure.status().SerializeToString()),
                ("google.rpc.retryinfo-bin", failure.retry_info().SerializeToString()),
            )
        await context.abort(failure.grpc_code, failure.message, trailing_metadata=trailers)  # raises


async def _one_message(requests: AsyncIterator[bytes]) -> bytes:
    """The single request message of a unary call."""
    messages = [message async for message in requests]
    if len(messages) != 1:
        raise PermanentError(f"an OTLP export is one request message, not {len(messages)}")
    return messages[0]


async def _parse(signal: Signal, data: bytes) -> Any:
    message_type = REQUEST_TYPES[signal]
    try:
        if len(data) <= _INLINE_PARSE_BYTES:
            return message_type.FromString(data)
        return await asyncio.to_thread(message_type.FromString, data)
    except DecodeError as exc:
        raise PermanentError(f"invalid protobuf {message_type.__name__} ({len(data)} bytes): {exc}") from None


class MetricsServicer(_OtlpExport, metrics_service_pb2_grpc.MetricsServiceServicer):
    """``opentelemetry.proto.collector.metrics.v1.MetricsService``."""

    signal: Signal = "metrics"


class TraceServicer(_OtlpExport, trace_service_pb2_grpc.TraceServiceServicer):
    """``opentelemetry.proto.collector.trace.v1.TraceService``."""

    signal: Signal = "traces"


class LogsServicer(_OtlpExport, logs_service_pb2_grpc.LogsServiceServicer):
    """``opentelemetry.proto.collector.logs.v1.LogsService``."""

    signal: Signal = "logs"


_SERVICES: dict[Signal, tuple[str, type[_OtlpExport]]] = {
    "metrics": (
        metrics_service_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
        MetricsServicer,
    ),
    "traces": (trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name, TraceServicer),
    "logs": (logs_service_pb2.DESCRIPTOR.services_by_name["LogsService"].full_name, LogsServicer),
}


def service_names() -> dict[Signal, str]:
    """The full gRPC service name of each signal (the method is always ``Export``)."""
    return {signal: name for signal, (name, _) in _SERVICES.items()}


def add_otlp_services(
    server: grpc.aio.Server,
    pipeline: ExportHandler,
    tenant_for: TenantResolver = default_tenant_for,
    retry_after: int = DEFAULT_RETRY_AFTER_SECONDS,
    *,
    export_timeout: float = DEFAULT_EXPORT_TIMEOUT,
    admission: Admission | None = None,
) -> None:
    """Register the three OTLP services on ``server``, like the generated ``add_*_to_server``.

    The difference: ``Export`` is served as a client-streaming method taking raw bytes (see
    :class:`_OtlpExport`), so that authentication and admission come before the message is read.
    """
    admission = admission or Admission()
    for signal, (service, servicer_class) in _SERVICES.items():
        servicer = servicer_class(
            pipeline, tenant_for, retry_after, export_timeout=export_timeout, admission=admission
        )
        handlers = {
            "Export": grpc.stream_unary_rpc_method_handler(
                servicer.Export,
                request_deserializer=_identity,
                response_serializer=RESPONSE_TYPES[signal].SerializeToString,
            )
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        server.add_registered_method_handlers(service, handlers)


def create_grpc_server(
    pipeline: ExportHandler,
    *,
    tenant_for: TenantResolver = default_tenant_for,
    max_message_bytes: int,
    retry_after: int = DEFAULT_RETRY_AFTER_SECONDS,
    reuse_port: bool = False,
    export_timeout: float = DEFAULT_EXPORT_TIMEOUT,
    admission: Admission | None = None,
) -> grpc.aio.Server:
    """A grpc.aio server (not yet bound or started) serving OTLP; call it inside the running loop.

    gzip-compressed requests (``grpc-encoding: gzip``) are decompressed by gRPC itself;
    ``max_message_bytes`` bounds the decompressed message. ``reuse_port`` binds with SO_REUSEPORT,
    for the worker processes of ``tokenscale serve --workers N`` that share one port.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            # Off by default: without it a second receiver could silently share the port.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            # Idle connections are closed after 5 minutes, so that they cannot pile up.
            ("grpc.max_connection_idle_ms", 300_000),
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", 65536),
        ]
    )
    add_otlp_services(
        server, pipeline, tenant_for, retry_after, export_timeout=export_timeout, admission=admission
    )
    return server
