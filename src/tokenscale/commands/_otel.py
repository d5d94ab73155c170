"""The demo's OpenTelemetry SDK side: providers, OTLP/gRPC exporters that remember failures, emitters."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics import Counter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind

__all__ = ["Sender"]

_DEMO_VERSION: Final = "demo"
_CLAUDE_SCOPE: Final = "com.anthropic.claude_code"
_NO_EXPORT_INTERVAL_MS: Final = 24 * 3600 * 1000  # metrics are exported by close(), once


class _Failures:
    """Failed exports, by signal (thread-safe: exporters run on the processors' threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        with self._lock:
            if message not in self.messages:
                self.messages.append(message)


class _CheckedSpans(SpanExporter):
    def __init__(self, inner: SpanExporter, failures: _Failures) -> None:
        self._inner, self._failures = inner, failures

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self._inner.export(spans)
        if result is not SpanExportResult.SUCCESS:
            self._failures.add("traces export failed")
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _CheckedLogs(LogRecordExporter):
    def __init__(self, inner: LogRecordExporter, failures: _Failures) -> None:
        self._inner, self._failures = inner, failures

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        result = self._inner.export(batch)
        if result is not LogRecordExportResult.SUCCESS:
            self._failures.add("logs export failed")
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _CheckedMetrics(MetricExporter):
    def __init__(self, inner: MetricExporter, failures: _Failures) -> None:
        # Claude Code exports DELTA counters (its default); the reader takes these preferences.
        super().__init__(preferred_temporality={Counter: AggregationTemporality.DELTA})
        self._inner, self._failures = inner, failures

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        result = self._inner.export(metrics_data, timeout_millis, **kwargs)
        if result is not MetricExportResult.SUCCESS:
            self._failures.add("metrics export failed")
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis, **kwargs)


