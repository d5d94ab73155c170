"""One-call setup: OTLP export to tokenscale and instrumentation of every installed AI SDK."""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal

from opentelemetry import metrics, trace
from opentelemetry.util.re import parse_env_headers

from tokenscale.instrumentation._budget import ENV_API_KEY, BudgetGuard

if TYPE_CHECKING:
    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import TracerProvider

__all__ = ["DEFAULT_METRIC_EXPORT_INTERVAL_MS", "InstrumentationHandle", "OtlpProtocol", "instrument"]

_LOG = logging.getLogger(__name__)

OtlpProtocol = Literal["grpc", "http/protobuf"]

#: Standard OTel variables honoured here (the exporters read the others themselves).
ENV_OTLP_PROTOCOL: Final = "OTEL_EXPORTER_OTLP_PROTOCOL"
ENV_OTLP_HEADERS: Final = "OTEL_EXPORTER_OTLP_HEADERS"
ENV_METRICS_TEMPORALITY: Final = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
ENV_METRIC_EXPORT_INTERVAL: Final = "OTEL_METRIC_EXPORT_INTERVAL"
DEFAULT_PROTOCOL: Final[OtlpProtocol] = "grpc"
DEFAULT_METRIC_EXPORT_INTERVAL_MS: Final = 10_000

#: (module that must be importable, instrumentor module, instrumentor class)
_SDKS: Final = (
    ("openai", "tokenscale.instrumentation.openai", "OpenAIInstrumentor"),
    ("anthropic", "tokenscale.instrumentation.anthropic", "AnthropicInstrumentor"),
)

_LOCK = threading.Lock()
_ACTIVE: InstrumentationHandle | None = None


