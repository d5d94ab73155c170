"""Test support: in-memory OTel telemetry, and expected span attributes and metric points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tokenscale.instrumentation import _semconv as sc

TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"


@dataclass(frozen=True)
class Point:
    """One metric data point, flattened for comparison."""

    attributes: dict[str, Any]
    value: float | None = None  # sums
    count: int | None = None  # histograms
    sum: float | None = None
    bounds: tuple[float, ...] | None = None
    unit: str = ""


class Telemetry:
    """In-memory span exporter and metric reader, with helpers to read them whole."""

    def __init__(self) -> None:
        self.span_exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.span_exporter))
        self.metric_reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.metric_reader])

    def spans(self) -> list[ReadableSpan]:
        return list(self.span_exporter.get_finished_spans())

    def only_span(self) -> ReadableSpan:
        spans = self.spans()
        assert len(spans) == 1, [span.name for span in spans]
        return spans[0]

    def metrics(self) -> dict[str, list[Point]]:
        data = self.metric_reader.get_metrics_data()
        found: dict[str, list[Point]] = {}
        if data is None:
            return found
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes or {})
                        if isinstance(point, HistogramDataPoint):
                            flat = Point(
                                attributes,
                                count=point.count,
                                sum=point.sum,
                                bounds=tuple(point.explicit_bounds),
                                unit=metric.unit or "",
                            )
                        else:
                            assert isinstance(point, NumberDataPoint)
                            flat = Point(attributes, value=point.value, unit=metric.unit or "")
                        found.setdefault(metric.name, []).append(flat)
        return found

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def usage_attributes(
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    cache_read: int | None = None,
    cache_creation: int | None = None,
    reasoning: int | None = None,
) -> dict[str, Any]:
    pairs = {
        sc.GEN_AI_USAGE_INPUT_TOKENS: input_tokens,
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: output_tokens,
        sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: cache_read,
        sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: cache_creation,
        sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: reasoning,
    }
    return {key: value for key, value in pairs.items() if value is not None}


def span_attributes(telemetry: Telemetry, *, stream: bool) -> dict[str, Any]:
    """The only span's attributes, checking its kind and time-to-first-chunk on the way."""
    span = telemetry.only_span()
    assert span.kind is SpanKind.CLIENT
    attributes = dict(span.attributes or {})
    first_chunk = attributes.pop(TIME_TO_FIRST_CHUNK, None)
    if stream:
        assert isinstance(first_chunk, float) and first_chunk >= 0
    else:
        assert first_chunk is None
    return attributes


def assert_ok(telemetry: Telemetry, name: str) -> None:
    span = telemetry.only_span()
    assert span.name == name
    assert span.status.status_code is StatusCode.UNSET


def assert_metrics(
    telemetry: Telemetry,
    base: dict[str, Any],
    *,
    input_tokens: int | None,
    output_tokens: int | None,
    cache_read: int = 0,
    cache_write: int = 0,
    reasoning: int = 0,
) -> None:
    """Exactly the expected points: one duration, token.usage per type, positive counters only."""
    found = telemetry.metrics()
    duration = found.pop(sc.METRIC_OPERATION_DURATION)
    assert len(duration) == 1
    assert duration[0].attributes == base
    assert duration[0].count == 1
    assert duration[0].unit == "s"
    assert duration[0].bounds == sc.OPERATION_DURATION_BUCKETS

    expected_usage = []
    for token_type, value in (("input", input_tokens), ("output", output_tokens)):
        if value is not None:
            expected_usage.append(
                Point(
                    {**base, sc.GEN_AI_TOKEN_TYPE: token_type},
                    count=1,
                    sum=value,
                    bounds=sc.TOKEN_USAGE_BUCKETS,
                    unit="{token}",
                )
            )
    usage_points = found.pop(sc.METRIC_TOKEN_USAGE, [])
    key = lambda point: point.attributes[sc.GEN_AI_TOKEN_TYPE]  # noqa: E731
    assert sorted(usage_points, key=key) == sorted(expected_usage, key=key)

    counters = {
        sc.METRIC_USAGE_INPUT_TOKENS: input_tokens,
        sc.METRIC_USAGE_OUTPUT_TOKENS: output_tokens,
        sc.METRIC_USAGE_CACHE_READ_INPUT_TOKENS: cache_read,
        sc.METRIC_USAGE_CACHE_WRITE_INPUT_TOKENS: cache_write,
        sc.METRIC_USAGE_REASONING_OUTPUT_TOKENS: reasoning,
    }
    expected = {name: [Point(base, value=value, unit="{token}")] for name, value in counters.items() if value}
    assert found == expected
