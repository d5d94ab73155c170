"""The pure mapping against real captured payloads: every carrier reproduces the ground truth."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from ground_truth import CACHE_SPLIT_UNREPORTED, TOKEN_KINDS, capture_bodies, ground_truth, labels
from tokenscale.mapping import MappingOptions, SeriesState, map_request, resolve_cumulative
from tokenscale.mapping.model import UsageEvent

REQUEST_TYPES: dict[str, Any] = {
    "metrics": ExportMetricsServiceRequest,
    "traces": ExportTraceServiceRequest,
    "logs": ExportLogsServiceRequest,
}
PROTOBUF_LABELS = [label for label in labels() if any(p.suffix == ".pb" for _, p, _ in capture_bodies(label))]


def carriers_of(label: str) -> dict[str, list[UsageEvent]]:
    """Every usage event of a captured run, by carrier, cumulative series differenced in order."""
    by_carrier: dict[str, list[UsageEvent]] = defaultdict(list)
    states: dict[bytes, SeriesState] = {}
    for signal, raw, _meta in capture_bodies(label):
        result = map_request(signal, REQUEST_TYPES[signal].FromString(raw.read_bytes()), "t")  # type: ignore[arg-type]
        assert result.rejected == 0, result.errors
        events = list(result.events)
        resolved, changed = resolve_cumulative(result.cumulative, states)
        states.update(changed)
        for event in [*events, *resolved]:
            if isinstance(event, UsageEvent):  # activity increments are checked elsewhere
                by_carrier[event.carrier].append(event)
    return by_carrier


def totals_by_model(events: list[UsageEvent]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(TOKEN_KINDS, 0))
    for e in events:
        for kind in TOKEN_KINDS:
            out[str(e.model)][kind] += getattr(e, kind)
    return dict(out)


def expected_by_model(label: str, *, split: bool) -> dict[str, dict[str, int]]:
    out = {}
    for model, row in ground_truth(label).items():
        kinds = {k: row[k] for k in TOKEN_KINDS}
        if not split:  # carriers without a cache/reasoning split report the totals only
            kinds["input_tokens"] += kinds.pop("cache_read_tokens") + kinds.pop("cache_write_tokens")
            if label.startswith("gemini"):
                # Gemini CLI leaves thoughts out of its semconv carriers' output (telemetry.md).
                kinds["output_tokens"] -= kinds["reasoning_tokens"]
            kinds["reasoning_tokens"] = 0
            kinds["cache_read_tokens"] = kinds["cache_write_tokens"] = 0
        out[model] = kinds
    return out


#: Carriers that report input and output only (no cache or reasoning split), per the conventions.
UNSPLIT = {"gen_ai.client.token.usage", "gen_ai.span", "gen_ai.client.inference.operation.details"}


#: Carriers that report the split but no model: Codex CLI's handle_responses span.
MODEL_UNREPORTED = {("codex-grpc", "gen_ai.span")}


def _all_models(totals: dict[str, dict[str, int]]) -> dict[str, int]:
    return {kind: sum(row[kind] for row in totals.values()) for kind in TOKEN_KINDS}


@pytest.mark.parametrize("label", PROTOBUF_LABELS)
def test_every_carrier_equals_ground_truth(label: str) -> None:
    by_carrier = carriers_of(label)
    assert by_carrier, "no usage found"
    for carrier, events in by_carrier.items():
        if (label, carrier) in MODEL_UNREPORTED:
            assert {e.model for e in events} == {None}
            got, want = totals_by_model(events), expected_by_model(label, split=True)
            assert _all_models(got) == _all_models(want), carrier
            continue
        split = carrier not in UNSPLIT and label not in CACHE_SPLIT_UNREPORTED
        assert totals_by_model(events) == expected_by_model(label, split=split), carrier


@pytest.mark.parametrize("label", PROTOBUF_LABELS)
def test_per_request_carriers_count_requests(label: str) -> None:
    truth = {model: row["requests"] for model, row in ground_truth(label).items()}
    for carrier, events in carriers_of(label).items():
        if events[0].rank < 10:  # per-request carriers: one event per request
            counted: dict[str, int] = defaultdict(int)
            for e in events:
                counted[str(e.model)] += e.requests
            if (label, carrier) in MODEL_UNREPORTED:
                assert sum(counted.values()) == sum(truth.values()), carrier
                continue
            assert counted == truth, carrier


def test_claude_carriers_share_one_stream_and_reported_cost() -> None:
    by_carrier = carriers_of("claude-tools-grpc")
    streams = {e.stream for events in by_carrier.values() for e in events}
    assert len(streams) == 1
    ranks = {carrier: events[0].rank for carrier, events in by_carrier.items()}
    assert ranks == {"claude_code.api_request": 1, "claude_code.llm_request": 2, "claude_code.metrics": 10}
    # $5 / $25 / $0.50 / $6.25 per million input / output / cache-read / cache-write tokens.
    truth = ground_truth("claude-tools-grpc")["claude-opus-4-8"]
    list_price = (
        truth["input_tokens"] * 5
        + truth["output_tokens"] * 25
        + truth["cache_read_tokens"] * 0.5
        + truth["cache_write_tokens"] * 6.25
    ) / 1e6
    for carrier in ("claude_code.api_request", "claude_code.metrics"):
        cost = sum(e.cost_usd or 0 for e in by_carrier[carrier])
        assert cost == pytest.approx(list_price, abs=1e-9), carrier
        assert {e.cost_source for e in by_carrier[carrier] if e.cost_usd} == {"reported"}


def test_claude_model_suffix_normalised_raw_kept() -> None:
    metric_events = carriers_of("claude-grpc")["claude_code.metrics"]
    assert {e.model for e in metric_events} == {"claude-opus-4-8"}
    assert {e.attributes.get("model.raw") for e in metric_events} == {"claude-opus-4-8[1m]"}


def test_content_is_dropped_unless_captured() -> None:
    _signal, raw, _ = next(b for b in capture_bodies("gemini-grpc") if b[0] == "logs")
    request = ExportLogsServiceRequest.FromString(raw.read_bytes())
    kept = map_request("logs", request, "t").events
    assert kept
    for e in kept:
        assert "process.command_args" not in e.attributes
    captured = map_request("logs", request, "t", MappingOptions(capture_content=True)).events
    assert all("process.command_args" in e.attributes for e in captured)


def _claude_event(**attrs: Any) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="claude-code")))
    record: LogRecord = rl.scope_logs.add().log_records.add()
    record.time_unix_nano = 1_795_395_286_258_000_000
    for key, v in {"event.name": "api_request", "session.id": "s", "model": "m", **attrs}.items():
        any_value = (
            AnyValue(string_value=v)
            if isinstance(v, str)
            else AnyValue(double_value=v)
            if isinstance(v, float)
            else AnyValue(int_value=v)
        )
        record.attributes.append(KeyValue(key=key, value=any_value))
    return request


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"input_tokens": -5}, "input_tokens: negative"),
        ({"output_tokens": float("nan")}, "output_tokens: not finite"),
        ({"output_tokens": 10**13}, "output_tokens: absurdly large"),
        ({"input_tokens": "lots"}, "input_tokens: not a number"),
    ],
)
def test_hostile_values_are_rejected_with_the_field_named(attrs: dict[str, Any], message: str) -> None:
    result = map_request("logs", _claude_event(**attrs), "t")
    assert result.events == []
    assert result.rejected == 1
    assert message in result.error_message


def test_missing_timestamp_falls_back_to_observed_then_rejects() -> None:
    request = _claude_event(input_tokens=3)
    record = request.resource_logs[0].scope_logs[0].log_records[0]
    record.time_unix_nano = 0
    record.observed_time_unix_nano = 1_795_395_286_000_000_000
    assert map_request("logs", request, "t").events[0].time_ns == 1_795_395_286_000_000_000
    record.observed_time_unix_nano = 0
    result = map_request("logs", request, "t")
    assert result.rejected == 1
    assert "missing timestamp" in result.error_message


def test_cumulative_increments_survive_resets_and_retries() -> None:
    *_, (_signal, raw, _) = (
        b for b in capture_bodies("claude-tools-slow-cumulative-httpproto") if b[0] == "metrics"
    )
    request = ExportMetricsServiceRequest.FromString(raw.read_bytes())
    points = map_request("metrics", request, "t").cumulative
    assert points
    resolved, states = resolve_cumulative(points, {})
    again, unchanged = resolve_cumulative(points, states)  # a retried export adds nothing
    assert again == [] and unchanged == {}
    first = sum(e.input_tokens for e in resolved if isinstance(e, UsageEvent))
    assert (
        first
        == expected_by_model("claude-tools-slow-cumulative-httpproto", split=True)["claude-opus-4-8"][
            "input_tokens"
        ]
    )
    for p in points:  # the process restarted: a new start time, counting from zero again
        p.start_ns += 10**9
        p.time_ns += 10**9
    after_reset, _ = resolve_cumulative(points, states)
    assert sum(e.input_tokens for e in after_reset if isinstance(e, UsageEvent)) == first