@dataclass(eq=False)
class InstrumentationHandle:
    """What :func:`instrument` set up; :meth:`shutdown` undoes exactly that (and is idempotent)."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    instrumentors: tuple[BaseInstrumentor, ...]
    owns_tracer_provider: bool
    owns_meter_provider: bool
    #: The OTLP exporters created here (``None`` when an existing provider was used).
    span_exporter: SpanExporter | None = None
    metric_exporter: MetricExporter | None = None
    _closed: bool = field(default=False, repr=False)

    @property
    def closed(self) -> bool:
        """Whether :meth:`shutdown` has run."""
        return self._closed

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        """Export everything buffered now (for short-lived scripts and tests)."""
        done = True
        for provider in (self.tracer_provider, self.meter_provider):
            flush = getattr(provider, "force_flush", None)
            if callable(flush):
                done = bool(flush(timeout_millis)) and done
        return done

    def shutdown(self) -> None:
        """Uninstrument what was instrumented here and flush/stop the providers created here."""
        global _ACTIVE  # noqa: PLW0603 - the one active setup of this process
        with _LOCK:
            if self._closed:
                return
            self._closed = True
            if _ACTIVE is self:
                _ACTIVE = None
        for instrumentor in self.instrumentors:
            instrumentor.uninstrument()
        for provider, owned in (
            (self.tracer_provider, self.owns_tracer_provider),
            (self.meter_provider, self.owns_meter_provider),
        ):
            stop = getattr(provider, "shutdown", None)
            if owned and callable(stop):
                stop()

    def __enter__(self) -> InstrumentationHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


def instrument(
    endpoint: str | None = None,
    api_key: str | None = None,
    *,
    service_name: str | None = None,
    protocol: OtlpProtocol | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    budget_guard: BudgetGuard | None = None,
) -> InstrumentationHandle:
    """Make every ``openai``/``anthropic`` call of this process report its usage to tokenscale.

    Providers: ``tracer_provider``/``meter_provider`` when given; else, when neither ``endpoint``
    nor ``api_key`` is given and the app already set OpenTelemetry SDK global providers, those;
    else new SDK providers (not made global) exporting OTLP to ``endpoint`` (default: the
    ``OTEL_EXPORTER_OTLP_*`` variables, else localhost) with ``authorization: Bearer <api_key>``
    (default ``$TOKENSCALE_API_KEY``), delta temporality, batched spans and metrics every 10 s.
    ``protocol`` defaults to ``$OTEL_EXPORTER_OTLP_PROTOCOL``, else ``grpc``.

    Calling it again while a setup is active returns that setup unchanged.
    """
    global _ACTIVE  # noqa: PLW0603 - the one active setup of this process
    with _LOCK:
        if _ACTIVE is not None:
            _LOG.warning("tokenscale instrumentation is already set up; returning the active setup")
            return _ACTIVE
        reuse_globals = endpoint is None and api_key is None
        key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
        chosen = _choose_protocol(protocol)
        resource: Resource | None = None
        span_exporter: SpanExporter | None = None
        metric_exporter: MetricExporter | None = None
        if tracer_provider is None and reuse_globals:
            tracer_provider = _sdk_global_tracer_provider()
        if tracer_provider is None:
            resource = _resource(service_name)
            span_exporter = _span_exporter(chosen, endpoint, key)
            tracer_provider = _new_tracer_provider(resource, span_exporter)
        if meter_provider is None and reuse_globals:
            meter_provider = _sdk_global_meter_provider()
        if meter_provider is None:
            resource = resource or _resource(service_name)
            metric_exporter = _metric_exporter(chosen, endpoint, key)
            meter_provider = _new_meter_provider(resource, metric_exporter)
        instrumentors = _instrument_sdks(tracer_provider, meter_provider, budget_guard)
        _ACTIVE = InstrumentationHandle(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            instrumentors=instrumentors,
            owns_tracer_provider=span_exporter is not None,
            owns_meter_provider=metric_exporter is not None,
            span_exporter=span_exporter,
            metric_exporter=metric_exporter,
        )
        return _ACTIVE


def _choose_protocol(protocol: str | None) -> OtlpProtocol:
    value = protocol or os.environ.get(ENV_OTLP_PROTOCOL) or DEFAULT_PROTOCOL
    if value == "grpc":
        return "grpc"
    if value == "http/protobuf":
        return "http/protobuf"
    raise ValueError(f"unsupported OTLP protocol {value!r}; use 'grpc' or 'http/protobuf'")


def _sdk_global_tracer_provider() -> TracerProvider | None:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider  # noqa: PLC0415

    provider = trace.get_tracer_provider()
    return provider if isinstance(provider, SdkTracerProvider) else None


def _sdk_global_meter_provider() -> MeterProvider | None:
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider  # noqa: PLC0415

    provider = metrics.get_meter_provider()
    return provider if isinstance(provider, SdkMeterProvider) else None


def _resource(service_name: str | None) -> Resource:
    from opentelemetry.sdk.resources import SERVICE_NAME  # noqa: PLC0415
    from opentelemetry.sdk.resources import Resource as SdkResource  # noqa: PLC0415

    # Resource.create also reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
    return SdkResource.create({SERVICE_NAME: service_name} if service_name else {})


def _headers(api_key: str | None) -> dict[str, str] | None:
    """``None`` lets the exporter read its headers variables itself; with a key, merge them."""
    if not api_key:
        return None
    headers = dict(parse_env_headers(os.environ.get(ENV_OTLP_HEADERS, ""), liberal=True))
    headers["authorization"] = f"Bearer {api_key}"
    return headers


def _signal_url(endpoint: str | None, signal: str) -> str | None:
    # OTLP/HTTP: an explicit endpoint is the full signal URL (OTLP exporter spec), so add the path.
    if endpoint is None:
        return None
    path = f"/v1/{signal}"
    return endpoint if endpoint.rstrip("/").endswith(path) else endpoint.rstrip("/") + path


def _span_exporter(protocol: OtlpProtocol, endpoint: str | None, api_key: str | None) -> SpanExporter:
    headers = _headers(api_key)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter(endpoint=endpoint, headers=headers)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter(endpoint=_signal_url(endpoint, "traces"), headers=headers)


def _delta_temporality() -> dict[type, AggregationTemporality] | None:
    """Delta for counters and histograms, unless the standard variable says otherwise."""
    if os.environ.get(ENV_METRICS_TEMPORALITY):
        return None
    from opentelemetry.sdk.metrics import (  # noqa: PLC0415
        Counter,
        Histogram,
        ObservableCounter,
        ObservableGauge,
        ObservableUpDownCounter,
        UpDownCounter,
    )
    from opentelemetry.sdk.metrics.export import AggregationTemporality  # noqa: PLC0415

    return {
        Counter: AggregationTemporality.DELTA,
        Histogram: AggregationTemporality.DELTA,
        ObservableCounter: AggregationTemporality.DELTA,
        UpDownCounter: AggregationTemporality.CUMULATIVE,
        ObservableUpDownCounter: AggregationTemporality.CUMULATIVE,
        ObservableGauge: AggregationTemporality.CUMULATIVE,
    }


def _metric_exporter(protocol: OtlpProtocol, endpoint: str | None, api_key: str | None) -> MetricExporter:
    headers = _headers(api_key)
    temporality = _delta_temporality()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # noqa: PLC0415
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return GrpcMetricExporter(endpoint=endpoint, headers=headers, preferred_temporality=temporality)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # noqa: PLC0415
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter(
        endpoint=_signal_url(endpoint, "metrics"), headers=headers, preferred_temporality=temporality
    )


def _new_tracer_provider(resource: Resource, exporter: SpanExporter) -> TracerProvider:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    provider = SdkTracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _new_meter_provider(resource: Resource, exporter: MetricExporter) -> MeterProvider:
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: PLC0415

    interval = None if os.environ.get(ENV_METRIC_EXPORT_INTERVAL) else DEFAULT_METRIC_EXPORT_INTERVAL_MS
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval)
    return SdkMeterProvider(metric_readers=[reader], resource=resource)


def _instrument_sdks(
    tracer_provider: TracerProvider, meter_provider: MeterProvider, budget_guard: BudgetGuard | None
) -> tuple[BaseInstrumentor, ...]:
    instrumented: list[BaseInstrumentor] = []
    for sdk, module_name, class_name in _SDKS:
        if importlib.util.find_spec(sdk) is None:
            continue
        instrumentor: BaseInstrumentor = getattr(importlib.import_module(module_name), class_name)()
        if instrumentor.is_instrumented_by_opentelemetry:
            _LOG.warning("%s is already instrumented; leaving it as it is", sdk)
            continue
        instrumentor.instrument(
            tracer_provider=tracer_provider, meter_provider=meter_provider, budget_guard=budget_guard
        )
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumented.append(instrumentor)
    return tuple(instrumented)
