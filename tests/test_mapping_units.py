"""Spans that report usage in units only (speech characters, billed audio seconds, image counts)."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tokenscale.mapping import map_request

T0 = 1_767_225_600 * 10**9


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(int_value=value))


def spans(*attribute_sets: list[KeyValue]) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for index, attributes in enumerate(attribute_sets):
        span = scope.spans.add(name="s", trace_id=b"t" * 16, span_id=bytes([index + 1]) * 8)
        span.start_time_unix_nano, span.end_time_unix_nano = T0, T0 + 10**9
        span.attributes.extend(attributes)
    return request


def test_unit_only_spans_are_one_request_without_tokens() -> None:
    speech = [kv("gen_ai.operation.name", "speech"), kv("gen_ai.usage.text.characters", 11)]
    whisper = [kv("gen_ai.operation.name", "transcription"), kv("gen_ai.usage.audio.seconds", 14.0)]
    dalle = [kv("gen_ai.operation.name", "image_generation"), kv("gen_ai.usage.image.count", 2)]
    nothing = [kv("gen_ai.operation.name", "translation"), kv("gen_ai.usage.other", 3)]
    agent = [kv("gen_ai.operation.name", "invoke_agent"), kv("gen_ai.usage.image.count", 1)]
    result = map_request("traces", spans(speech, whisper, dalle, nothing, agent), "t")
    events = {e.operation: e for e in result.events}
    assert sorted(events) == ["image_generation", "speech", "transcription"]
    for event in events.values():
        assert event.requests == 1
        tokens = (event.input_tokens, event.cache_read_tokens, event.cache_write_tokens, event.output_tokens)
        assert tokens == (0, 0, 0, 0)
    assert events["speech"].attributes["gen_ai.usage.text.characters"] == 11
    assert events["transcription"].attributes["gen_ai.usage.audio.seconds"] == 14.0
    assert events["image_generation"].attributes["gen_ai.usage.image.count"] == 2


def test_units_beside_tokens_change_nothing_of_the_tokens() -> None:
    image = [
        kv("gen_ai.operation.name", "image_generation"),
        kv("gen_ai.usage.image.count", 2),
        kv("gen_ai.usage.input_tokens", 57),
        kv("gen_ai.usage.output_tokens", 4160),
    ]
    [event] = map_request("traces", spans(image), "t").events
    assert (event.requests, event.input_tokens, event.output_tokens) == (1, 57, 4160)
