"""The OTLP receiver's transports, end to end: real gRPC and HTTP servers on ephemeral ports."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import json_format
from google.rpc.error_details_pb2 import RetryInfo  # type: ignore[import-untyped]
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from ground_truth import CAPTURES
from otlp_clients import GRPC_METHODS, RESPONSES, background_loop, grpc_export, post, run, running
from tokenscale.errors import PermanentError, RetryableError
from tokenscale.mapping.model import MappingResult, Signal
from tokenscale.otlp import REQUEST_TYPES
from tokenscale.pipeline import DEFAULT_TENANT, ExportPipeline, ExportResult
from tokenscale.receiver import Receiver

PROTOBUF_BODIES = sorted(CAPTURES.glob("*/*.raw.pb"))
JSON_BODIES = sorted(CAPTURES.glob("*/*.raw.json"))

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# A capture that maps to usage events, so the pipeline hands it to the writer.
CLAUDE_METRICS = CAPTURES / "claude-grpc" / "metrics-0.raw.pb"

T = TypeVar("T")


# --- pipelines ----------------------------------------------------------------------------------


class RecordingWriter:
    """A ``ResultWriter`` keeping what it is given (the database writer is tested elsewhere)."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.results: list[MappingResult] = []
        self.fail_with = fail_with

    def write(self, result: MappingResult) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.results.append(result)


class RecordingPipeline(ExportPipeline):
    """The real export pipeline, also keeping every request the transports hand it."""

    def __init__(self, writer: RecordingWriter | None = None) -> None:
        self.writer = writer or RecordingWriter()
        super().__init__(self.writer)
        self.calls: list[tuple[Signal, Any, str]] = []

    def export(self, signal: Signal, request: Any, tenant: str = DEFAULT_TENANT) -> ExportResult:
        self.calls.append((signal, request, tenant))
        return super().export(signal, request, tenant)


class PartialSuccessPipeline:
    """Answers every export with a fixed partial success.

    Stands in for the pipeline only because which items the mapping rejects is the mapping's
    business; here only the transport of the answer is under test.
    """

    def export(self, signal: Signal, request: Any, tenant: str) -> ExportResult:
        return ExportResult(rejected=3, error_message="3 items had no usable value")


# --- servers and clients ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop in a background thread for every receiver of this module (grpc.aio likes one)."""
    with background_loop() as event_loop:
        yield event_loop


@pytest.fixture(scope="module")
def shared(loop: asyncio.AbstractEventLoop) -> Iterator[tuple[Receiver, RecordingPipeline]]:
    pipeline = RecordingPipeline()
    with running(loop, pipeline) as receiver:
        yield receiver, pipeline


@pytest.fixture
def receiver(shared: tuple[Receiver, RecordingPipeline]) -> Receiver:
    shared[1].calls.clear()
    return shared[0]


@pytest.fixture
def pipeline(shared: tuple[Receiver, RecordingPipeline], receiver: Receiver) -> RecordingPipeline:
    return shared[1]


