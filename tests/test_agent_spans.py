"""Spans of agent and tool operations: listed by the AI metrics API (AGENT, TOOL_CALL), never counted.

An ``invoke_agent`` span aggregates the requests of its run (some clients put the run's summed usage
on it) and an ``execute_tool`` span wraps a tool call: both are stored as listed rows of their own,
shown by ``/v2/api/sources/metrics/ai`` with their trace and span ids, durations, names and token
counts as the span reports them, and left out of every total (rollups, requests, budgets, cost,
usage records).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from api.api_servers import ApiServers
from otlp_clients import background_loop, running
from tokenscale.api.gen.tokenscale.v1 import usage_api_pb2 as pb
from tokenscale.auth import create_key
from tokenscale.mapping import map_request
from tokenscale.mapping.limits import enforce_limits
from tokenscale.pipeline import ExportPipeline
from tokenscale.receiver.server import Receiver
from tokenscale.store import migrate
from tokenscale.store.prices import reprice
from tokenscale.store.writer import UsageWriter, open_pool
from usage_db import assert_rollups_match_events, daily_by_model

SECOND = 10**9
HOUR = 3_600 * SECOND
#: The start of the hour before last: recent enough for every window (budgets), one hour for all spans.
T0 = (time.time_ns() // HOUR - 2) * HOUR

#: The chat request of the run, and what the agent span reports as the run's sum.
CHAT = {"input": 1_200, "cache_read": 800, "output": 300, "reasoning": 100}
AGENT_SUM = {"input": 1_200, "cache_read": 800, "output": 300}


@pytest.fixture
def receiver(db_url: str) -> Iterator[Receiver]:
    migrate(db_url)
    pool = open_pool(db_url)
    try:
        with background_loop() as loop, running(loop, ExportPipeline(UsageWriter(pool))) as live:
            yield live
    finally:
        pool.close()


def _run_agent(endpoint: str) -> tuple[str, dict[str, str], dict[str, float]]:
    """One agent run through a real OTel SDK exporter: invoke_agent > execute_tool, and chat.

    The trace id, the span ids and the durations (ms) of the spans, by operation."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": "travel-agent", "user.email": "ana@x.io"})
    )
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    tracer = provider.get_tracer("agent-framework")
    spans: dict[str, Any] = {}
    with tracer.start_as_current_span("invoke_agent planner", start_time=T0, end_on_exit=False) as agent:
        agent.set_attributes(
            {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": "planner",
                "gen_ai.agent.id": "agent-7",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o-mini",
                # The run's sum, as some frameworks report it: the chat request below, again.
                "gen_ai.usage.input_tokens": AGENT_SUM["input"] + AGENT_SUM["cache_read"],
                "gen_ai.usage.cache_read.input_tokens": AGENT_SUM["cache_read"],
                "gen_ai.usage.output_tokens": AGENT_SUM["output"],
            }
        )
        spans["invoke_agent"] = agent
        with tracer.start_as_current_span(
            "chat gpt-4o-mini", start_time=T0 + SECOND, end_on_exit=False
        ) as chat:
            chat.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.response.id": "chatcmpl-1",
                    "gen_ai.usage.input_tokens": CHAT["input"] + CHAT["cache_read"],
                    "gen_ai.usage.cache_read.input_tokens": CHAT["cache_read"],
                    "gen_ai.usage.output_tokens": CHAT["output"],
                    "gen_ai.usage.reasoning.output_tokens": CHAT["reasoning"],
                }
            )
            spans["chat"] = chat
            chat.end(end_time=T0 + 3 * SECOND)
        with tracer.start_as_current_span(
            "execute_tool get_weather", start_time=T0 + 4 * SECOND, end_on_exit=False
        ) as tool:
            tool.set_attributes(
                {
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": "get_weather",
                    "gen_ai.tool.call.id": "call_42",
                    "gen_ai.tool.type": "function",
                }
            )
            spans["execute_tool"] = tool
            tool.end(end_time=T0 + 4 * SECOND + 250 * 10**6)
        agent.end(end_time=T0 + 5 * SECOND)
    assert provider.force_flush()
    provider.shutdown()
    trace_id = format(spans["chat"].get_span_context().trace_id, "032x")
    span_ids = {op: format(s.get_span_context().span_id, "016x") for op, s in spans.items()}
    return trace_id, span_ids, {"invoke_agent": 5_000.0, "chat": 2_000.0, "execute_tool": 250.0}


