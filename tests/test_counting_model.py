"""The counting model on real databases through a real receiver: per-request records by their own
identity, aggregate carriers reconciled against them, records never withdrawn (docs/mapping.md)."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from genai_prices import Usage, calc_price
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from ground_truth import TOKEN_KINDS, capture_bodies
from otlp_clients import background_loop, grpc_export, running
from tokenscale.api._values import Params
from tokenscale.api.usage_records import list_usage_records
from tokenscale.pipeline import ExportPipeline
from tokenscale.receiver.server import Receiver
from tokenscale.store import migrate
from tokenscale.store.writer import UsageWriter, open_pool
from usage_db import assert_rollups_match_events, daily_by_model, expected_daily

T0 = 1_795_431_600 * 10**9  # 2026-11-23T10:00:00Z
SECOND = 10**9


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    with background_loop() as event_loop:
        yield event_loop


@pytest.fixture
def receiver(db_url: str, loop: asyncio.AbstractEventLoop) -> Iterator[Receiver]:
    migrate(db_url)
    pool = open_pool(db_url)
    try:
        with running(loop, ExportPipeline(UsageWriter(pool))) as live:
            yield live
    finally:
        pool.close()


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(int_value=value))


def send(receiver: Receiver, signal: str, request: Any) -> Any:
    response = grpc_export(receiver.grpc_port, signal, request.SerializeToString())
    assert not response.HasField("partial_success") or not response.partial_success.error_message
    return response


def totals(url: str) -> dict[str, dict[str, int]]:
    return {m: {k: v for k, v in row.items() if k != "requests"} for m, row in daily_by_model(url).items()}


# --- (a) sampled traces, complete metrics ---------------------------------------------------------


class _SeededIds(IdGenerator):
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def generate_span_id(self) -> int:
        return self._rng.getrandbits(64)

    def generate_trace_id(self) -> int:
        return self._rng.getrandbits(128)


@pytest.mark.parametrize("first", ["metrics", "spans"])
def test_sampled_traces_with_complete_metrics_count_every_request(
    receiver: Receiver, db_url: str, first: str
) -> None:
    """An app samples 10% of its traces and records gen_ai.client.token.usage for every request
    (the real OTel SDK and its OTLP exporters): every request is counted once, in either order."""
    resource = Resource.create({"service.name": "sampled-app", "service.instance.id": "sampled-app-1"})
    endpoint = f"127.0.0.1:{receiver.grpc_port}"
    tracer_provider = TracerProvider(
        resource=resource, sampler=TraceIdRatioBased(0.1), id_generator=_SeededIds(11)
    )
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=50))
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=endpoint, insecure=True), export_interval_millis=3_600_000
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    tracer = tracer_provider.get_tracer("app")
    histogram = meter_provider.get_meter("app").create_histogram("gen_ai.client.token.usage", unit="{token}")
    rng = random.Random(5)
    expected: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(TOKEN_KINDS, 0))
    calls: dict[str, int] = {}
    sampled = 0
    for i in range(200):
        model = rng.choice(["gpt-4o-mini", "gpt-4.1"])
        prompt, output = rng.randint(1, 20_000), rng.randint(1, 2_000)
        with tracer.start_as_current_span(f"chat {model}") as span:
            sampled += span.is_recording()
            span.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": model,
                    "gen_ai.response.id": f"chatcmpl-{i}",
                    "gen_ai.usage.input_tokens": prompt,
                    "gen_ai.usage.output_tokens": output,
                    "user.email": rng.choice(["ana@example.com", "bo@example.com"]),
                }
            )
        common = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model}
        histogram.record(prompt, {**common, "gen_ai.token.type": "input"})
        histogram.record(output, {**common, "gen_ai.token.type": "output"})
        calls[model] = calls.get(model, 0) + 1
        expected[model]["input_tokens"] += prompt
        expected[model]["output_tokens"] += output
    assert 5 <= sampled <= 40  # about 10%: the test mixes sampled spans with metrics
    flush = [meter_provider.force_flush, tracer_provider.force_flush]
    for f in flush if first == "metrics" else reversed(flush):
        assert f()
    tracer_provider.shutdown()
    meter_provider.shutdown()
    assert totals(db_url) == dict(expected)
    assert {m: row["requests"] for m, row in daily_by_model(db_url).items()} == calls
    assert_rollups_match_events(db_url)


# --- (b) one conversation, a span-only request and an event-only request -----------------------------


def _span_request(
    conversation: str, response_id: str, tokens: int, time_ns: int
) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend([kv("service.name", "support-bot")])
    span = rs.scope_spans.add().spans.add(
        name="chat gpt-4o-mini",
        trace_id=response_id.encode().ljust(16, b"\0")[:16],
        span_id=b"\1" * 8,
        start_time_unix_nano=time_ns - SECOND,
        end_time_unix_nano=time_ns,
    )
    span.attributes.extend(
        [
            kv("gen_ai.operation.name", "chat"),
            kv("gen_ai.provider.name", "openai"),
            kv("gen_ai.request.model", "gpt-4o-mini"),
            kv("gen_ai.conversation.id", conversation),
            kv("gen_ai.response.id", response_id),
            kv("gen_ai.usage.input_tokens", tokens),
            kv("gen_ai.usage.output_tokens", 1),
        ]
    )
    return request


def _event_request(
    conversation: str, response_id: str, tokens: int, time_ns: int
) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.extend([kv("service.name", "support-bot")])
    record = rl.scope_logs.add().log_records.add(
        time_unix_nano=time_ns, event_name="gen_ai.client.inference.operation.details"
    )
    record.attributes.extend(
        [
            kv("gen_ai.operation.name", "chat"),
            kv("gen_ai.provider.name", "openai"),
            kv("gen_ai.request.model", "gpt-4o-mini"),
            kv("gen_ai.conversation.id", conversation),
            kv("gen_ai.response.id", response_id),
            kv("gen_ai.usage.input_tokens", tokens),
            kv("gen_ai.usage.output_tokens", 1),
        ]
    )
    return request


def _records(url: str, tenant: str = "default") -> dict[str, dict[str, Any]]:
    with psycopg.connect(url) as conn:
        page = list_usage_records(conn, tenant, Params({"take": ["500"]}))
    return {r["id"]: r for r in page["items"]}


def test_span_only_and_event_only_requests_of_one_conversation_both_count(
    receiver: Receiver, db_url: str
) -> None:
    send(receiver, "traces", _span_request("conv-1", "chatcmpl-A", 999, T0))
    first = _records(db_url)
    send(receiver, "logs", _event_request("conv-1", "chatcmpl-B", 500, T0 + SECOND))
    assert totals(db_url) == {
        "gpt-4o-mini": {
            "input_tokens": 1499,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "output_tokens": 2,
            "reasoning_tokens": 0,
        }
    }
    after = _records(db_url)
    assert first.items() <= after.items()  # request A's record is still listed, unchanged
    assert sorted(r["count"] for r in after.values()) == [501, 1000]


# --- (c) runs without a session id; concurrent Codex runs ----------------------------------------


def _claude(
    run: str, user: str, requests: list[tuple[str, int, int]], signals: set[str], t: int
) -> list[Any]:
    """A Claude-Code-like run without ``session.id`` (OTEL_METRICS_INCLUDE_SESSION_ID=false): delta
    token metrics and/or api_request events; ``requests`` are (request id, input, output)."""
    out: list[Any] = []
    resource = [kv("service.name", "claude-code"), kv("service.version", "2.1.197")]
    identity = [kv("user.id", user), kv("organization.id", "org-1")]
    if "logs" in signals:
        logs = ExportLogsServiceRequest()
        rl = logs.resource_logs.add()
        rl.resource.attributes.extend(resource)
        scope = rl.scope_logs.add()
        for i, (request_id, inp, output) in enumerate(requests):
            record = scope.log_records.add(time_unix_nano=t + i * SECOND)
            record.attributes.extend(
                [
                    kv("event.name", "api_request"),
                    *identity,
                    kv("model", "claude-opus-4-8"),
                    kv("request_id", request_id),
                    kv("input_tokens", inp),
                    kv("output_tokens", output),
                    kv("cache_read_tokens", 0),
                    kv("cache_creation_tokens", 0),
                ]
            )
        out.append(("logs", logs))
    if "metrics" in signals:
        metrics = ExportMetricsServiceRequest()
        rm = metrics.resource_metrics.add()
        rm.resource.attributes.extend(resource)
        metric = rm.scope_metrics.add().metrics.add(name="claude_code.token.usage")
        metric.sum.aggregation_temporality = 1
        metric.sum.is_monotonic = True
        for kind, value in (("input", sum(r[1] for r in requests)), ("output", sum(r[2] for r in requests))):
            point = metric.sum.data_points.add(
                start_time_unix_nano=t - SECOND, time_unix_nano=t + len(requests) * SECOND, as_double=value
            )
            point.attributes.extend([*identity, kv("model", "claude-opus-4-8"), kv("type", kind)])
        out.append(("metrics", metrics))
    return out


@pytest.mark.parametrize("second_user", ["same", "other"])
def test_runs_without_session_id_never_uncount_each_other(
    receiver: Receiver, db_url: str, second_user: str
) -> None:
    run1 = [("req_1", 1200, 3), ("req_2", 5, 1)]
    run2 = [("req_3", 1204, 2)]
    user2 = "u1" if second_user == "same" else "u2"
    for signal, request in _claude("1", "u1", run1, {"metrics"}, T0):
        send(receiver, signal, request)
    for signal, request in _claude("2", user2, run2, {"metrics", "logs"}, T0 + 3600 * SECOND):
        send(receiver, signal, request)
    [row] = daily_by_model(db_url).values()
    assert (row["input_tokens"], row["output_tokens"]) == (2409, 6)
    assert_rollups_match_events(db_url)


def _shifted(request: Any, signal: str, shift_ns: int, salt: bytes) -> Any:
    """A copy of a captured export as another run of the same client sent it: every timestamp
    moved by ``shift_ns``, every trace and span id salted."""
    copy = type(request).FromString(request.SerializeToString())
    if signal == "traces":
        for rs in copy.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    span.trace_id = bytes(a ^ b for a, b in zip(span.trace_id, salt * 16, strict=False))
                    span.span_id = bytes(a ^ b for a, b in zip(span.span_id, salt * 8, strict=False))
                    span.start_time_unix_nano += shift_ns
                    span.end_time_unix_nano += shift_ns
    elif signal == "logs":
        for rl in copy.resource_logs:
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    record.time_unix_nano += shift_ns if record.time_unix_nano else 0
                    record.observed_time_unix_nano += shift_ns
    else:
        for rm in copy.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points:
                        point.start_time_unix_nano += shift_ns
                        point.time_unix_nano += shift_ns
    return copy


def _decoded(label: str) -> list[tuple[str, Any]]:
    classes = {
        "logs": ExportLogsServiceRequest,
        "metrics": ExportMetricsServiceRequest,
        "traces": ExportTraceServiceRequest,
    }
    return [
        (signal, classes[signal].FromString(raw.read_bytes())) for signal, raw, _ in capture_bodies(label)
    ]


def test_two_concurrent_codex_runs_count_both(receiver: Receiver, db_url: str) -> None:
    """Two Codex CLI runs on one machine at once (same resource, no session id on spans and metrics),
    their exports interleaved: both counted, each once, with the model on every row."""
    first = _decoded("codex-grpc")
    second = [(s, _shifted(r, s, 700 * 10**6, b"\x5a")) for s, r in first]
    order = [second[2], first[0], second[0], first[2], first[1], second[1]]
    assert len(first) == len(second) == 3
    for signal, request in order:
        send(receiver, signal, request)
    truth = expected_daily("codex-grpc")
    doubled = {m: {k: 2 * v for k, v in row.items()} for m, row in truth.items()}
    assert daily_by_model(db_url) == doubled
    assert_rollups_match_events(db_url)


# --- (d) records are never withdrawn -------------------------------------------------------------


def test_a_listed_record_stays_listed_after_every_later_export(receiver: Receiver, db_url: str) -> None:
    """Claude Code's span for request 1, its event for request 2, its event for request 1 (a better
    carrier: the record is amended, not replaced), the session's metrics, then every export again."""
    session = [kv("session.id", "s-1"), kv("user.id", "u1")]

    def llm_span(request_id: str, inp: int) -> ExportTraceServiceRequest:
        request = ExportTraceServiceRequest()
        rs = request.resource_spans.add()
        rs.resource.attributes.extend([kv("service.name", "claude-code")])
        span = rs.scope_spans.add().spans.add(
            name="claude_code.llm_request",
            trace_id=b"t" * 16,
            span_id=request_id.encode().ljust(8, b"\0")[:8],
            start_time_unix_nano=T0,
            end_time_unix_nano=T0 + SECOND,
        )
        span.attributes.extend(
            [*session, kv("model", "claude-opus-4-8"), kv("request_id", request_id), kv("input_tokens", inp)]
        )
        return request

    exports = [
        ("traces", llm_span("req_1", 100)),
        *(_claude("x", "u1", [("req_2", 50, 2)], {"logs"}, T0 + 5 * SECOND)),
        *(_claude("x", "u1", [("req_1", 100, 7)], {"logs"}, T0 + 2 * SECOND)),
        *(_claude("x", "u1", [("req_1", 100, 7), ("req_2", 50, 2)], {"metrics"}, T0 + 2 * SECOND)),
    ]
    for _, request in exports[1:]:  # the same session as the span
        for resource in getattr(request, "resource_logs", []) or getattr(request, "resource_metrics", []):
            for scope in getattr(resource, "scope_logs", []):
                for record in scope.log_records:
                    record.attributes.append(kv("session.id", "s-1"))
            for scope in getattr(resource, "scope_metrics", []):
                for metric in scope.metrics:
                    for point in metric.sum.data_points:
                        point.attributes.append(kv("session.id", "s-1"))
    seen: dict[str, dict[str, Any]] = {}
    for signal, request in [*exports, *exports]:
        send(receiver, signal, request)
        listed = _records(db_url)
        assert set(seen) <= set(listed), "a listed record disappeared"
        for record_id, record in seen.items():
            assert listed[record_id]["createdAt"] == record["createdAt"]
            assert listed[record_id]["updatedAt"] >= record["updatedAt"]
        seen = listed
    assert len(seen) == 2
    by_message = {r["messageId"]: r for r in seen.values()}
    assert by_message["req_1"]["count"] == 107  # the event's output, amended into the span's record
    assert by_message["req_1"]["updatedAt"] > by_message["req_1"]["createdAt"]
    assert by_message["req_2"]["count"] == 52
    [row] = daily_by_model(db_url).values()
    assert (row["input_tokens"], row["output_tokens"], row["requests"]) == (150, 9, 2)
    assert_rollups_match_events(db_url)