def grpc_error(port: int, signal: Signal, body: bytes, **options: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        grpc_export(port, signal, body, **options)
    return raised.value


def signal_of(path: Path) -> Signal:
    signal = path.name.split("-", 1)[0]
    assert signal in GRPC_METHODS
    return signal


def reference_of(path: Path) -> Any:
    """The capture's decoded ``*.json`` (protobuf JSON mapping, base64 ids)."""
    decoded = path.with_name(path.name.replace(".raw.pb", ".json").replace(".raw.json", ".json"))
    return json_format.Parse(decoded.read_text(), REQUEST_TYPES[signal_of(path)]())


def capture_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


# --- captures over every transport --------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, grpc.Compression.Gzip], ids=["plain", "gzip"])
@pytest.mark.parametrize("path", PROTOBUF_BODIES, ids=capture_id)
def test_capture_over_grpc(
    receiver: Receiver, pipeline: RecordingPipeline, path: Path, compression: grpc.Compression | None
) -> None:
    signal = signal_of(path)

    response = grpc_export(receiver.grpc_port, signal, path.read_bytes(), compression=compression)

    assert response == RESPONSES[signal]()
    assert pipeline.calls == [(signal, reference_of(path), DEFAULT_TENANT)]


@pytest.mark.parametrize(("gzipped", "chunked"), [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("path", PROTOBUF_BODIES + JSON_BODIES, ids=capture_id)
def test_capture_over_http(
    receiver: Receiver, pipeline: RecordingPipeline, path: Path, gzipped: bool, chunked: bool
) -> None:
    signal = signal_of(path)
    content_type = JSON if path.name.endswith(".json") else PROTOBUF
    body = gzip.compress(path.read_bytes()) if gzipped else path.read_bytes()

    status, headers, answer = post(
        receiver.http_port,
        f"/v1/{signal}",
        body,
        content_type,
        encoding="gzip" if gzipped else None,
        chunked=chunked,
    )

    assert status == 200, answer
    assert headers["content-type"] == content_type
    assert answer == (b"{}" if content_type == JSON else b"")
    assert pipeline.calls == [(signal, reference_of(path), DEFAULT_TENANT)]


def test_json_content_type_with_charset(receiver: Receiver, pipeline: RecordingPipeline) -> None:
    path = CAPTURES / "gemini-http" / "logs-0.raw.json"

    status, headers, _ = post(
        receiver.http_port, "/v1/logs", path.read_bytes(), "application/json; charset=utf-8"
    )

    assert status == 200
    assert headers["content-type"] == JSON
    assert pipeline.calls == [("logs", reference_of(path), DEFAULT_TENANT)]


def test_large_json_body_is_decoded_off_the_event_loop(
    receiver: Receiver, pipeline: RecordingPipeline
) -> None:
    document = json.loads((CAPTURES / "gemini-http" / "logs-0.raw.json").read_bytes())
    records = document["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
    records *= 1 + 300_000 // len(json.dumps(records))
    body = json.dumps(document, indent=2).encode()
    assert len(body) > 300_000

    status, _, answer = post(receiver.http_port, "/v1/logs", body, JSON)

    assert (status, answer) == (200, b"{}")
    [(_, request, _)] = pipeline.calls
    assert len(request.resource_logs[0].scope_logs[0].log_records) == len(records)


def test_the_pipeline_maps_what_the_transports_deliver(
    receiver: Receiver, pipeline: RecordingPipeline
) -> None:
    before = len(pipeline.writer.results)

    grpc_export(receiver.grpc_port, "metrics", CLAUDE_METRICS.read_bytes())

    assert len(pipeline.writer.results) == before + 1
    assert pipeline.writer.results[-1].events or pipeline.writer.results[-1].cumulative


# --- the real OpenTelemetry SDK exporters -------------------------------------------------------


def sdk_spans() -> Any:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "transport-test"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("transport-test").start_as_current_span("chat gpt-4o-mini") as span:
        span.set_attribute("gen_ai.usage.input_tokens", 12)
    provider.shutdown()
    return memory.get_finished_spans()


def sdk_metrics() -> Any:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("transport-test").create_counter("transport.test.count").add(5, {"k": "v"})
    data = reader.get_metrics_data()
    provider.shutdown()
    return data


def sdk_logs() -> Any:
    memory = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    provider.get_logger("transport-test").emit(body="hello", event_name="transport.test")
    provider.shutdown()
    return memory.get_finished_logs()


def sdk_exporter(transport: str, signal: Signal, receiver: Receiver, gzipped: bool) -> Any:
    if transport == "grpc":
        endpoint = f"127.0.0.1:{receiver.grpc_port}"
        compression = grpc.Compression.Gzip if gzipped else grpc.Compression.NoCompression
        grpc_classes = {"traces": GrpcSpanExporter, "metrics": GrpcMetricExporter, "logs": GrpcLogExporter}
        return grpc_classes[signal](endpoint=endpoint, insecure=True, compression=compression)
    url = f"http://127.0.0.1:{receiver.http_port}/v1/{signal}"
    compression = HttpCompression.Gzip if gzipped else HttpCompression.NoCompression
    http_classes = {"traces": HttpSpanExporter, "metrics": HttpMetricExporter, "logs": HttpLogExporter}
    return http_classes[signal](endpoint=url, compression=compression)


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("transport", ["grpc", "http"])
@pytest.mark.parametrize("signal", ["traces", "metrics", "logs"])
def test_sdk_exporters_export_successfully(
    receiver: Receiver, pipeline: RecordingPipeline, transport: str, signal: Signal, gzipped: bool
) -> None:
    data = {"traces": sdk_spans, "metrics": sdk_metrics, "logs": sdk_logs}[signal]()
    exporter = sdk_exporter(transport, signal, receiver, gzipped)
    try:
        result = exporter.export(data)
    finally:
        exporter.shutdown()

    assert result.name == "SUCCESS"
    [(received_signal, request, tenant)] = pipeline.calls
    assert (received_signal, tenant) == (signal, DEFAULT_TENANT)
    if signal == "traces":
        assert request.resource_spans[0].scope_spans[0].spans[0].name == "chat gpt-4o-mini"
    elif signal == "metrics":
        metric = request.resource_metrics[0].scope_metrics[0].metrics[0]
        assert (metric.name, metric.sum.data_points[0].as_int) == ("transport.test.count", 5)
    else:
        assert request.resource_logs[0].scope_logs[0].log_records[0].event_name == "transport.test"


# --- errors -------------------------------------------------------------------------------------


def test_undecodable_protobuf_is_invalid_argument(receiver: Receiver, pipeline: RecordingPipeline) -> None:
    garbage = b"\x0a\x05abc"

    error = grpc_error(receiver.grpc_port, "traces", garbage)
    status, headers, body = post(receiver.http_port, "/v1/traces", garbage, PROTOBUF)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid protobuf ExportTraceServiceRequest" in error.details()
    assert (status, headers["content-type"]) == (400, PROTOBUF)
    answer = Status.FromString(body)
    assert answer.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "invalid protobuf ExportTraceServiceRequest" in answer.message
    assert pipeline.calls == []


def test_undecodable_json_is_400_with_a_json_status(receiver: Receiver, pipeline: RecordingPipeline) -> None:
    status, headers, body = post(receiver.http_port, "/v1/logs", b'{"resourceLogs": 7}', JSON)

    assert (status, headers["content-type"]) == (400, JSON)
    answer = json.loads(body)
    assert answer["code"] == 3
    assert "resourceLogs" in answer["message"]
    assert pipeline.calls == []


def test_bad_gzip_is_400(receiver: Receiver) -> None:
    status, _, body = post(receiver.http_port, "/v1/metrics", b"not gzip", PROTOBUF, encoding="gzip")

    assert status == 400
    assert "invalid gzip body" in Status.FromString(body).message


def test_unsupported_content_encoding_is_400(receiver: Receiver) -> None:
    status, _, body = post(receiver.http_port, "/v1/metrics", b"", JSON, encoding="br")

    assert status == 400
    assert "unsupported Content-Encoding 'br'" in json.loads(body)["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/grpc", None])
def test_unknown_content_type_is_415(receiver: Receiver, content_type: str | None) -> None:
    status, _, body = post(receiver.http_port, "/v1/traces", b"{}", content_type)

    assert status == 415
    assert b"application/x-protobuf" in body


def test_retryable_error_is_503_with_retry_after_and_unavailable(loop: asyncio.AbstractEventLoop) -> None:
    pipeline = RecordingPipeline(RecordingWriter(fail_with=RetryableError("database unreachable")))
    body = CLAUDE_METRICS.read_bytes()

    with running(loop, pipeline, retry_after=7) as receiver:
        status, headers, answer = post(receiver.http_port, "/v1/metrics", body, PROTOBUF)
        error = grpc_error(receiver.grpc_port, "metrics", body)

    assert (status, headers["retry-after"]) == (503, "7")
    assert Status.FromString(answer).code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert Status.FromString(answer).message == "database unreachable"
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "database unreachable"
    trailers = dict(error.trailing_metadata())
    assert RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay.seconds == 7


def test_retryable_error_over_http_json(loop: asyncio.AbstractEventLoop) -> None:
    pipeline = RecordingPipeline(RecordingWriter(fail_with=RetryableError("database unreachable")))
    body = (CAPTURES / "claude-httpjson" / "metrics-0.raw.json").read_bytes()

    with running(loop, pipeline) as receiver:
        status, headers, answer = post(receiver.http_port, "/v1/metrics", body, JSON, chunked=True)

    assert (status, headers["retry-after"], headers["content-type"]) == (503, "5", JSON)
    assert json.loads(answer)["code"] == grpc.StatusCode.UNAVAILABLE.value[0]


def test_unexpected_error_is_internal_and_logged(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = RecordingPipeline(RecordingWriter(fail_with=RuntimeError("password=hunter2")))
    body = CLAUDE_METRICS.read_bytes()

    with caplog.at_level(logging.ERROR, logger="tokenscale.receiver"), running(loop, pipeline) as receiver:
        status, _, answer = post(receiver.http_port, "/v1/metrics", body, PROTOBUF)
        error = grpc_error(receiver.grpc_port, "metrics", body)

    assert status == 500
    assert Status.FromString(answer).code == grpc.StatusCode.INTERNAL.value[0]
    assert "hunter2" not in Status.FromString(answer).message
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in error.details()
    logged = [r for r in caplog.records if r.exc_info and "hunter2" in str(r.exc_info[1])]
    assert len(logged) == 2


def test_partial_success_reaches_the_client(loop: asyncio.AbstractEventLoop) -> None:
    body = (CAPTURES / "claude-grpc" / "traces-0.raw.pb").read_bytes()
    json_body = (CAPTURES / "claude-httpjson" / "logs-0.raw.json").read_bytes()

    with running(loop, PartialSuccessPipeline()) as receiver:
        over_grpc = grpc_export(receiver.grpc_port, "traces", body)
        status, _, over_http = post(receiver.http_port, "/v1/traces", body, PROTOBUF)
        json_status, _, over_json = post(receiver.http_port, "/v1/logs", json_body, JSON)
        metrics = grpc_export(receiver.grpc_port, "metrics", CLAUDE_METRICS.read_bytes())

    assert over_grpc.partial_success.rejected_spans == 3
    assert over_grpc.partial_success.error_message == "3 items had no usable value"
    assert status == 200
    assert ExportTraceServiceResponse.FromString(over_http) == over_grpc
    assert json_status == 200
    assert json.loads(over_json) == {
        "partialSuccess": {"rejectedLogRecords": "3", "errorMessage": "3 items had no usable value"}
    }
    assert metrics.partial_success.rejected_data_points == 3


def test_too_large_bodies_are_413(loop: asyncio.AbstractEventLoop) -> None:
    pipeline = RecordingPipeline()
    big = b"\0" * 5000  # zero bytes are not even valid protobuf: the size check must come first
    bomb = gzip.compress(b"{}" + b" " * 100_000)

    with running(loop, pipeline, max_body_bytes=4096) as receiver:
        declared = post(receiver.http_port, "/v1/logs", big, PROTOBUF)
        chunked = post(receiver.http_port, "/v1/logs", big, PROTOBUF, chunked=True)
        inflated = post(receiver.http_port, "/v1/logs", bomb, JSON, encoding="gzip")
        fits = post(receiver.http_port, "/v1/logs", b"{}", JSON)
        over_grpc = grpc_error(receiver.grpc_port, "logs", big)
        inflated_over_grpc = grpc_error(receiver.grpc_port, "logs", big, compression=grpc.Compression.Gzip)

    assert declared[0] == chunked[0] == inflated[0] == 413
    assert "exceeds the limit of 4096 bytes" in Status.FromString(declared[2]).message
    assert "exceeds the limit of 4096 bytes" in json.loads(inflated[2])["message"]
    assert fits[0] == 200
    assert over_grpc.code() == inflated_over_grpc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [call[0] for call in pipeline.calls] == ["logs"]


def test_wrong_method_and_unknown_path(receiver: Receiver) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", receiver.http_port, timeout=30)
    try:
        connection.request("GET", "/v1/traces")
        assert connection.getresponse().status == 405
    finally:
        connection.close()
    assert post(receiver.http_port, "/v1/profiles", b"", PROTOBUF)[0] == 404


# --- health, tenants, lifecycle -----------------------------------------------------------------


def test_healthz(receiver: Receiver) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", receiver.http_port, timeout=30)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b"ok")
    finally:
        connection.close()


def test_one_tenant_resolver_serves_both_transports(loop: asyncio.AbstractEventLoop) -> None:
    pipeline = RecordingPipeline()
    seen: list[Mapping[str, str]] = []

    threads: set[str] = set()

    def tenant_for(headers: Mapping[str, str]) -> str:
        seen.append(headers)
        threads.add(threading.current_thread().name)
        return headers.get("authorization", "anonymous").removeprefix("Bearer ")

    body = (CAPTURES / "claude-grpc" / "logs-0.raw.pb").read_bytes()
    with running(loop, pipeline, tenant_for=tenant_for) as receiver:
        grpc_export(receiver.grpc_port, "logs", body, metadata=[("authorization", "Bearer key-g")])
        post(receiver.http_port, "/v1/logs", body, PROTOBUF, headers={"Authorization": "Bearer key-h"})
        post(receiver.http_port, "/v1/logs", body, PROTOBUF)

    assert [tenant for _, _, tenant in pipeline.calls] == ["key-g", "key-h", "anonymous"]
    assert "grpc-python" in seen[0]["user-agent"]  # gRPC metadata arrives as lower-case headers
    assert seen[1]["content-type"] == PROTOBUF
    assert "receiver-loop" not in threads  # it may block on an API key lookup


def test_a_refusing_tenant_resolver_stops_the_export(loop: asyncio.AbstractEventLoop) -> None:
    pipeline = RecordingPipeline()

    def tenant_for(headers: Mapping[str, str]) -> str:
        raise PermanentError("missing API key")

    body = (CAPTURES / "claude-grpc" / "logs-0.raw.pb").read_bytes()
    with running(loop, pipeline, tenant_for=tenant_for) as receiver:
        error = grpc_error(receiver.grpc_port, "logs", body)
        status, _, answer = post(receiver.http_port, "/v1/logs", body, JSON)

    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "missing API key")
    assert (status, json.loads(answer)["message"]) == (400, "missing API key")
    assert pipeline.calls == []


def test_ports_are_picked_and_stop_is_idempotent(loop: asyncio.AbstractEventLoop) -> None:
    receiver = Receiver(RecordingPipeline(), grpc_port=0, http_port=0)
    run(loop, receiver.stop())  # before start: harmless

    run(loop, receiver.start())
    ports = (receiver.grpc_port, receiver.http_port)
    assert receiver.started
    run(loop, receiver.stop())
    run(loop, receiver.stop())

    assert 0 not in ports
    assert ports[0] != ports[1]
    assert not receiver.started
    for port in ports:  # both ports were released
        with socket.create_server(("127.0.0.1", port)):
            pass


def test_busy_ports_fail_start_without_leaking(
    loop: asyncio.AbstractEventLoop, shared: tuple[Receiver, RecordingPipeline]
) -> None:
    busy = shared[0]
    on_busy_http = Receiver(RecordingPipeline(), grpc_port=0, http_port=busy.http_port)
    on_busy_grpc = Receiver(RecordingPipeline(), grpc_port=busy.grpc_port, http_port=0)

    with pytest.raises(OSError):
        run(loop, on_busy_http.start())
    with pytest.raises(OSError):
        run(loop, on_busy_grpc.start())

    assert not on_busy_http.started
    assert not on_busy_grpc.started
    with socket.create_server(("127.0.0.1", on_busy_http.grpc_port)):  # its gRPC port was released
        pass
    assert post(busy.http_port, "/v1/logs", b"", PROTOBUF)[0] == 200


def test_serve_forever_until_stopped(loop: asyncio.AbstractEventLoop) -> None:
    receiver = Receiver(RecordingPipeline(), grpc_port=0, http_port=0)
    serving = asyncio.run_coroutine_threadsafe(receiver.serve_forever(), loop)
    for _ in range(1000):
        if receiver.started:
            break
        time.sleep(0.01)

    assert post(receiver.http_port, "/v1/traces", b"", PROTOBUF)[0] == 200
    run(loop, receiver.stop())
    serving.result(10)
    assert not receiver.started


def test_routes_can_be_added_to_the_http_app(loop: asyncio.AbstractEventLoop) -> None:
    async def version(request: Request) -> Response:
        return PlainTextResponse("0.1.0")

    receiver = Receiver(RecordingPipeline(), grpc_port=0, http_port=0)
    receiver.http_app.add_route("/version", version, methods=["GET"])
    run(loop, receiver.start())
    try:
        connection = http.client.HTTPConnection("127.0.0.1", receiver.http_port, timeout=30)
        connection.request("GET", "/version")
        assert connection.getresponse().read() == b"0.1.0"
        connection.close()
    finally:
        run(loop, receiver.stop())


def test_a_failing_http_app_startup_fails_start_cleanly(loop: asyncio.AbstractEventLoop) -> None:
    @contextlib.asynccontextmanager
    async def broken_lifespan(app: Any) -> AsyncIterator[None]:
        raise RuntimeError("app startup failed")
        yield

    receiver = Receiver(RecordingPipeline(), grpc_port=0, http_port=0)
    receiver.http_app.router.lifespan_context = broken_lifespan

    with pytest.raises(RuntimeError, match="failed to start"):
        run(loop, receiver.start())

    assert not receiver.started
    assert run(loop, asyncio.sleep(0, result="loop still runs")) == "loop still runs"
    for port in (receiver.grpc_port, receiver.http_port):
        with socket.create_server(("127.0.0.1", port)):
            pass
