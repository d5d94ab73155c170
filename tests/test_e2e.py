"""End to end: real OTLP clients -> a real receiver on ephemeral ports -> real databases -> usage_daily."""

from __future__ import annotations

import asyncio
import gzip
import random
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from ground_truth import TOKEN_KINDS, capture_bodies, labels
from otlp_clients import background_loop, grpc_export, post, running
from tokenscale.pipeline import ExportPipeline
from tokenscale.receiver.server import Receiver
from tokenscale.store import migrate
from tokenscale.store.writer import UsageWriter, open_pool
from usage_db import daily_by_model, expected_daily


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    with background_loop() as event_loop:
        yield event_loop


@pytest.fixture
def receiver(db_url: str, loop: asyncio.AbstractEventLoop) -> Iterator[Receiver]:
    """A receiver writing to a freshly migrated database."""
    migrate(db_url)
    pool = open_pool(db_url)
    try:
        with running(loop, ExportPipeline(UsageWriter(pool))) as live:
            yield live
    finally:
        pool.close()


# --- (a) the OpenTelemetry SDK's own exporters ----------------------------------------------------


def _genai_requests(seed: int, n: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "model": rng.choice(["gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-pro"]),
            "user": rng.choice(["ana@example.com", "bo@example.com"]),
            "input": rng.randint(1, 50_000),
            "cache_read": rng.randint(0, 1_000),
            "output": rng.randint(1, 4_000),
            "reasoning": rng.randint(0, 500),
        }
        for _ in range(n)
    ]


def _sdk(transport: str, port: int, service: str) -> tuple[TracerProvider, MeterProvider]:
    resource = Resource.create({"service.name": service, "service.instance.id": f"{service}-1"})
    if transport == "grpc":
        span_exporter: Any = GrpcSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True)
        metric_exporter: Any = GrpcMetricExporter(endpoint=f"127.0.0.1:{port}", insecure=True)
    else:
        span_exporter = HttpSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces")
        metric_exporter = HttpMetricExporter(endpoint=f"http://127.0.0.1:{port}/v1/metrics")
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter, max_export_batch_size=7))
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=3_600_000)
    return tracer_provider, MeterProvider(resource=resource, metric_readers=[reader])


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sdk_spans_and_metrics_are_counted_once(receiver: Receiver, db_url: str, transport: str) -> None:
    port = receiver.grpc_port if transport == "grpc" else receiver.http_port
    tracer_provider, meter_provider = _sdk(transport, port, "support-bot")
    tracer = tracer_provider.get_tracer("app")
    histogram = meter_provider.get_meter("app").create_histogram("gen_ai.client.token.usage", unit="{token}")
    requests = _genai_requests(seed=7, n=40)
    for i, r in enumerate(requests):
        with tracer.start_as_current_span(f"chat {r['model']}") as span:
            span.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": r["model"],
                    "gen_ai.response.model": r["model"],
                    # Semantic conventions: input includes cache reads, output includes reasoning.
                    "gen_ai.usage.input_tokens": r["input"] + r["cache_read"],
                    "gen_ai.usage.cache_read.input_tokens": r["cache_read"],
                    "gen_ai.usage.output_tokens": r["output"] + r["reasoning"],
                    "gen_ai.usage.reasoning.output_tokens": r["reasoning"],
                    "user.email": r["user"],
                }
            )
        common = {"gen_ai.operation.name": "chat", "gen_ai.request.model": r["model"]}
        histogram.record(r["input"] + r["cache_read"], {**common, "gen_ai.token.type": "input"})
        histogram.record(r["output"] + r["reasoning"], {**common, "gen_ai.token.type": "output"})
        if i == 19:  # a cumulative export in the middle, before any span was exported
            assert meter_provider.force_flush()
    assert meter_provider.force_flush()
    assert tracer_provider.force_flush()
    tracer_provider.shutdown()
    meter_provider.shutdown()

    expected: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(("requests", *TOKEN_KINDS), 0))
    for r in requests:
        row = expected[r["model"]]
        row["requests"] += 1
        row["input_tokens"] += r["input"]
        row["cache_read_tokens"] += r["cache_read"]
        row["output_tokens"] += r["output"] + r["reasoning"]
        row["reasoning_tokens"] += r["reasoning"]
    assert daily_by_model(db_url) == dict(expected)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sdk_cumulative_metrics_alone_are_exact(receiver: Receiver, db_url: str, transport: str) -> None:
    port = receiver.grpc_port if transport == "grpc" else receiver.http_port
    _, meter_provider = _sdk(transport, port, "batch-job")
    histogram = meter_provider.get_meter("job").create_histogram("gen_ai.client.token.usage")
    requests = _genai_requests(seed=11, n=30)
    for i, r in enumerate(requests):
        common = {"gen_ai.request.model": r["model"], "gen_ai.provider.name": "openai"}
        histogram.record(r["input"], {**common, "gen_ai.token.type": "input"})
        histogram.record(r["output"], {**common, "gen_ai.token.type": "output"})
        if i % 10 == 9:
            assert meter_provider.force_flush()  # every export repeats the running totals
    meter_provider.shutdown()

    expected: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(("requests", *TOKEN_KINDS), 0))
    for r in requests:
        expected[r["model"]]["requests"] += 1
        expected[r["model"]]["input_tokens"] += r["input"]
        expected[r["model"]]["output_tokens"] += r["output"]
    assert daily_by_model(db_url) == dict(expected)


# --- (b) captured payloads of real clients, replayed unchanged -------------------------------------