# --- cost and bad values -------------------------------------------------------------------------


def test_metric_only_cost_equals_genai_prices(receiver: Receiver, db_url: str) -> None:
    """Codex CLI exporting only metrics: the cost of the disjoint usage, cache reads at their rate."""
    [(signal, request)] = [(s, r) for s, r in _decoded("codex-grpc") if s == "metrics"]
    send(receiver, signal, request)
    with psycopg.connect(db_url) as conn:
        [(model, cost)] = conn.execute("SELECT model, sum(cost_usd) FROM tokenscale.usage_daily GROUP BY 1")
    truth = expected_daily("codex-grpc")[model]
    price = calc_price(
        Usage(
            input_tokens=truth["input_tokens"] + truth["cache_read_tokens"],
            cache_read_tokens=truth["cache_read_tokens"],
            output_tokens=truth["output_tokens"],
        ),
        model,
        provider_id="openai",
    ).total_price
    assert float(cost) == pytest.approx(float(price), abs=1e-9)


def test_cache_above_input_is_rejected_naming_the_field(receiver: Receiver, db_url: str) -> None:
    request = _span_request("conv-9", "chatcmpl-Z", 10, T0)
    request.resource_spans[0].scope_spans[0].spans[0].attributes.append(
        kv("gen_ai.usage.cache_read.input_tokens", 50)
    )
    good = _span_request("conv-9", "chatcmpl-Y", 7, T0).resource_spans[0].scope_spans[0].spans[0]
    good.span_id = b"\2" * 8
    request.resource_spans[0].scope_spans[0].spans.append(good)
    response = grpc_export(receiver.grpc_port, "traces", request.SerializeToString())
    assert response.partial_success.rejected_spans == 1
    assert "gen_ai.usage.cache_read.input_tokens" in response.partial_success.error_message
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT input_tokens, cache_read_tokens FROM tokenscale.usage_events").fetchall()
    assert rows == [(7, 0)]


