"""Span and metric recording of one AI call (an invocation), shared by every provider."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from opentelemetry import metrics, trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from tokenscale import __version__
from tokenscale.instrumentation import _semconv as sc
from tokenscale.instrumentation._budget import BudgetGuard
from tokenscale.instrumentation._context import current_usage_context

__all__ = [
    "Invocation",
    "Request",
    "Telemetry",
    "Usage",
    "as_float",
    "as_int",
    "as_text",
    "server_attributes",
]

_LOG = logging.getLogger(__name__)
_MAX_STATUS_DESCRIPTION = 300


def as_int(value: object) -> int | None:
    """``value`` when it is a real integer (not a bool), else ``None``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def as_text(value: object) -> str | None:
    """``value`` when it is a non-empty string, else ``None``."""
    return value if isinstance(value, str) and value else None


def as_float(value: object) -> float | None:
    """``value`` as a float when it is a real number (not a bool), else ``None``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def server_attributes(resource: object) -> dict[str, AttributeValue]:
    """``server.address``/``server.port`` from an SDK resource's client ``base_url``."""
    url = getattr(getattr(resource, "_client", None), "base_url", None)
    host = getattr(url, "host", None)
    if not isinstance(host, str) or not host:
        return {}
    port = getattr(url, "port", None)
    if not isinstance(port, int):
        port = 443 if getattr(url, "scheme", "https") == "https" else 80
    return {sc.SERVER_ADDRESS: host, sc.SERVER_PORT: port}


