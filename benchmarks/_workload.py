"""Realistic OTLP export requests, serialized once and made unique per send by patching bytes.

A load generator must be cheap, so each request shape is built and serialized ONCE (a template);
every send copies the template and overwrites a few fixed-width slots with the request's counter,
which makes each request's records distinct (so the receiver's dedupe keeps every row):

* GenAI spans (OpenAI-instrumentation style, 20 attributes each incl. ``gen_ai.usage.*``): the first
  8 bytes of ``trace_id`` and of ``gen_ai.response.id`` hold the counter as hex digits;
* Claude-Code-style DELTA metrics (``claude_code.token.usage`` by type, ``claude_code.cost.usage``
  and two non-usage metrics, ~10 point attributes): the low 32 bits of every point's
  ``time_unix_nano`` (a fixed64, so fixed-width on the wire) are the counter;
* Claude-Code-style log events (80% ``api_request`` with ~21 attributes, 20% ``tool_result``): the
  counter is in every record's ``trace_id`` (and in ``request_id``).

A request's stored rows are its ``usage_events`` rows plus its ``activity_events`` rows (Claude
Code's session count, active time and tool calls).

Templates are deterministic (seeded), so any process can rebuild the exact bytes of request ``j``:
``Workload.request(j)``. That is how the raw-COPY ceiling gets the very rows the receiver stored.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tokenscale.mapping import map_request
from tokenscale.mapping.model import Signal

__all__ = ["ITEM_NAMES", "SIGNALS", "WARMUP_BASE", "Template", "Workload", "build_workload"]

SIGNALS: Final[tuple[Signal, ...]] = ("traces", "metrics", "logs")
#: What one item of each signal is called in the tables.
ITEM_NAMES: Final[dict[Signal, str]] = {"traces": "spans", "metrics": "points", "logs": "records"}
#: Warm-up requests use counters from here on, so they never collide with measured ones.
WARMUP_BASE: Final = 0xF000_0000

_HEX_SLOT: Final = b"~~~~~~~~"  # 8 bytes, replaced by the counter as 8 lower-case hex digits
_TIME_SLOT: Final = b"~~~~"  # low 4 bytes (little endian) of a fixed64 timestamp
_NS: Final = 1_000_000_000

_USERS: Final = 2000
_OPENAI_MODELS: Final = (
    ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    ("gpt-4.1", "gpt-4.1-2025-04-14"),
    ("o4-mini", "o4-mini-2025-04-16"),
)
_CLAUDE_MODELS: Final = ("claude-sonnet-4-5", "claude-opus-4-8[1m]", "claude-haiku-4-5")
_TOOLS: Final = ("Bash", "Edit", "Read", "Write", "Grep")


def _value(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, list):
        out = AnyValue()
        out.array_value.values.extend(_value(x) for x in v)
        return out
    return AnyValue(string_value=str(v))


def _attrs(pairs: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_value(v)) for k, v in pairs.items()]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _hex(rng: random.Random, n: int) -> str:
    return "%0*x" % (n, rng.getrandbits(4 * n))  # noqa: UP031 - width from a variable


@dataclass(frozen=True)
class Template:
    """One serialized export request with slots to patch; see the module doc."""

    signal: Signal
    payload: bytes
    hex_offsets: tuple[int, ...]
    time_offsets: tuple[int, ...]
    items: int
    #: Rows the receiver stores for one request: usage_events rows, activity_events rows.
    usage_rows: int
    activity_rows: int

    @property
    def rows(self) -> int:
        return self.usage_rows + self.activity_rows

    def instance(self, counter: int) -> bytes:
        """The request bytes for ``counter`` (0 <= counter < 2**32)."""
        buf = bytearray(self.payload)
        if self.hex_offsets:
            digits = b"%08x" % counter
            for off in self.hex_offsets:
                buf[off : off + 8] = digits
        if self.time_offsets:
            low = counter.to_bytes(4, "little")
            for off in self.time_offsets:
                buf[off : off + 4] = low
        return bytes(buf)


def _offsets(payload: bytes, needle: bytes) -> tuple[int, ...]:
    found: list[int] = []
    pos = payload.find(needle)
    while pos >= 0:
        found.append(pos)
        pos = payload.find(needle, pos + len(needle))
    return tuple(found)


@dataclass(frozen=True)
class Workload:
    """The templates of one signal; request ``j`` is template ``j % len`` with counter ``j``."""

    signal: Signal
    templates: tuple[Template, ...]

    def request(self, j: int) -> bytes:
        return self.templates[j % len(self.templates)].instance(j)

    def items(self, j: int) -> int:
        return self.templates[j % len(self.templates)].items

    def rows(self, j: int) -> int:
        return self.templates[j % len(self.templates)].rows

    def totals(self, n: int) -> tuple[int, int]:
        """(items, rows) of requests 0..n-1."""
        return sum(self.items(j) for j in range(n)), sum(self.rows(j) for j in range(n))

    @property
    def mean_bytes(self) -> float:
        return sum(len(t.payload) for t in self.templates) / len(self.templates)


# -- traces ---------------------------------------------------------------------------------------


def _traces(rng: random.Random, n: int, base_ns: int) -> tuple[bytes, int, int]:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(
        _attrs(
            {
                "service.name": rng.choice(("support-assistant", "code-review-bot", "search-api")),
                "service.version": "3.4.1",
                "service.instance.id": _uuid(rng),
                "deployment.environment.name": "production",
                "host.name": f"app-{_hex(rng, 6)}",
                "telemetry.sdk.name": "opentelemetry",
                "telemetry.sdk.language": "python",
                "telemetry.sdk.version": "1.45.2",
            }
        )
    )
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.openai_v2"
    ss.scope.version = "2.4b0"
    slots = 0
    for i in range(n):
        model, dated = rng.choice(_OPENAI_MODELS)
        user = rng.randrange(_USERS)
        inp = rng.randrange(200, 30_000)
        cached = rng.randrange(0, inp // 2)
        out = rng.randrange(5, 2_000)
        start = base_ns + i * 3_000_000 + rng.randrange(1_000_000)
        span = Span(
            trace_id=_HEX_SLOT + b"%08x" % i,
            span_id=rng.randbytes(8),
            parent_span_id=rng.randbytes(8),
            name=f"chat {model}",
            kind=Span.SpanKind.SPAN_KIND_CLIENT,
            start_time_unix_nano=start,
            end_time_unix_nano=start + rng.randrange(200, 8_000) * 1_000_000,
        )
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": model,
            "gen_ai.response.model": dated,
            "gen_ai.response.id": "chatcmpl-~~~~~~~~" + _hex(rng, 21),
            "gen_ai.request.temperature": 0.2,
            "gen_ai.request.max_tokens": 4096,
            "gen_ai.request.top_p": 0.95,
            "gen_ai.response.finish_reasons": ["stop"],
            "gen_ai.usage.input_tokens": inp,
            "gen_ai.usage.output_tokens": out,
            "gen_ai.usage.cache_read.input_tokens": cached,
            "gen_ai.usage.cache_creation.input_tokens": 0,
            "gen_ai.usage.reasoning.output_tokens": out // 3 if model == "o4-mini" else 0,
            "gen_ai.conversation.id": _uuid(rng),
            "user.email": f"user{user}@example.com",
            "user.id": f"u-{user:05d}",
            "server.address": "api.openai.com",
            "server.port": 443,
            "openai.response.service_tier": "default",
        }
        span.attributes.extend(_attrs(attrs))
        ss.spans.append(span)
        slots += 2
    return req.SerializeToString(), n, slots


# -- Claude Code: shared identity -----------------------------------------------------------------


def _claude_resource(rng: random.Random) -> dict[str, Any]:
    return {
        "service.name": "claude-code",
        "service.version": "2.1.197",
        "os.type": "linux",
        "os.version": "6.8.0-45-generic",
        "host.arch": "amd64",
        "department": rng.choice(("platform", "payments", "search", "mobile")),
        "team.id": f"team-{rng.randrange(40):02d}",
    }


def _claude_identity(rng: random.Random) -> dict[str, Any]:
    user = rng.randrange(_USERS)
    return {
        "user.id": _hex(rng, 64),
        "session.id": _uuid(rng),
        "organization.id": "5c0ffee0-1111-4222-8333-444455556666",
        "user.email": f"user{user}@example.com",
        "user.account_uuid": _uuid(rng),
        "terminal.type": rng.choice(("vscode", "iTerm.app", "tmux")),
    }


# -- metrics --------------------------------------------------------------------------------------


def _metrics(rng: random.Random, sessions: int, time_hi: int) -> tuple[bytes, int, int]:
    time_ns = (time_hi << 32) | int.from_bytes(_TIME_SLOT, "little")
    start_ns = (time_hi << 32) - 60 * _NS
    req = ExportMetricsServiceRequest()
    points = 0
    delta = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA

    def metric(scope: Any, name: str, unit: str) -> Metric:
        m: Metric = scope.metrics.add()
        m.name = name
        m.unit = unit
        m.sum.aggregation_temporality = delta
        m.sum.is_monotonic = True
        return m

    def point(m: Metric, attrs: dict[str, Any], value: float) -> None:
        nonlocal points
        p = m.sum.data_points.add()
        p.start_time_unix_nano = start_ns
        p.time_unix_nano = time_ns
        p.as_double = value
        p.attributes.extend(_attrs(attrs))
        points += 1

    for _ in range(sessions):
        rm = req.resource_metrics.add()
        rm.resource.attributes.extend(_attrs(_claude_resource(rng)))
        sm = rm.scope_metrics.add()
        sm.scope.name = "com.anthropic.claude_code"
        sm.scope.version = "2.1.197"
        ident = _claude_identity(rng)
        model = rng.choice(_CLAUDE_MODELS)
        usage = {**ident, "model": model, "query_source": "main", "effort": "high"}
        point(metric(sm, "claude_code.session.count", ""), {**ident, "start_type": "fresh"}, 1.0)
        point(metric(sm, "claude_code.cost.usage", "USD"), usage, round(rng.uniform(0.001, 0.4), 6))
        tokens = metric(sm, "claude_code.token.usage", "tokens")
        for kind, hi in (
            ("input", 5_000),
            ("output", 3_000),
            ("cacheRead", 60_000),
            ("cacheCreation", 9_000),
        ):
            point(tokens, {**usage, "type": kind}, float(rng.randrange(1, hi)))
        point(metric(sm, "claude_code.active_time.total", "s"), {**ident, "type": "cli"}, rng.uniform(1, 60))
    return req.SerializeToString(), points, 0


# -- logs -----------------------------------------------------------------------------------------


def _logs(rng: random.Random, n: int, base_ns: int, per_session: int = 40) -> tuple[bytes, int, int]:
    req = ExportLogsServiceRequest()
    slots = 0
    i = 0
    while i < n:
        rl = req.resource_logs.add()
        rl.resource.attributes.extend(_attrs(_claude_resource(rng)))
        sl = rl.scope_logs.add()
        sl.scope.name = "com.anthropic.claude_code.events"
        sl.scope.version = "2.1.197"
        ident = _claude_identity(rng)
        for _ in range(min(per_session, n - i)):
            t = base_ns + i * 2_000_000 + rng.randrange(1_000_000)
            record = LogRecord(time_unix_nano=t, observed_time_unix_nano=t, flags=1)
            record.trace_id = _HEX_SLOT + b"%08x" % i
            record.span_id = rng.randbytes(8)
            slots += 1
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t // _NS)) + ".000Z"
            common = {**ident, "event.timestamp": stamp, "event.sequence": i, "prompt.id": _uuid(rng)}
            if rng.random() < 0.8:
                inp, out = rng.randrange(10, 5_000), rng.randrange(1, 3_000)
                cache_read, cache_write = rng.randrange(0, 60_000), rng.randrange(0, 9_000)
                cost = round((inp * 3 + out * 15 + cache_read * 0.3 + cache_write * 3.75) / 1e6, 8)
                record.body.string_value = "claude_code.api_request"
                attrs = {
                    **common,
                    "event.name": "api_request",
                    "model": rng.choice(_CLAUDE_MODELS),
                    "input_tokens": inp,
                    "output_tokens": out,
                    "cache_read_tokens": cache_read,
                    "cache_creation_tokens": cache_write,
                    "cost_usd": cost,
                    "duration_ms": rng.randrange(300, 30_000),
                    "request_id": "req_~~~~~~~~" + _hex(rng, 16),
                    "speed": "normal",
                    "query_source": "main",
                    "effort": "high",
                }
                slots += 1
            else:
                record.body.string_value = "claude_code.tool_result"
                attrs = {
                    **common,
                    "event.name": "tool_result",
                    "tool_name": rng.choice(_TOOLS),
                    "success": "true",
                    "duration_ms": rng.randrange(5, 5_000),
                    "decision_type": "accept",
                    "decision_source": "config",
                    "tool_result_size_bytes": rng.randrange(10, 50_000),
                }
            record.attributes.extend(_attrs(attrs))
            sl.log_records.append(record)
            i += 1
    return req.SerializeToString(), n, slots


# -- assembly -------------------------------------------------------------------------------------

_SIZES: Final[dict[Signal, tuple[int, ...]]] = {
    # items per export: 512-1000 spans/records; metrics in sessions of 7 points each (518-1001 points)
    "traces": (512, 700, 850, 1000),
    "metrics": (74, 100, 122, 143),
    "logs": (520, 720, 840, 1000),
}
_QUICK_SIZES: Final[dict[Signal, tuple[int, ...]]] = {"traces": (100,), "metrics": (15,), "logs": (100,)}


def _base_ns() -> int:
    """10:00 UTC today: every record of a run falls on one UTC day (one partition or chunk)."""
    day = int(time.time()) // 86_400 * 86_400
    return (day + 10 * 3600) * _NS


def build_workload(
    signal: Signal, *, quick: bool = False, seed: int = 20261123, base_ns: int = 0
) -> Workload:
    """The deterministic templates of ``signal`` (the same bytes in every process given the same args)."""
    base = base_ns or _base_ns()
    sizes = (_QUICK_SIZES if quick else _SIZES)[signal]
    templates: list[Template] = []
    for k, size in enumerate(sizes):
        rng = random.Random(f"{seed}-{signal}-{k}")
        if signal == "traces":
            payload, items, slots = _traces(rng, size, base)
        elif signal == "metrics":
            payload, items, slots = _metrics(rng, size, base >> 32)
        else:
            payload, items, slots = _logs(rng, size, base)
        hex_offsets = _offsets(payload, _HEX_SLOT)
        time_offsets = (
            _offsets(payload, _TIME_SLOT + (base >> 32).to_bytes(4, "little")) if signal == "metrics" else ()
        )
        if len(hex_offsets) != slots or (signal == "metrics" and len(time_offsets) != items):
            raise AssertionError(f"{signal} template {k}: slot offsets do not match the slots written")
        template = Template(signal, payload, hex_offsets, time_offsets, items, 0, 0)
        usage_rows, activity_rows = _count_rows(template)
        templates.append(
            Template(signal, payload, hex_offsets, time_offsets, items, usage_rows, activity_rows)
        )
    return Workload(signal, tuple(templates))


_REQUEST_TYPES: Final[dict[Signal, Any]] = {
    "traces": ExportTraceServiceRequest,
    "metrics": ExportMetricsServiceRequest,
    "logs": ExportLogsServiceRequest,
}


def parse(signal: Signal, payload: bytes) -> Any:
    return _REQUEST_TYPES[signal].FromString(payload)


def _count_rows(template: Template) -> tuple[int, int]:
    result = map_request(template.signal, parse(template.signal, template.instance(0)), "default")
    if result.rejected or result.cumulative:
        raise AssertionError(f"{template.signal} template maps with rejections: {result.error_message}")
    return len(result.events), len(getattr(result, "activity", ()))