def test_request_counts_beyond_int4(receiver: Receiver, db_url: str) -> None:
    metrics = ExportMetricsServiceRequest()
    rm = metrics.resource_metrics.add()
    rm.resource.attributes.extend([kv("service.name", "batch-app")])
    metric = rm.scope_metrics.add().metrics.add(name="gen_ai.client.token.usage")
    metric.histogram.aggregation_temporality = 1
    point = metric.histogram.data_points.add(
        start_time_unix_nano=T0 - SECOND, time_unix_nano=T0, sum=9e9, count=3_000_000_000
    )
    point.attributes.extend([kv("gen_ai.request.model", "gpt-4o-mini"), kv("gen_ai.token.type", "input")])
    send(receiver, "metrics", metrics)
    [row] = daily_by_model(db_url).values()
    assert (row["requests"], row["input_tokens"]) == (3_000_000_000, 9_000_000_000)


def test_unpriced_events_count_requests(receiver: Receiver, db_url: str) -> None:
    """A private model's usage, known only from a histogram of 5 requests: 5 unpriced requests."""
    metrics = ExportMetricsServiceRequest()
    rm = metrics.resource_metrics.add()
    rm.resource.attributes.extend([kv("service.name", "private-app")])
    metric = rm.scope_metrics.add().metrics.add(name="gen_ai.client.token.usage")
    metric.histogram.aggregation_temporality = 1
    point = metric.histogram.data_points.add(
        start_time_unix_nano=T0 - SECOND, time_unix_nano=T0, sum=500, count=5
    )
    point.attributes.extend([kv("gen_ai.request.model", "acme-private-7b"), kv("gen_ai.token.type", "input")])
    send(receiver, "metrics", metrics)
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT requests, unpriced_events, cost_usd FROM tokenscale.usage_daily"
        ).fetchall()
    assert rows == [(5, 5, None)]
    assert_rollups_match_events(db_url)