@dataclass(slots=True)
class Usage:
    """Token usage of one call in semconv terms: totals include their cache / reasoning parts."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    reasoning_output_tokens: int | None = None


@dataclass(slots=True)
class Request:
    """What is known about a call before it is sent."""

    operation: str
    model: str | None
    stream: bool = False
    attributes: dict[str, AttributeValue] = field(default_factory=dict)


class Telemetry:
    """The tracer, metric instruments and budget guard that one instrumentor records with."""

    def __init__(
        self,
        scope: str,
        provider: str,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        budget_guard: BudgetGuard | None = None,
    ) -> None:
        self.provider = provider
        self.budget_guard = budget_guard
        #: False once uninstrumented: a wrapper that could not be removed (someone wrapped on
        #: top of it) then passes calls straight through.
        self.active = True
        self.tracer = trace.get_tracer(scope, __version__, tracer_provider, schema_url=sc.SCHEMA_URL)
        meter = metrics.get_meter(scope, __version__, meter_provider, schema_url=sc.SCHEMA_URL)
        self.token_usage = meter.create_histogram(
            sc.METRIC_TOKEN_USAGE,
            unit=sc.UNIT_TOKEN,
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=sc.TOKEN_USAGE_BUCKETS,
        )
        self.duration = meter.create_histogram(
            sc.METRIC_OPERATION_DURATION,
            unit=sc.UNIT_SECONDS,
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=sc.OPERATION_DURATION_BUCKETS,
        )
        self.input_tokens = meter.create_counter(
            sc.METRIC_USAGE_INPUT_TOKENS, sc.UNIT_TOKEN, "Input tokens, cache reads and writes included."
        )
        self.output_tokens = meter.create_counter(
            sc.METRIC_USAGE_OUTPUT_TOKENS, sc.UNIT_TOKEN, "Output tokens, reasoning included."
        )
        self.cache_read_tokens = meter.create_counter(
            sc.METRIC_USAGE_CACHE_READ_INPUT_TOKENS, sc.UNIT_TOKEN, "Input tokens read from a cache."
        )
        self.cache_write_tokens = meter.create_counter(
            sc.METRIC_USAGE_CACHE_WRITE_INPUT_TOKENS, sc.UNIT_TOKEN, "Input tokens written to a cache."
        )
        self.reasoning_tokens = meter.create_counter(
            sc.METRIC_USAGE_REASONING_OUTPUT_TOKENS, sc.UNIT_TOKEN, "Output tokens spent on reasoning."
        )

    def start(self, request: Request) -> Invocation:
        """Start the span of one call (not yet made current)."""
        return Invocation(self, request)


class Invocation:
    """One AI call: its span, what the response said, and the metrics recorded when it ends.

    Ending is idempotent and never raises: telemetry must not change what the caller sees.
    """

    __slots__ = (
        "_ended",
        "_first_chunk",
        "_metric_attributes",
        "_start",
        "_telemetry",
        "error_type",
        "finish_reasons",
        "response_attributes",
        "response_id",
        "response_model",
        "span",
        "usage",
    )

    def __init__(self, telemetry: Telemetry, request: Request) -> None:
        self._telemetry = telemetry
        context = current_usage_context()
        base: dict[str, AttributeValue] = {
            sc.GEN_AI_OPERATION_NAME: request.operation,
            sc.GEN_AI_PROVIDER_NAME: telemetry.provider,
        }
        if request.model:
            base[sc.GEN_AI_REQUEST_MODEL] = request.model
        self._metric_attributes: dict[str, AttributeValue] = {**base, **context.metric_attributes}
        attributes = {**base, **request.attributes, **context.span_attributes}
        name = f"{request.operation} {request.model}" if request.model else request.operation
        self.span: Span = telemetry.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        self._start = time.perf_counter()
        self._first_chunk: float | None = None
        self._ended = False
        self.response_model: str | None = None
        self.response_id: str | None = None
        self.finish_reasons: list[str] | None = None
        self.error_type: str | None = None
        self.usage = Usage()
        #: Further span attributes the response told (e.g. per-modality usage units).
        self.response_attributes: dict[str, AttributeValue] = {}

    @property
    def ended(self) -> bool:
        """Whether the span has ended."""
        return self._ended

    def chunk_received(self) -> None:
        """Note the arrival of a streamed chunk (for time to first chunk)."""
        if self._first_chunk is None:
            self._first_chunk = time.perf_counter()

    def fail(self, error: BaseException) -> None:
        """End the call as failed with ``error`` (which the caller re-raises unchanged)."""
        if self._ended:
            return
        try:
            description = f"{type(error).__qualname__}: {error}"[:_MAX_STATUS_DESCRIPTION]
            self.span.set_status(Status(StatusCode.ERROR, description))
        except Exception:  # pragma: no cover - str(error) of a hostile exception
            _LOG.debug("could not describe error", exc_info=True)
        self._end(type(error).__qualname__)

    def finish(self) -> None:
        """End the call with whatever the response said (a stream may have stopped early)."""
        if self._ended:
            return
        if self.error_type is not None:
            self.span.set_status(Status(StatusCode.ERROR, self.error_type))
        self._end(self.error_type)

    def _end(self, error_type: str | None) -> None:
        self._ended = True
        elapsed = time.perf_counter() - self._start
        try:
            self._record(error_type, elapsed)
        except Exception:  # telemetry must never break the caller
            _LOG.debug("could not record GenAI telemetry", exc_info=True)
        finally:
            self.span.end()

    def _record(self, error_type: str | None, elapsed: float) -> None:
        telemetry = self._telemetry
        usage = self.usage
        attributes: dict[str, AttributeValue] = {}
        metric_attributes = self._metric_attributes
        if self.response_model:
            attributes[sc.GEN_AI_RESPONSE_MODEL] = self.response_model
            metric_attributes[sc.GEN_AI_RESPONSE_MODEL] = self.response_model
        if error_type is not None:
            attributes[sc.ERROR_TYPE] = error_type
            metric_attributes[sc.ERROR_TYPE] = error_type
        if self.response_id:
            attributes[sc.GEN_AI_RESPONSE_ID] = self.response_id
        if self.finish_reasons:
            attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS] = tuple(self.finish_reasons)
        if self._first_chunk is not None:
            attributes[sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = self._first_chunk - self._start
        _put(attributes, sc.GEN_AI_USAGE_INPUT_TOKENS, usage.input_tokens)
        _put(attributes, sc.GEN_AI_USAGE_OUTPUT_TOKENS, usage.output_tokens)
        _put(attributes, sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, usage.cache_read_input_tokens)
        _put(attributes, sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS, usage.cache_creation_input_tokens)
        _put(attributes, sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, usage.reasoning_output_tokens)
        self.span.set_attributes({**self.response_attributes, **attributes})

        telemetry.duration.record(elapsed, metric_attributes)
        if usage.input_tokens is not None:
            telemetry.token_usage.record(
                usage.input_tokens, {**metric_attributes, sc.GEN_AI_TOKEN_TYPE: sc.TOKEN_TYPE_INPUT}
            )
        if usage.output_tokens is not None:
            telemetry.token_usage.record(
                usage.output_tokens, {**metric_attributes, sc.GEN_AI_TOKEN_TYPE: sc.TOKEN_TYPE_OUTPUT}
            )
        _add(telemetry.input_tokens, usage.input_tokens, metric_attributes)
        _add(telemetry.output_tokens, usage.output_tokens, metric_attributes)
        _add(telemetry.cache_read_tokens, usage.cache_read_input_tokens, metric_attributes)
        _add(telemetry.cache_write_tokens, usage.cache_creation_input_tokens, metric_attributes)
        _add(telemetry.reasoning_tokens, usage.reasoning_output_tokens, metric_attributes)


def _put(attributes: dict[str, AttributeValue], key: str, value: int | None) -> None:
    if value is not None:
        attributes[key] = value


def _add(counter: metrics.Counter, value: int | None, attributes: Mapping[str, AttributeValue]) -> None:
    # A counter point of 0 adds nothing but a series; only positive counts are sent.
    if value:
        counter.add(value, attributes)
