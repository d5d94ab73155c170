"""instrument(): provider choice, OTLP export (headers, delta temporality, env vars), lifecycle."""

from __future__ import annotations

import gzip
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import wrapt
from fake_llm_api import FakeLLMAPI
from instr_support import Telemetry
from openai.resources.chat.completions.completions import Completions
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from tokenscale.instrumentation import (
    AnthropicInstrumentor,
    InstrumentationHandle,
    OpenAIInstrumentor,
    instrument,
)

HERE = Path(__file__).parent
ENV_NAMES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "TOKENSCALE_API_KEY",
)


@dataclass
class Export:
    path: str
    headers: dict[str, str]
    body: bytes


class OtlpHttpCapture:
    """A tiny OTLP/HTTP endpoint on 127.0.0.1 that keeps every export it receives."""

    def __init__(self) -> None:
        self.exports: list[Export] = []
        capture = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                headers = {key.lower(): value for key, value in self.headers.items()}
                capture.exports.append(Export(self.path, headers, body))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def to(self, path: str) -> list[Export]:
        return [export for export in self.exports if export.path == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def capture() -> Iterator[OtlpHttpCapture]:
    server = OtlpHttpCapture()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def handles() -> Iterator[list[InstrumentationHandle]]:
    made: list[InstrumentationHandle] = []
    yield made
    for handle in made:
        handle.shutdown()


def call_both(api: FakeLLMAPI) -> None:
    with openai.OpenAI(base_url=api.openai_base_url, api_key="k", max_retries=0) as client:
        client.chat.completions.create(model="gpt-5-mini", messages=[])
    with anthropic.Anthropic(base_url=api.anthropic_base_url, api_key="k", max_retries=0) as client:
        client.messages.create(model="claude-opus-4-8", max_tokens=10, messages=[])


def test_given_providers_lifecycle(
    fake_api: FakeLLMAPI,
    telemetry: Telemetry,
    handles: list[InstrumentationHandle],
    caplog: pytest.LogCaptureFixture,
) -> None:
    handle = instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
    handles.append(handle)
    assert [type(instrumentor) for instrumentor in handle.instrumentors] == [
        OpenAIInstrumentor,
        AnthropicInstrumentor,
    ]
    assert not handle.owns_tracer_provider and not handle.owns_meter_provider
    assert handle.span_exporter is None and handle.metric_exporter is None
    with caplog.at_level(logging.WARNING):
        assert instrument() is handle  # a second call changes nothing
    assert "already set up" in caplog.text

    call_both(fake_api)
    assert sorted(span.name for span in telemetry.spans()) == ["chat claude-opus-4-8", "chat gpt-5-mini"]

    handle.shutdown()
    assert handle.closed
    assert not isinstance(Completions.__dict__["create"], wrapt.FunctionWrapper)
    handle.shutdown()  # harmless
    call_both(fake_api)
    assert len(telemetry.spans()) == 2
    # Providers we were given are not ours to stop.
    telemetry.tracer_provider.get_tracer("t").start_span("still-alive").end()
    assert len(telemetry.spans()) == 3

    again = instrument(tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
    handles.append(again)
    assert again is not handle


def decode_traces(exports: list[Export]) -> ExportTraceServiceRequest:
    merged = ExportTraceServiceRequest()
    for export in exports:
        merged.MergeFromString(export.body)
    return merged


def decode_metrics(exports: list[Export]) -> ExportMetricsServiceRequest:
    merged = ExportMetricsServiceRequest()
    for export in exports:
        merged.MergeFromString(export.body)
    return merged


def resource_attributes(request: Any) -> dict[str, str]:
    resource = request.resource_spans[0].resource if hasattr(request, "resource_spans") else None
    if resource is None:
        resource = request.resource_metrics[0].resource
    return {attribute.key: attribute.value.string_value for attribute in resource.attributes}


def test_otlp_http_export_with_api_key(
    fake_api: FakeLLMAPI, capture: OtlpHttpCapture, handles: list[InstrumentationHandle]
) -> None:
    handle = instrument(capture.url, api_key="ts-key", service_name="billing-bot", protocol="http/protobuf")
    handles.append(handle)
    assert handle.owns_tracer_provider and handle.owns_meter_provider
    call_both(fake_api)
    assert handle.force_flush()

    traces = capture.to("/v1/traces")
    assert traces and all(export.headers["authorization"] == "Bearer ts-key" for export in traces)
    request = decode_traces(traces)
    assert resource_attributes(request)["service.name"] == "billing-bot"
    spans = {
        span.name: {attribute.key: attribute.value for attribute in span.attributes}
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    }
    assert set(spans) == {"chat gpt-5-mini", "chat claude-opus-4-8"}
    assert spans["chat gpt-5-mini"]["gen_ai.usage.input_tokens"].int_value == 1200
    assert spans["chat claude-opus-4-8"]["gen_ai.usage.input_tokens"].int_value == 2350

    exported = capture.to("/v1/metrics")
    assert exported and all(export.headers["authorization"] == "Bearer ts-key" for export in exported)
    temporalities = {}
    for resource_metrics in decode_metrics(exported).resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                temporalities[metric.name] = getattr(metric, kind).aggregation_temporality
                if kind == "sum":
                    assert metric.sum.is_monotonic
    assert set(temporalities) == {
        "gen_ai.client.token.usage",
        "gen_ai.client.operation.duration",
        "gen_ai.client.inference.usage.input_tokens",
        "gen_ai.client.inference.usage.output_tokens",
        "gen_ai.client.inference.usage.cache_read.input_tokens",
        "gen_ai.client.inference.usage.cache_write.input_tokens",
        "gen_ai.client.inference.usage.reasoning.output_tokens",
    }
    assert set(temporalities.values()) == {AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA}


def test_standard_env_vars(
    fake_api: FakeLLMAPI,
    capture: OtlpHttpCapture,
    handles: list[InstrumentationHandle],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", capture.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=blue")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "env-service")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    monkeypatch.setenv("TOKENSCALE_API_KEY", "env-key")
    handle = instrument()
    handles.append(handle)
    call_both(fake_api)
    handle.force_flush()
    traces = capture.to("/v1/traces")
    assert traces
    assert traces[0].headers["x-team"] == "blue"
    assert traces[0].headers["authorization"] == "Bearer env-key"
    attributes = resource_attributes(decode_traces(traces))
    assert attributes["service.name"] == "env-service"
    assert attributes["deployment.environment"] == "test"
    assert capture.to("/v1/metrics")


def test_env_temporality_preference_wins(
    fake_api: FakeLLMAPI,
    capture: OtlpHttpCapture,
    handles: list[InstrumentationHandle],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "cumulative")
    handle = instrument(capture.url, protocol="http/protobuf")
    handles.append(handle)
    call_both(fake_api)
    handle.force_flush()
    request = decode_metrics(capture.to("/v1/metrics"))
    metric = request.resource_metrics[0].scope_metrics[0].metrics[0]
    kind = metric.WhichOneof("data")
    assert (
        getattr(metric, kind).aggregation_temporality
        == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    )


def test_grpc_is_the_default_protocol(handles: list[InstrumentationHandle]) -> None:
    handle = instrument("http://127.0.0.1:4317", api_key="k")
    handles.append(handle)
    assert type(handle.span_exporter).__module__ == "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
    assert type(handle.metric_exporter).__module__ == "opentelemetry.exporter.otlp.proto.grpc.metric_exporter"
    started = time.monotonic()
    handle.shutdown()  # nothing recorded: nothing to send, quick
    assert time.monotonic() - started < 5


def test_unknown_protocol_is_rejected() -> None:
    with pytest.raises(ValueError, match="http/json"):
        instrument("http://127.0.0.1:4318", protocol="http/json")  # type: ignore[arg-type]


REUSE_SCRIPT = textwrap.dedent(
    """
    import sys
    import openai
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from tokenscale.instrumentation import instrument

    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    handle = instrument(service_name="ignored-when-reusing")
    client = openai.OpenAI(base_url=sys.argv[1], api_key="k", max_retries=0)
    client.chat.completions.create(model="gpt-5-mini", messages=[])
    print(handle.tracer_provider is provider, handle.owns_tracer_provider, handle.owns_meter_provider)
    print([span.name for span in exporter.get_finished_spans()])
    print(reader.get_metrics_data() is not None)
    handle.shutdown()

    explicit = instrument("http://127.0.0.1:4317", api_key="k")
    print(explicit.tracer_provider is provider, explicit.owns_tracer_provider)
    explicit.shutdown()
    """
)


def test_reuses_sdk_global_providers_unless_an_endpoint_is_given(fake_api: FakeLLMAPI) -> None:
    # In a subprocess: global providers can be set only once per process.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    for name in ENV_NAMES:
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", REUSE_SCRIPT, fake_api.openai_base_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "True False False",
        "['chat gpt-5-mini']",
        "True",
        "False True",
    ]