# --- a stream's first view racing record-only exports -------------------------------------------


def _ledger_event(key: str, *, aggregate: bool, inp: int, carrier: str, rank: int) -> Any:
    from hashlib import blake2b  # noqa: PLC0415

    from tokenscale.mapping import UsageEvent  # noqa: PLC0415

    return UsageEvent(
        T0 + (SECOND if aggregate else 0), "default", carrier, rank, "claude_code", "svc|inst", "svc",
        blake2b(key.encode(), digest_size=16).digest(), model="claude-opus-4-8", user_email="a@x",
        session_id="s1", provider="anthropic", requests=1, input_tokens=inp, output_tokens=1,
        identity=None if aggregate else key.encode(), aggregate=aggregate,
    )  # fmt: skip


def test_record_exports_that_find_a_new_first_view_under_their_locks_lock_again(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two exports carrying only records of a stream without views probe it, a first view of the
    stream commits, then both take their shared lock and find the view: each lets go and locks
    again, exclusively, in key order. Neither fails (no deadlock of two upgrades), and the totals
    are the view's (its records inside it)."""
    import threading  # noqa: PLC0415
    from dataclasses import replace  # noqa: PLC0415

    from tokenscale.mapping import MappingResult  # noqa: PLC0415
    from tokenscale.store import writer as w  # noqa: PLC0415

    migrate(db_url)
    pool = open_pool(db_url, max_size=4)
    pool.wait()
    probed = threading.Barrier(3, timeout=20)
    view_committed = threading.Event()
    both_locked = threading.Barrier(2, timeout=20)
    real_lock_streams = w._lock_streams

    class Paused:
        """The export's connection, paused before its first lock until the view committed, and
        after it until the other record export holds its shared lock too."""

        def __init__(self, conn: Any) -> None:
            self.conn, self.locks = conn, 0

        def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
            if query is w._LOCK_STREAMS and self.locks == 0:
                probed.wait()
                assert view_committed.wait(20)
            cursor = self.conn.execute(query, params, **kw)
            if query is w._LOCK_STREAMS:
                self.locks += 1
                if self.locks == 1:
                    both_locked.wait()
            return cursor

        def transaction(self) -> Any:
            return self.conn.transaction()

    def lock_streams(conn: Any, streams: Any, columns: Any, viewed: Any) -> Any:
        if viewed:  # the view's export: as it is
            return real_lock_streams(conn, streams, columns, viewed)
        return real_lock_streams(Paused(conn), streams, columns, viewed)

    # The day's partition or chunk exists before the paused exports (creating it takes a lock
    # the other export would wait for while this one waits for it at the barrier).
    warm_up = _ledger_event("w1", aggregate=False, inp=7, carrier="claude_code.api_request", rank=1)
    UsageWriter(pool).write(MappingResult(events=[replace(warm_up, stream="other|inst")]))
    monkeypatch.setattr(w, "_lock_streams", lock_streams)
    errors: list[BaseException] = []

    def write(result: Any) -> None:
        try:
            UsageWriter(pool).write(result)
        except BaseException as exc:  # reported below
            errors.append(exc)

    records = [
        MappingResult(
            events=[_ledger_event(k, aggregate=False, inp=n, carrier="claude_code.api_request", rank=1)]
        )
        for k, n in (("r1", 100), ("r2", 50))
    ]
    threads = [threading.Thread(target=write, args=(r,)) for r in records]
    for t in threads:
        t.start()
    probed.wait()
    view = _ledger_event("v1", aggregate=True, inp=400, carrier="claude_code.metrics", rank=10)
    write(MappingResult(events=[view]))
    view_committed.set()
    for t in threads:
        t.join(30)
    pool.close()
    assert errors == []
    with psycopg.connect(db_url) as conn:
        counted = conn.execute(
            "SELECT sum(input_tokens), count(*) FROM tokenscale.usage_events WHERE counted"
        ).fetchone()
    # the warm-up, the two records and the residual of the view beyond them (250)
    assert counted == (407, 4)
    assert_rollups_match_events(db_url)