def _send(receiver: Receiver, transport: str, signal: str, body: bytes) -> None:
    if transport == "grpc":
        response = grpc_export(receiver.grpc_port, signal, body, compression=grpc.Compression.Gzip)
        assert not response.HasField("partial_success") or not response.partial_success.error_message
        return
    content_type = "application/json" if transport == "http/json" else "application/x-protobuf"
    status, _, answer = post(
        receiver.http_port, f"/v1/{signal}", gzip.compress(body), content_type, encoding="gzip", chunked=True
    )
    assert status == 200, answer


def _replay_cases() -> list[tuple[str, str]]:
    cases = []
    for label in labels():
        suffixes = {raw.suffix for _, raw, _ in capture_bodies(label)}
        if suffixes == {".json"}:
            cases.append((label, "http/json"))
        else:
            cases.extend([(label, "grpc"), (label, "http/protobuf")])
    return cases


@pytest.mark.parametrize(("label", "transport"), _replay_cases())
def test_replayed_capture_equals_ground_truth(
    receiver: Receiver, db_url: str, label: str, transport: str
) -> None:
    for signal, raw, _ in capture_bodies(label):
        _send(receiver, transport, signal, raw.read_bytes())
    assert daily_by_model(db_url) == expected_daily(label)


# --- restarts and several receivers on one database ---------------------------------------------


def test_receiver_restart_between_cumulative_exports(db_url: str, loop: asyncio.AbstractEventLoop) -> None:
    label = "claude-tools-slow-cumulative-httpproto"
    bodies = [(s, raw.read_bytes()) for s, raw, _ in capture_bodies(label)]
    migrate(db_url)
    for part in (bodies[: len(bodies) // 2], bodies[len(bodies) // 2 :]):
        pool = open_pool(db_url)  # a new process: nothing kept in memory between the two
        try:
            with running(loop, ExportPipeline(UsageWriter(pool))) as live:
                for signal, body in part:
                    _send(live, "http/protobuf", signal, body)
        finally:
            pool.close()
    assert daily_by_model(db_url) == expected_daily(label)


def test_two_receivers_sharing_one_database(db_url: str, loop: asyncio.AbstractEventLoop) -> None:
    label = "claude-tools-slow-cumulative-httpproto"
    bodies = [(s, raw.read_bytes()) for s, raw, _ in capture_bodies(label)]
    migrate(db_url)
    pools = [open_pool(db_url), open_pool(db_url)]
    try:
        with (
            running(loop, ExportPipeline(UsageWriter(pools[0]))) as first,
            running(loop, ExportPipeline(UsageWriter(pools[1]))) as second,
        ):
            # Every export goes to both receivers (a client retrying against a load balancer), in turn.
            for i, (signal, body) in enumerate(bodies):
                a, b = (first, second) if i % 2 else (second, first)
                _send(a, "grpc", signal, body)
                _send(b, "http/protobuf", signal, body)
    finally:
        for pool in pools:
            pool.close()
    assert daily_by_model(db_url) == expected_daily(label)


# --- errors the client sees -------------------------------------------------------------------------


def test_a_hostile_record_is_rejected_and_the_rest_kept(receiver: Receiver, db_url: str) -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest  # noqa: PLC0415

    signal, raw, _ = next(b for b in capture_bodies("claude-grpc") if b[0] == "logs")
    request = ExportLogsServiceRequest.FromString(raw.read_bytes())
    records = request.resource_logs[0].scope_logs[0].log_records
    bad = records.add()
    bad.CopyFrom(next(r for r in records if any(a.value.string_value == "api_request" for a in r.attributes)))
    for attribute in bad.attributes:
        if attribute.key == "output_tokens":
            attribute.value.int_value = -3
    response = grpc_export(receiver.grpc_port, signal, request.SerializeToString())
    assert response.partial_success.rejected_log_records == 1
    assert "output_tokens: negative" in response.partial_success.error_message
    assert daily_by_model(db_url) == expected_daily("claude-grpc")  # the good record, once


def test_an_unreachable_database_is_retryable_for_the_client(loop: asyncio.AbstractEventLoop) -> None:
    pool = open_pool("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1", min_size=0)
    body = next(raw for s, raw, _ in capture_bodies("claude-grpc") if s == "logs").read_bytes()
    try:
        with running(loop, ExportPipeline(UsageWriter(pool, timeout=1.0))) as live:
            status, headers, _ = post(live.http_port, "/v1/logs", body, "application/x-protobuf")
            assert status == 503
            assert "retry-after" in headers
            with pytest.raises(grpc.RpcError) as raised:
                grpc_export(live.grpc_port, "logs", body)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        pool.close()


def test_non_finite_attribute_values_do_not_break_the_export(receiver: Receiver, db_url: str) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: PLC0415
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue  # noqa: PLC0415

    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="app")))
    span = rs.scope_spans.add().spans.add(
        name="chat gpt-4o-mini",
        trace_id=b"n" * 16,
        span_id=b"s" * 8,
        start_time_unix_nano=1_795_431_600 * 10**9,
        end_time_unix_nano=1_795_431_601 * 10**9,
    )
    span.attributes.extend(
        [
            KeyValue(key="gen_ai.request.model", value=AnyValue(string_value="gpt-4o-mini")),
            KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=10)),
            KeyValue(key="tokenscale.meta.temperature", value=AnyValue(double_value=float("nan"))),
        ]
    )
    response = grpc_export(receiver.grpc_port, "traces", request.SerializeToString())
    assert not response.partial_success.rejected_spans
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT input_tokens, attributes ? 'tokenscale.meta.temperature', "
            "jsonb_typeof(attributes->'tokenscale.meta.temperature') FROM tokenscale.usage_events"
        ).fetchone()
    assert row == (10, True, "null")  # NaN has no JSON form: stored as null, the usage kept