def test_agent_tool_and_chat_spans_list_three_rows_and_count_the_chat_only(
    receiver: Receiver, db_url: str
) -> None:
    trace_id, span_ids, durations = _run_agent(f"127.0.0.1:{receiver.grpc_port}")

    # Totals: exactly the chat request, in every rollup and in the request ledger.
    chat_tokens = {
        "requests": 1,
        "input_tokens": CHAT["input"],
        "cache_read_tokens": CHAT["cache_read"],
        "cache_write_tokens": 0,
        "output_tokens": CHAT["output"],
        "reasoning_tokens": CHAT["reasoning"],
    }
    assert daily_by_model(db_url) == {"gpt-4o-mini": chat_tokens}
    assert_rollups_match_events(db_url)
    with psycopg.connect(db_url) as conn:
        stored = conn.execute(
            "SELECT source, counted, operation, requests, input_tokens, cache_read_tokens, output_tokens, "
            "cost_usd IS NULL FROM tokenscale.usage_events ORDER BY time"
        ).fetchall()
        requests = conn.execute("SELECT count(*) FROM tokenscale.requests").fetchone()
        hourly = conn.execute(
            "SELECT sum(requests), sum(input_tokens + cache_read_tokens + cache_write_tokens "
            "+ output_tokens) FROM tokenscale.usage_hourly"
        ).fetchone()
        [tenant] = conn.execute("SELECT DISTINCT tenant FROM tokenscale.usage_events").fetchone() or [None]
        chat_cost = conn.execute("SELECT cost_usd FROM tokenscale.usage_events WHERE counted").fetchone()
        daily_cost = conn.execute("SELECT sum(cost_usd) FROM tokenscale.usage_daily").fetchone()
        key = create_key(conn, str(tenant), ["read"])
    assert stored == [
        ("gen_ai.span", True, "chat", 1, 1_200, 800, 300, False),
        ("gen_ai.agent_span", False, "execute_tool", 0, 0, 0, 0, True),
        ("gen_ai.agent_span", False, "invoke_agent", 0, 1_200, 800, 300, True),
    ]
    assert requests == (1,)
    assert hourly == (1, 1_200 + 800 + 300)
    assert chat_cost is not None and daily_cost == chat_cost

    servers = ApiServers(db_url).start()
    try:
        base = f"/v2/api/sources/metrics/ai?teamId={tenant}&sort=timestamp,asc"
        items = servers.http("GET", base, key).json()["_embedded"]["aIMetricResourceList"]
        assert [i["operationType"] for i in items] == ["CHAT", "TOOL_CALL", "AGENT"]
        by_type = {i["operationType"]: i for i in items}
        for operation, kind in (("chat", "CHAT"), ("execute_tool", "TOOL_CALL"), ("invoke_agent", "AGENT")):
            item = by_type[kind]
            assert item["traceId"] == trace_id
            # The span id of agent and tool rows (a request's row is named by its response id).
            assert item["spanId"] == (None if kind == "CHAT" else span_ids[operation])
            assert item["requestDuration"] == durations[operation]
            assert item["agent"] == "travel-agent"
            assert item["subscriber"]["email"] == "ana@x.io"
        assert (by_type["AGENT"]["agentName"], by_type["AGENT"]["agentId"], by_type["AGENT"]["toolName"]) == (
            "planner",
            "agent-7",
            None,
        )
        assert (by_type["TOOL_CALL"]["toolName"], by_type["TOOL_CALL"]["toolCallId"]) == (
            "get_weather",
            "call_42",
        )
        assert by_type["CHAT"]["agentName"] is None
        # Listed rows are never priced: their usage is their children's.
        assert (by_type["AGENT"]["totalCost"], by_type["TOOL_CALL"]["totalCost"]) == (None, None)
        assert by_type["CHAT"]["totalCost"] == float(chat_cost[0])

        for kind, expected in (("AGENT", 1), ("TOOL_CALL", 1), ("CHAT", 1)):
            page = servers.http("GET", f"{base}&operationType={kind}", key).json()
            assert page["page"]["totalElements"] == expected
            [item] = page["_embedded"]["aIMetricResourceList"]
            assert item["operationType"] == kind
        # The completions listing shows the token counts each span reports.
        path = f"/v2/api/sources/metrics/ai/completions?teamId={tenant}&sort=timestamp,asc"
        completions = servers.http("GET", path, key).json()["_embedded"]["aICompletionMetricResourceList"]
        tokens = [
            (c["operationType"], c["inputTokenCount"], c["cacheReadTokenCount"], c["outputTokenCount"])
            for c in completions
        ]
        assert tokens == [("CHAT", 1_200, 800, 300), ("TOOL_CALL", 0, 0, 0), ("AGENT", 1_200, 800, 300)]
        # Deep pages (keyset) walk the merged rows in order: one row per page.
        walked = [
            servers.http("GET", f"/v2/api/sources/metrics/ai?teamId={tenant}&size=1&page={n}", key).json()
            for n in range(3)
        ]
        assert [w["_embedded"]["aIMetricResourceList"][0]["operationType"] for w in walked] == [
            "AGENT",
            "TOOL_CALL",
            "CHAT",
        ]
        # The same rows over gRPC, with the agent and tool fields.
        request = pb.ListAiMetricsRequest(team_id=str(tenant), sort=["timestamp,asc"])
        reply = servers.stub.ListAiMetrics(request, metadata=servers.metadata(key))
        assert [
            (i.operation_type, i.span_id, i.agent_name, i.tool_name, i.HasField("total_cost"))
            for i in reply.items
        ] == [
            ("CHAT", "", "", "", True),
            ("TOOL_CALL", span_ids["execute_tool"], "", "get_weather", False),
            ("AGENT", span_ids["invoke_agent"], "planner", "", False),
        ]
        # The usage records (counted requests only) have the chat request alone; the budget check
        # counts its tokens alone.
        records = servers.http("GET", "/api/v1/usage/list?take=100", key).json()["items"]
        assert [r["messageId"] for r in records] == ["chatcmpl-1"]
        budget = servers.http("GET", f"/api/budgets/check?company_id={tenant}", key).json()
        assert budget["TokensUsed"] == CHAT["input"] + CHAT["cache_read"] + CHAT["output"]
    finally:
        servers.stop()


