"""OTLP/gRPC transport: the Export method of the metrics, trace and logs services, on grpc.aio."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tokenscale.errors import PermanentError
from tokenscale.mapping.model import Signal
from tokenscale.otlp import REQUEST_TYPES, RESPONSE_TYPES, encode_response
from tokenscale.receiver._export import ExportHandler, TenantResolver, default_tenant_for, resolve_tenant
from tokenscale.receiver.errors import DEFAULT_RETRY_AFTER_SECONDS, classify_error

__all__ = [
    "LogsServicer",
    "MetricsServicer",
    "TraceServicer",
    "add_otlp_services",
    "create_grpc_server",
    "service_names",
]


class _Undecodable:
    """Stands in for a request whose bytes are not a valid message.

    gRPC answers a failing deserializer with INTERNAL; OTLP wants INVALID_ARGUMENT for bad data, so
    the deserializer hands this to the servicer, which rejects it like any other permanent error.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _deserializer(signal: Signal) -> Callable[[bytes], Any]:
    message_type = REQUEST_TYPES[signal]

    def deserialize(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return _Undecodable(f"invalid protobuf {message_type.__name__} ({len(data)} bytes): {exc}")

    return deserialize


def _metadata_headers(metadata: Sequence[tuple[str, str | bytes]] | None) -> dict[str, str]:
    """The text metadata of a call as lower-case headers (binary ``-bin`` entries are left out)."""
    return {key.lower(): value for key, value in metadata or () if isinstance(value, str)}


class _OtlpExport:
    """The ``Export`` method the three OTLP services share: decode check, tenant, pipeline, answer."""

    signal: Signal

    def __init__(
        self,
        pipeline: ExportHandler,
        tenant_for: TenantResolver = default_tenant_for,
        retry_after: int = DEFAULT_RETRY_AFTER_SECONDS,
    ) -> None:
        self._pipeline = pipeline
        self._tenant_for = tenant_for
        self._retry_after = retry_after

    async def Export(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:  # noqa: N802
        """Hand one export to the pipeline and answer with its partial success, or abort with a status."""
        try:
            tenant = await resolve_tenant(self._tenant_for, _metadata_headers(context.invocation_metadata()))
            if isinstance(request, _Undecodable):
                raise PermanentError(request.reason)
            result = await asyncio.to_thread(self._pipeline.export, self.signal, request, tenant)
        except Exception as exc:
            failure = classify_error(exc, self._retry_after)
        else:
            return encode_response(self.signal, result.rejected, result.error_message)
        trailers: tuple[tuple[str, str | bytes], ...] = ()
        if failure.retry_after is not None:
            # The status details are the standard carrier; the OTel Python exporter reads the
            # RetryInfo from its own trailer instead, so it is sent both ways.
            trailers = (
                ("grpc-status-details-bin", failure.status().SerializeToString()),
                ("google.rpc.retryinfo-bin", failure.retry_info().SerializeToString()),
            )
        await context.abort(failure.grpc_code, failure.message, trailing_metadata=trailers)  # raises


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
) -> None:
    """Register the three OTLP services on ``server``, like the generated ``add_*_to_server``.

    The only difference is the request deserializer, which lets undecodable bytes reach the servicer
    so that they are answered INVALID_ARGUMENT rather than INTERNAL.
    """
    for signal, (service, servicer_class) in _SERVICES.items():
        servicer = servicer_class(pipeline, tenant_for, retry_after)
        handlers = {
            "Export": grpc.unary_unary_rpc_method_handler(
                servicer.Export,
                request_deserializer=_deserializer(signal),
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
        ]
    )
    add_otlp_services(server, pipeline, tenant_for, retry_after)
    return server
