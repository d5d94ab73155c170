"""Property: whatever subset of carriers a client sends, in any order and batching, with retries, each
request is counted exactly once (real mapping, real writer, real databases)."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from dbservers import Server, fresh_database
from tokenscale.pipeline import ExportPipeline
from tokenscale.store import migrate
from tokenscale.store.refresh import Refresher
from tokenscale.store.writer import UsageWriter, open_pool
from usage_db import assert_rollups_match_events, daily_by_model

BASE_NS = 1_795_431_600 * 10**9  # 2026-11-23T10:00:00Z
DELTA, CUMULATIVE = 1, 2
KINDS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")
_counter = itertools.count()


@dataclass(frozen=True)
class Request:
    model: str
    uncached: int
    read: int
    write: int
    output: int
    #: The per-request carriers this request is reported by (a sampled trace, an event dropped):
    #: any subset of the session's; empty only when the session's metrics cover it.
    carriers: frozenset[str]
    #: Which identity the GenAI carriers name the request by: its response id (span and event), the
    #: trace context (the event emitted inside the span, neither with an id), or both.
    event_identity: str


@dataclass(frozen=True)
class Session:
    client: str  # "claude" (Claude Code's carriers) or "semconv" (a GenAI-instrumented app)
    carriers: frozenset[str]  # which of metric / event / span the client is configured to send
    temporality: int
    requests: tuple[Request, ...]
    chunk: int  # requests per export


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(int_value=value))


def request_strategy(client: str, carriers: frozenset[str]) -> st.SearchStrategy[Request]:
    models = ["claude-opus-4-8", "claude-haiku-4-5"] if client == "claude" else ["gpt-4o-mini", "gpt-5"]
    cache = st.integers(0, 50_000) if client == "claude" else st.just(0)  # semconv metrics lack the split
    per_request = sorted(carriers - {"metric"})
    subsets = st.sets(st.sampled_from(per_request), min_size=0 if "metric" in carriers else 1)
    return st.builds(
        Request,
        model=st.sampled_from(models),
        uncached=st.integers(0, 100_000),
        read=cache,
        write=cache,
        output=st.integers(1, 8_000),
        carriers=subsets.map(frozenset) if per_request else st.just(frozenset()),
        event_identity=st.sampled_from(["id", "context", "both"]),
    )


@st.composite
def session_strategy(draw: st.DrawFn) -> Session:
    client = draw(st.sampled_from(["claude", "semconv"]))
    carriers = frozenset(draw(st.sets(st.sampled_from(["metric", "event", "span"]), min_size=1)))
    return Session(
        client=client,
        carriers=carriers,
        temporality=draw(st.sampled_from([DELTA, CUMULATIVE])),
        requests=tuple(draw(st.lists(request_strategy(client, carriers), min_size=1, max_size=6))),
        chunk=draw(st.integers(1, 4)),
    )


def _resource(target: Any, session: Session, sid: str) -> None:
    service = "claude-code" if session.client == "claude" else "support-bot"
    target.resource.attributes.extend([kv("service.name", service), kv("service.instance.id", sid)])


def _usage_attrs(session: Session, r: Request) -> list[KeyValue]:
    if session.client == "claude":  # Anthropic's additive fields
        return [
            kv("model", r.model),
            kv("request_id", f"req_{id(r):x}"),
            kv("input_tokens", r.uncached),
            kv("cache_read_tokens", r.read),
            kv("cache_creation_tokens", r.write),
            kv("output_tokens", r.output),
        ]
    return [  # semantic conventions: input includes cache
        kv("gen_ai.request.model", r.model),
        kv("gen_ai.provider.name", "openai"),
        kv("gen_ai.operation.name", "chat"),
        kv("gen_ai.usage.input_tokens", r.uncached + r.read + r.write),
        kv("gen_ai.usage.cache_read.input_tokens", r.read),
        kv("gen_ai.usage.cache_creation.input_tokens", r.write),
        kv("gen_ai.usage.output_tokens", r.output),
    ]


def exports_of(session: Session) -> list[tuple[str, Any]]:
    """Every export the client sends for ``session``: one per carrier and chunk of requests."""
    sid = f"session-{next(_counter)}"
    chunks = [
        list(enumerate(session.requests))[i : i + session.chunk]
        for i in range(0, len(session.requests), session.chunk)
    ]
    out: list[tuple[str, Any]] = []
    running: dict[tuple[str, str], float] = defaultdict(float)
    for chunk in chunks:
        trace_id = sid.encode().ljust(16, b"\0")[:16]
        if any("event" in r.carriers for _, r in chunk):
            logs = ExportLogsServiceRequest()
            rl = logs.resource_logs.add()
            _resource(rl, session, sid)
            scope = rl.scope_logs.add()
            for i, r in chunk:
                if "event" not in r.carriers:
                    continue
                record = scope.log_records.add(time_unix_nano=BASE_NS + i * 10**9)
                name = (
                    "api_request"
                    if session.client == "claude"
                    else "gen_ai.client.inference.operation.details"
                )
                record.attributes.extend(
                    [kv("event.name", name), kv("session.id", sid), *_usage_attrs(session, r)]
                )
                if session.client == "semconv":
                    if r.event_identity in ("context", "both"):  # emitted inside the request's span
                        record.trace_id = trace_id
                        record.span_id = i.to_bytes(8, "big")
                    if r.event_identity in ("id", "both"):
                        record.attributes.append(kv("gen_ai.response.id", f"chatcmpl-{id(r):x}"))
            out.append(("logs", logs))
        if any("span" in r.carriers for _, r in chunk):
            traces = ExportTraceServiceRequest()
            rs = traces.resource_spans.add()
            _resource(rs, session, sid)
            scope = rs.scope_spans.add()
            for i, r in chunk:
                if "span" not in r.carriers:
                    continue
                span = scope.spans.add(
                    name="claude_code.llm_request" if session.client == "claude" else f"chat {r.model}",
                    trace_id=trace_id,
                    span_id=i.to_bytes(8, "big"),
                    start_time_unix_nano=BASE_NS + i * 10**9,
                    end_time_unix_nano=BASE_NS + i * 10**9 + 5 * 10**8,
                )
                span.attributes.extend([kv("session.id", sid), *_usage_attrs(session, r)])
                if session.client == "semconv" and r.event_identity in ("id", "both"):
                    span.attributes.append(kv("gen_ai.response.id", f"chatcmpl-{id(r):x}"))
            out.append(("traces", traces))
        if "metric" in session.carriers:
            delta: dict[tuple[str, str], float] = defaultdict(float)
            for _, r in chunk:
                if session.client == "claude":
                    parts = {
                        "input": r.uncached,
                        "cacheRead": r.read,
                        "cacheCreation": r.write,
                        "output": r.output,
                    }
                else:
                    parts = {"input": r.uncached + r.read + r.write, "output": r.output}
                for kind, value in parts.items():
                    delta[(r.model, kind)] += value
                    running[(r.model, kind)] += value
            values = delta if session.temporality == DELTA else running
            metrics = ExportMetricsServiceRequest()
            rm = metrics.resource_metrics.add()
            _resource(rm, session, sid)
            metric = rm.scope_metrics.add().metrics.add()
            time_ns = BASE_NS + (chunk[-1][0] + 1) * 10**9
            start_ns = BASE_NS + (chunk[0][0] * 10**9 if session.temporality == DELTA else 0)
            if session.client == "claude":
                metric.name = "claude_code.token.usage"
                metric.sum.aggregation_temporality = session.temporality
                metric.sum.is_monotonic = True
                for (model, kind), value in sorted(values.items()):
                    point = metric.sum.data_points.add(
                        start_time_unix_nano=start_ns, time_unix_nano=time_ns, as_double=value
                    )
                    point.attributes.extend([kv("session.id", sid), kv("model", model), kv("type", kind)])
            else:
                metric.name = "gen_ai.client.token.usage"
                metric.histogram.aggregation_temporality = session.temporality
                for (model, kind), value in sorted(values.items()):
                    point = metric.histogram.data_points.add(
                        start_time_unix_nano=start_ns, time_unix_nano=time_ns, sum=value, count=1
                    )
                    point.attributes.extend(
                        [kv("gen_ai.request.model", model), kv("gen_ai.token.type", kind)]
                    )
            out.append(("metrics", metrics))
    return out


def truth(sessions: list[Session]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(KINDS, 0))
    for s in sessions:
        for r in s.requests:
            row = out[r.model]
            row["input_tokens"] += r.uncached
            row["cache_read_tokens"] += r.read
            row["cache_write_tokens"] += r.write
            row["output_tokens"] += r.output
    return dict(out)


@pytest.fixture(scope="module")
def pipeline(db_server: Server) -> Iterator[tuple[str, ExportPipeline, Refresher | None]]:
    """One database for every example. On TimescaleDB community the examples' days are materialized
    by the refresh policies the checks run, so later examples write into materialized days: the
    writer reports to a refresher, as in ``tokenscale serve``."""
    with fresh_database(db_server, prefix="prop_") as url:
        backend = migrate(url).backend
        pool = open_pool(url)
        refresher = None if backend.keeps_rollups else Refresher(url, late_data_days=31)
        try:
            writer = UsageWriter(pool, on_commit=refresher.note if refresher else None)
            yield url, ExportPipeline(writer), refresher
        finally:
            pool.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sessions=st.lists(session_strategy(), min_size=1, max_size=3), data=st.data())
def test_every_request_is_counted_exactly_once(
    pipeline: tuple[str, ExportPipeline, Refresher | None], sessions: list[Session], data: st.DataObject
) -> None:
    url, export_pipeline, refresher = pipeline
    tenant = f"tenant-{next(_counter)}"
    exports = [e for s in sessions for e in exports_of(s)]
    retried = data.draw(st.lists(st.sampled_from(range(len(exports))), max_size=len(exports)), "retries")
    order = data.draw(st.permutations([*range(len(exports)), *retried]), "arrival order")
    for i in order:
        signal, request = exports[i]
        result = export_pipeline.export(signal, request, tenant)
        assert result.rejected == 0, result.error_message
    if refresher is not None:
        refresher.flush()  # what the service's refresher does within seconds of the commits
    got = {
        model: {k: v for k, v in row.items() if k != "requests"}
        for model, row in daily_by_model(url, tenant=tenant).items()
    }
    assert got == truth(sessions)
    assert_rollups_match_events(url)
