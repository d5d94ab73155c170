"""Codex CLI and Copilot CLI carriers, built from their documented attribute sets (no captures yet)."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tokenscale.mapping import map_request, resolve_cumulative

T0 = 1_795_431_600 * 10**9


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(int_value=value))


def codex_events() -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.append(kv("service.name", "codex_cli_rs"))
    scope = rl.scope_logs.add()
    common = [kv("conversation.id", "conv-1"), kv("user.email", "dev@example.com"), kv("model", "gpt-5")]
    # Codex log records may carry time 0; the observed time is used then.
    done = scope.log_records.add(time_unix_nano=0, observed_time_unix_nano=T0)
    done.attributes.extend(
        [
            kv("event.name", "codex.sse_event"),
            kv("event.kind", "response.completed"),
            *common,
            kv("input_token_count", 12_000),  # includes cached
            kv("cached_token_count", 9_000),
            kv("cache_write_token_count", 0),
            kv("output_token_count", 700),  # includes reasoning
            kv("reasoning_token_count", 512),
            kv("tool_token_count", 12_700),  # in practice the total: never counted
        ]
    )
    delta = scope.log_records.add(time_unix_nano=T0)
    delta.attributes.extend(
        [kv("event.name", "codex.sse_event"), kv("event.kind", "response.output_text.delta")]
    )
    return request


def test_codex_response_completed_is_one_request_in_disjoint_columns() -> None:
    result = map_request("logs", codex_events(), "t")
    assert result.rejected == 0
    [event] = result.events
    assert (event.tool, event.stream, event.user_email, event.conversation_id) == (
        "codex",
        "codex_cli_rs",  # the stream is the service: Codex's spans and metrics carry no conversation
        "dev@example.com",
        "conv-1",
    )
    assert (event.time_ns, event.requests, event.provider, event.model) == (T0, 1, "openai", "gpt-5")
    assert (
        event.input_tokens,
        event.cache_read_tokens,
        event.cache_write_tokens,
        event.output_tokens,
        event.reasoning_tokens,
    ) == (3_000, 9_000, 0, 700, 512)
    assert event.cost_source == "computed" and event.cost_usd is not None and event.cost_usd > 0


def test_codex_turn_histogram_never_adds_total_or_reasoning_twice() -> None:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.append(kv("service.name", "codex_cli_rs"))
    metric = rm.scope_metrics.add().metrics.add(name="codex.turn.token_usage")
    metric.histogram.aggregation_temporality = 1  # delta
    for token_type, value in [
        ("input", 12_000),
        ("cached_input", 9_000),
        ("output", 700),
        ("reasoning_output", 512),
        ("total", 12_700),
    ]:
        point = metric.histogram.data_points.add(
            start_time_unix_nano=T0, time_unix_nano=T0 + 1, sum=value, count=1
        )
        point.attributes.extend(
            [kv("token_type", token_type), kv("model", "gpt-5"), kv("conversation.id", "c")]
        )
    events = map_request("metrics", request, "t").events
    totals = {
        k: sum(getattr(e, k) for e in events) for k in ("input_tokens", "cache_read_tokens", "output_tokens")
    }
    assert totals == {"input_tokens": 3_000, "cache_read_tokens": 9_000, "output_tokens": 700}
    assert sum(e.reasoning_tokens for e in events) == 512


def copilot_traces() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", "github-copilot"))
    scope = rs.scope_spans.add()
    usage = [
        kv("gen_ai.provider.name", "github"),
        kv("gen_ai.request.model", "claude-sonnet-4-5"),
        kv("gen_ai.usage.input_tokens", 30_000),  # includes cache read AND write
        kv("gen_ai.usage.cache_read.input_tokens", 20_000),
        kv("gen_ai.usage.cache_creation.input_tokens", 4_000),
        kv("gen_ai.usage.output_tokens", 900),
        kv("github.copilot.cost", 1.0),
    ]
    agent = scope.spans.add(name="invoke_agent", trace_id=b"t" * 16, span_id=b"a" * 8)
    agent.start_time_unix_nano, agent.end_time_unix_nano = T0, T0 + 5 * 10**9
    agent.attributes.extend([kv("gen_ai.operation.name", "invoke_agent"), *usage])  # the turn's sum
    chat = scope.spans.add(name="chat claude-sonnet-4-5", trace_id=b"t" * 16, span_id=b"c" * 8)
    chat.start_time_unix_nano, chat.end_time_unix_nano = T0 + 10**9, T0 + 4 * 10**9
    chat.attributes.extend([kv("gen_ai.operation.name", "chat"), *usage])
    return request


def test_copilot_chat_spans_count_and_agent_spans_do_not() -> None:
    result = map_request("traces", copilot_traces(), "t")
    [event] = result.events
    assert (event.tool, event.operation, event.model) == ("copilot", "chat", "claude-sonnet-4-5")
    assert (event.input_tokens, event.cache_read_tokens, event.cache_write_tokens, event.output_tokens) == (
        6_000,
        20_000,
        4_000,
        900,
    )
    assert event.duration_ms == 3_000.0
    # github.copilot.cost counts premium requests, not dollars: kept, never taken as USD.
    assert event.attributes["github.copilot.cost"] == 1.0
    assert event.cost_source == "computed"


def test_copilot_cumulative_counters_subtract_cache_from_input() -> None:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.append(kv("service.name", "github-copilot"))
    scope = rm.scope_metrics.add()
    for name, value in [
        ("gen_ai.client.inference.usage.input_tokens", 30_000),
        ("gen_ai.client.inference.usage.cache_read.input_tokens", 20_000),
        ("gen_ai.client.inference.usage.cache_write.input_tokens", 4_000),
        ("gen_ai.client.inference.usage.output_tokens", 900),
        ("gen_ai.client.inference.usage.reasoning.output_tokens", 300),
    ]:
        metric = scope.metrics.add(name=name)
        metric.sum.aggregation_temporality = 2  # cumulative
        metric.sum.is_monotonic = True
        point = metric.sum.data_points.add(start_time_unix_nano=T0, time_unix_nano=T0 + 10**9, as_int=value)
        point.attributes.append(kv("gen_ai.request.model", "claude-sonnet-4-5"))
    result = map_request("metrics", request, "t")
    events, _ = resolve_cumulative(result.cumulative, {})
    totals = {
        k: sum(getattr(e, k) for e in events)
        for k in (
            "input_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "output_tokens",
            "reasoning_tokens",
        )
    }
    assert totals == {
        "input_tokens": 6_000,
        "cache_read_tokens": 20_000,
        "cache_write_tokens": 4_000,
        "output_tokens": 900,
        "reasoning_tokens": 300,
    }