class Sender:
    """One OpenTelemetry SDK setup per demo service, all exporting to ``target`` over OTLP/gRPC."""

    def __init__(
        self, target: str, *, insecure: bool, headers: dict[str, str] | None, timeout: float
    ) -> None:
        self._target, self._insecure, self._headers, self._timeout = target, insecure, headers, timeout
        self._failures = _Failures()
        self._tracers: dict[str, tuple[TracerProvider, trace.Tracer]] = {}
        self._agent: tuple[str, Span, dict[str, int], int] | None = None  # id, span, usage, end
        self._sessions: set[str] = set()
        self._closed = False
        self.spans = 0
        self.log_records = 0

        resource = self._resource("claude-code", "2.1.0")
        self._logs = LoggerProvider(resource=resource)
        self._logs.add_log_record_processor(
            BatchLogRecordProcessor(
                _CheckedLogs(
                    OTLPLogExporter(endpoint=target, insecure=insecure, headers=headers, timeout=timeout),
                    self._failures,
                )
            )
        )
        self._logger = self._logs.get_logger(_CLAUDE_SCOPE, "2.1.0")
        metrics = _CheckedMetrics(
            OTLPMetricExporter(endpoint=target, insecure=insecure, headers=headers, timeout=timeout),
            self._failures,
        )
        self._reader = PeriodicExportingMetricReader(metrics, export_interval_millis=_NO_EXPORT_INTERVAL_MS)
        self._meters = MeterProvider(resource=resource, metric_readers=[self._reader])
        meter = self._meters.get_meter(_CLAUDE_SCOPE, "2.1.0")
        self._token_usage = meter.create_counter("claude_code.token.usage", "tokens", "Number of tokens used")
        self._cost_usage = meter.create_counter(
            "claude_code.cost.usage", "USD", "Cost of the Claude Code session"
        )
        self._session_count = meter.create_counter(
            "claude_code.session.count", "count", "Count of CLI sessions"
        )
        self._lines = meter.create_counter(
            "claude_code.lines_of_code.count", "count", "Lines of code modified"
        )

    @staticmethod
    def _resource(service: str, version: str) -> Resource:
        return Resource.create(
            {
                "service.name": service,
                "service.version": version,
                "service.instance.id": f"{service}-{_DEMO_VERSION}",
                "deployment.environment.name": _DEMO_VERSION,
            }
        )

    def _tracer(self, service: str) -> trace.Tracer:
        found = self._tracers.get(service)
        if found is None:
            provider = TracerProvider(resource=self._resource(service, "1.4.2"))
            exporter = OTLPSpanExporter(
                endpoint=self._target, insecure=self._insecure, headers=self._headers, timeout=self._timeout
            )
            provider.add_span_processor(BatchSpanProcessor(_CheckedSpans(exporter, self._failures)))
            found = self._tracers[service] = (provider, provider.get_tracer("tokenscale.demo", "0.1"))
        return found[1]

    # --- GenAI apps: semantic-convention spans --------------------------------------------------

    def _end_agent(self) -> None:
        if self._agent is None:
            return
        _, span, usage, end_ns = self._agent
        # Some instrumentations put the run's summed usage on the agent span; it is never counted.
        span.set_attributes({f"gen_ai.usage.{k}": v for k, v in usage.items()})
        span.end(end_time=end_ns)
        self.spans += 1
        self._agent = None

    def genai_span(self, f: dict[str, Any]) -> None:
        """One chat call as a GenAI client span (inside its app's ``invoke_agent`` span, if any)."""
        tracer = self._tracer(f["service"])
        context = None
        if f["agent"]:
            if self._agent is None or self._agent[0] != f["agent"]:
                self._end_agent()
                agent = tracer.start_span(
                    f"invoke_agent {f['service']}",
                    kind=SpanKind.INTERNAL,
                    start_time=f["start_ns"],
                    attributes={
                        "gen_ai.operation.name": "invoke_agent",
                        "gen_ai.agent.name": f["service"],
                        "gen_ai.provider.name": f["provider"],
                        "user.email": f["user"],
                    },
                )
                self._agent = (f["agent"], agent, {"input_tokens": 0, "output_tokens": 0}, f["end_ns"])
            agent_id, agent_span, usage, _ = self._agent
            self._agent = (agent_id, agent_span, usage, f["end_ns"])
            usage["input_tokens"] += f["input_tokens"] + f["cache_read_tokens"] + f["cache_write_tokens"]
            usage["output_tokens"] += f["output_tokens"]
            context = trace.set_span_in_context(agent_span)
        else:
            self._end_agent()
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": f["provider"],
            "gen_ai.request.model": f["model"],
            "gen_ai.response.model": f["model"],
            "gen_ai.response.id": f"resp_{f['start_ns']:x}",
            "gen_ai.response.finish_reasons": ["stop"],
            "server.address": f["server"],
            "server.port": 443,
            # The conventions: input INCLUDES cache reads and writes, output INCLUDES reasoning.
            "gen_ai.usage.input_tokens": f["input_tokens"] + f["cache_read_tokens"] + f["cache_write_tokens"],
            "gen_ai.usage.output_tokens": f["output_tokens"],
            "user.email": f["user"],
        }
        if f["cache_read_tokens"]:
            attributes["gen_ai.usage.cache_read.input_tokens"] = f["cache_read_tokens"]
        if f["cache_write_tokens"]:
            attributes["gen_ai.usage.cache_write.input_tokens"] = f["cache_write_tokens"]
        if f["reasoning_tokens"]:
            attributes["gen_ai.usage.reasoning.output_tokens"] = f["reasoning_tokens"]
        span = tracer.start_span(
            f"chat {f['model']}", context=context, kind=SpanKind.CLIENT, start_time=f["start_ns"]
        )
        span.set_attributes(attributes)
        span.end(end_time=f["end_ns"])
        self.spans += 1

    # --- Claude Code: api_request events and delta metrics --------------------------------------

    def claude_code_request(self, f: dict[str, Any], cost_usd: float | None) -> None:
        """One Claude Code API call: its ``api_request`` and ``tool_result`` events, and metrics."""
        common = {
            "user.email": f["user"],
            "user.id": f["user_id"],
            "session.id": f["session"],
            "organization.id": "demo-org",
            "terminal.type": "xterm-256color",
        }
        when = f["end_ns"]
        stamp = datetime.fromtimestamp(when / 1e9, UTC).isoformat(timespec="milliseconds")
        event: dict[str, Any] = {
            **common,
            "event.name": "api_request",
            "event.timestamp": stamp.replace("+00:00", "Z"),
            "model": f["model"],
            "input_tokens": f["input_tokens"],
            "output_tokens": f["output_tokens"],
            "cache_read_tokens": f["cache_read_tokens"],
            "cache_creation_tokens": f["cache_write_tokens"],
            "duration_ms": (f["end_ns"] - f["start_ns"]) // 1_000_000,
            "request_id": f"req_{f['start_ns']:x}",
            "speed": "normal",
        }
        if cost_usd is not None:
            event["cost_usd"] = cost_usd
        self._logger.emit(
            timestamp=when,
            observed_timestamp=when,
            body="claude_code.api_request",
            attributes=event,
            event_name="claude_code.api_request",
        )
        tool = {
            **common,
            "event.name": "tool_result",
            "tool_name": "Edit" if f["output_tokens"] % 3 else "Bash",
            "success": "true",
            "duration_ms": 40 + f["output_tokens"] % 900,
        }
        self._logger.emit(
            timestamp=when + 1_000_000,
            observed_timestamp=when + 1_000_000,
            body="claude_code.tool_result",
            attributes=tool,
            event_name="claude_code.tool_result",
        )
        self.log_records += 2
        # The same usage as metrics: counted only while no event of the session has arrived.
        series = {**common, "model": f["model"]}
        for kind, key in (
            ("input", "input_tokens"),
            ("output", "output_tokens"),
            ("cacheRead", "cache_read_tokens"),
            ("cacheCreation", "cache_write_tokens"),
        ):
            if f[key]:
                self._token_usage.add(f[key], {**series, "type": kind})
        if cost_usd is not None:
            self._cost_usage.add(cost_usd, series)
        if f["session"] not in self._sessions:
            self._sessions.add(f["session"])
            self._session_count.add(1, common)
        self._lines.add(f["output_tokens"] // 40, {**common, "type": "added"})
        self._lines.add(f["output_tokens"] // 150, {**common, "type": "removed"})

    def close(self) -> list[str]:
        """Flush and shut every provider down (events before metrics); the failed exports."""
        if self._closed:
            return list(self._failures.messages)
        self._closed = True
        self._end_agent()
        timeout_ms = int(self._timeout * 1000) * 3
        if not self._logs.force_flush(timeout_ms):
            self._failures.add("logs were not flushed in time")
        for provider, _ in self._tracers.values():
            if not provider.force_flush(timeout_ms):
                self._failures.add("spans were not flushed in time")
        if not self._meters.force_flush(timeout_ms):
            self._failures.add("metrics were not flushed in time")
        self._logs.shutdown()
        for provider, _ in self._tracers.values():
            provider.shutdown()
        self._meters.shutdown()
        return list(self._failures.messages)