def test_a_retried_export_of_agent_spans_is_stored_once(receiver: Receiver, db_url: str) -> None:
    request = _trace_request()
    for _ in range(2):
        result = asyncio.run(asyncio.to_thread(receiver.pipeline.export, "traces", request, "default"))
        assert result.rejected == 0
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT source, counted, operation FROM tokenscale.usage_events ORDER BY operation"
        ).fetchall()
    assert rows == [
        ("gen_ai.span", True, "chat"),
        ("gen_ai.agent_span", False, "execute_tool"),
        ("gen_ai.agent_span", False, "invoke_agent"),
    ]
    expected = {
        "gpt-4o-mini": {
            "requests": 1,
            "input_tokens": 70,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "output_tokens": 5,
            "reasoning_tokens": 0,
        }
    }
    assert daily_by_model(db_url) == expected
    # Re-pricing reads the request alone: the agent span (of a priced model) stays unpriced.
    start = datetime.fromtimestamp(T0 / 1e9, UTC)
    report = reprice(db_url, start - timedelta(hours=1), start + timedelta(hours=1))
    assert (report.rows, report.changed) == (1, 0)
    with psycopg.connect(db_url) as conn:
        costs = conn.execute(
            "SELECT operation, cost_usd IS NULL FROM tokenscale.usage_events ORDER BY operation"
        ).fetchall()
    assert costs == [("chat", False), ("execute_tool", True), ("invoke_agent", True)]
    assert daily_by_model(db_url) == expected


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    return KeyValue(key=key, value=AnyValue(int_value=value))


def _trace_request() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(_kv("service.name", "bot"))
    scope = rs.scope_spans.add()
    for index, attributes in enumerate(
        [
            [
                _kv("gen_ai.operation.name", "invoke_agent"),
                _kv("gen_ai.request.model", "gpt-4o-mini"),
                _kv("gen_ai.usage.input_tokens", 70),
            ],
            [_kv("gen_ai.operation.name", "execute_tool"), _kv("gen_ai.tool.name", "search")],
            [
                _kv("gen_ai.operation.name", "chat"),
                _kv("gen_ai.request.model", "gpt-4o-mini"),
                _kv("gen_ai.usage.input_tokens", 70),
                _kv("gen_ai.usage.output_tokens", 5),
            ],
            [_kv("gen_ai.operation.name", "retrieval")],  # neither usage nor an aggregating operation
        ]
    ):
        span = scope.spans.add(name=f"s{index}", trace_id=b"t" * 16, span_id=bytes([index + 1]) * 8)
        span.start_time_unix_nano, span.end_time_unix_nano = T0, T0 + SECOND
        span.attributes.extend(attributes)
    return request


def test_mapping_keeps_listed_spans_apart_from_usage_events() -> None:
    result = map_request("traces", _trace_request(), "t")
    assert [e.operation for e in result.events] == ["chat"]
    assert [(e.operation, e.carrier, e.requests, e.input_tokens) for e in result.listed] == [
        ("invoke_agent", "gen_ai.agent_span", 0, 70),
        ("execute_tool", "gen_ai.agent_span", 0, 0),
    ]
    tool = result.listed[1]
    assert tool.attributes["otel.span_id"] == "0202020202020202"
    assert tool.attributes["otel.trace_id"] == (b"t" * 16).hex()
    assert (tool.duration_ms, tool.cost_usd, tool.cost_source, tool.identity) == (1_000.0, None, None, None)


def test_a_listed_span_with_impossible_counts_is_rejected_naming_the_fields() -> None:
    request = ExportTraceServiceRequest()
    span = (
        request.resource_spans.add()
        .scope_spans.add()
        .spans.add(
            name="invoke_agent",
            trace_id=b"t" * 16,
            span_id=b"a" * 8,
            start_time_unix_nano=T0,
            end_time_unix_nano=T0,
        )
    )
    span.attributes.extend(
        [
            _kv("gen_ai.operation.name", "invoke_agent"),
            _kv("gen_ai.usage.input_tokens", 10),
            _kv("gen_ai.usage.cache_read.input_tokens", 20),
        ]
    )
    result = enforce_limits(map_request("traces", request, "t"))
    assert (result.events, result.listed, result.rejected) == ([], [], 1)
    assert "cache counts exceed the input count" in result.error_message
