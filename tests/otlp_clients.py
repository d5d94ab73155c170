"""Test clients and servers for OTLP: a receiver on a background event loop, raw gRPC and HTTP senders."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tokenscale.receiver.server import Receiver

__all__ = ["GRPC_METHODS", "RESPONSES", "background_loop", "grpc_export", "post", "run", "running"]

T = TypeVar("T")

GRPC_METHODS = {
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
RESPONSES: dict[str, Any] = {
    "metrics": ExportMetricsServiceResponse,
    "traces": ExportTraceServiceResponse,
    "logs": ExportLogsServiceResponse,
}


@contextlib.contextmanager
def background_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a background thread, closed afterwards."""
    event_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=event_loop.run_forever, name="receiver-loop", daemon=True)
    thread.start()
    try:
        yield event_loop
    finally:
        event_loop.call_soon_threadsafe(event_loop.stop)
        thread.join(10)
        event_loop.close()


def run(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    """Run ``coroutine`` on ``loop`` from this thread and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)


@contextlib.contextmanager
def running(loop: asyncio.AbstractEventLoop, pipeline: Any, **options: Any) -> Iterator[Receiver]:
    """A receiver on ephemeral loopback ports, stopped afterwards."""
    receiver = Receiver(pipeline, host="127.0.0.1", grpc_port=0, http_port=0, **options)
    run(loop, receiver.start())
    try:
        yield receiver
    finally:
        run(loop, receiver.stop())


def grpc_export(
    port: int,
    signal: str,
    body: bytes,
    *,
    compression: grpc.Compression | None = None,
    metadata: Sequence[tuple[str, str]] = (),
) -> Any:
    """Send ``body`` unchanged as the unary OTLP ``Export`` call."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(GRPC_METHODS[signal], response_deserializer=RESPONSES[signal].FromString)
        return call(body, timeout=30, compression=compression, metadata=metadata)


def post(
    port: int,
    path: str,
    body: bytes,
    content_type: str | None,
    *,
    encoding: str | None = None,
    chunked: bool = False,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """POST ``body``; ``chunked`` sends it in two chunks without a Content-Length."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = dict(headers or {})
    if content_type is not None:
        sent["Content-Type"] = content_type
    if encoding is not None:
        sent["Content-Encoding"] = encoding
    try:
        if chunked:
            half = len(body) // 2
            connection.request("POST", path, body=iter([body[:half], body[half:]]), headers=sent)
        else:
            connection.request("POST", path, body=body, headers=sent)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()
