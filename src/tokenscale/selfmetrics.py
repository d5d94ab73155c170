"""Self-observability: a small Prometheus registry, health and readiness routes, instrumented wrappers."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any, Final, Generic, Protocol, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tokenscale.errors import PermanentError, RetryableError
from tokenscale.mapping.model import MappingResult, Signal
from tokenscale.pipeline import ExportResult, ResultWriter

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_BUCKETS",
    "TRANSPORT",
    "Counter",
    "Gauge",
    "Histogram",
    "HttpTransportMiddleware",
    "InstrumentedPipeline",
    "InstrumentedWriter",
    "Registry",
    "ServiceMetrics",
    "create_health_routes",
    "expected_schema_version",
    "readiness",
]

log = logging.getLogger(__name__)

#: The Prometheus text exposition format this module writes.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: Latency buckets in seconds: a millisecond to ten seconds.
DEFAULT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: The transport an export arrived on. :class:`HttpTransportMiddleware` sets ``"http"`` around each
#: OTLP/HTTP request (``asyncio.to_thread`` carries it into the worker thread); an export without it
#: came through the receiver's only other transport, gRPC.
TRANSPORT: Final[contextvars.ContextVar[str]] = contextvars.ContextVar("tokenscale_transport", default="grpc")
# The signal of the export being handled, so the writer's measurements can be labelled with it.
_SIGNAL: Final[contextvars.ContextVar[str]] = contextvars.ContextVar("tokenscale_signal", default="unknown")

_METRIC_NAME: Final = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME: Final = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _format_value(value: float) -> str:
    """A sample value as the text format writes it (integers without a fraction)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _labels_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


C = TypeVar("C")


class _Metric(Generic[C]):
    """A metric family: one child per combination of label values."""

    kind = "untyped"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} of metric {name!r}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label names of metric {name!r}")
        self.name = name
        self.documentation = documentation
        self.labelnames: tuple[str, ...] = tuple(labelnames)
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], C] = {}

    def _new_child(self) -> C:
        raise NotImplementedError

    def labels(self, *values: str, **named: str) -> C:
        """The child of these label values (positional, or all by name), created on first use."""
        if values and named:
            raise ValueError("pass label values either by position or by name")
        if named:
            if set(named) != set(self.labelnames):
                raise ValueError(f"{self.name} takes the labels {', '.join(self.labelnames) or 'none'}")
            values = tuple(named[n] for n in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes {len(self.labelnames)} label values, got {len(values)}")
        key = tuple(str(v) for v in values)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._new_child()
            return child

    def _unlabelled(self) -> C:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels; use .labels(...)")
        return self.labels()

    def _items(self) -> list[tuple[tuple[str, ...], C]]:
        with self._lock:
            return sorted(self._children.items())

    def _samples(self) -> Iterator[str]:
        raise NotImplementedError

    def render(self) -> str:
        """This family in the text format: HELP, TYPE, then every sample."""
        head = f"# HELP {self.name} {_escape_help(self.documentation)}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(line + "\n" for line in self._samples())


class _Value:
    """One counter or gauge value."""

    __slots__ = ("_lock", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0.0

    def get(self) -> float:
        """The current value."""
        with self._lock:
            return self._value


class _CounterChild(_Value):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (never negative)."""
        if amount < 0:
            raise ValueError("a counter can only increase")
        with self._lock:
            self._value += amount


class _GaugeChild(_Value):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount``."""
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        """Subtract ``amount``."""
        with self._lock:
            self._value -= amount

    def set(self, value: float) -> None:
        """Set the value."""
        with self._lock:
            self._value = float(value)


class Counter(_Metric[_CounterChild]):
    """A monotonically increasing count; its name should end in ``_total``."""

    kind = "counter"

    def _new_child(self) -> _CounterChild:
        return _CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` to the unlabelled counter."""
        self._unlabelled().inc(amount)

    def _samples(self) -> Iterator[str]:
        for values, child in self._items():
            yield f"{self.name}{_labels_text(self.labelnames, values)} {_format_value(child.get())}"


class Gauge(_Metric[_GaugeChild]):
    """A value that goes up and down."""

    kind = "gauge"

    def _new_child(self) -> _GaugeChild:
        return _GaugeChild()

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` to the unlabelled gauge."""
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        """Subtract ``amount`` from the unlabelled gauge."""
        self._unlabelled().dec(amount)

    def set(self, value: float) -> None:
        """Set the unlabelled gauge."""
        self._unlabelled().set(value)

    def _samples(self) -> Iterator[str]:
        for values, child in self._items():
            yield f"{self.name}{_labels_text(self.labelnames, values)} {_format_value(child.get())}"


class _HistogramChild:
    __slots__ = ("_bounds", "_counts", "_lock", "_sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._lock = threading.Lock()
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Record one observation."""
        index = len(self._bounds)
        for i, bound in enumerate(self._bounds):
            if value <= bound:
                index = i
                break
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[int], float]:
        """Cumulative bucket counts (the last is the total count) and the sum."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for count in counts:
            running += count
            cumulative.append(running)
        return cumulative, total


class Histogram(_Metric[_HistogramChild]):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        if "le" in labelnames:
            raise ValueError(f"histogram {name!r} cannot have a label named 'le'")
        super().__init__(name, documentation, labelnames)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"histogram {name!r} needs distinct finite buckets")
        self.buckets: tuple[float, ...] = tuple(bounds)

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(self.buckets)

    def observe(self, value: float) -> None:
        """Record one observation on the unlabelled histogram."""
        self._unlabelled().observe(value)

    @contextmanager
    def time(self, *values: str) -> Iterator[None]:
        """Observe the seconds the ``with`` block takes (on the child of ``values``)."""
        child = self.labels(*values)
        started = time.perf_counter()
        try:
            yield
        finally:
            child.observe(time.perf_counter() - started)

    def _samples(self) -> Iterator[str]:
        for values, child in self._items():
            cumulative, total = child.snapshot()
            for bound, count in zip((*self.buckets, math.inf), cumulative, strict=True):
                le = f'le="{_format_value(bound)}"'
                yield f"{self.name}_bucket{_labels_text(self.labelnames, values, le)} {count}"
            labels = _labels_text(self.labelnames, values)
            yield f"{self.name}_sum{labels} {_format_value(total)}"
            yield f"{self.name}_count{labels} {cumulative[-1]}"


M = TypeVar("M", Counter, Gauge, Histogram)


class Registry:
    """The metrics of one process, rendered in the Prometheus text format (version 0.0.4).

    ``counter``/``gauge``/``histogram`` return the existing family of that name when it has the
    same kind and labels (so independent components can share metrics), else raise ``ValueError``.
    Collect hooks run before each rendering, to refresh gauges read from elsewhere. Thread-safe.
    ``const_labels`` are added to every sample (e.g. ``worker`` in one of several processes serving
    one port, so that each process's counters stay series of their own).
    """

    def __init__(self, const_labels: Mapping[str, str] | None = None) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}
        self._hooks: list[Callable[[], None]] = []
        self._const_names = frozenset(const_labels or {})
        for label in self._const_names:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid constant label name {label!r}")
        self._const = ",".join(f'{n}="{_escape_label(v)}"' for n, v in (const_labels or {}).items())

    def _get_or_create(self, kind: type[M], name: str, labelnames: Sequence[str], make: Callable[[], M]) -> M:
        if clash := self._const_names.intersection(labelnames):
            raise ValueError(
                f"metric {name!r}: {', '.join(sorted(clash))} is a constant label of the registry"
            )
        with self._lock:
            existing = self._metrics.get(name)
            if existing is None:
                for other in self._metrics.values():
                    if isinstance(other, Histogram) and name in {
                        f"{other.name}_bucket",
                        f"{other.name}_sum",
                        f"{other.name}_count",
                    }:
                        raise ValueError(f"metric name {name!r} collides with histogram {other.name!r}")
                created = make()
                self._metrics[name] = created
                return created
        if not isinstance(existing, kind) or existing.labelnames != tuple(labelnames):
            raise ValueError(f"metric {name!r} is already registered with another kind or labels")
        return existing

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        """The counter ``name`` (created on first use)."""
        return self._get_or_create(
            Counter, name, labelnames, lambda: Counter(name, documentation, labelnames)
        )

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        """The gauge ``name`` (created on first use)."""
        return self._get_or_create(Gauge, name, labelnames, lambda: Gauge(name, documentation, labelnames))

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        """The histogram ``name`` (created on first use)."""
        return self._get_or_create(
            Histogram, name, labelnames, lambda: Histogram(name, documentation, labelnames, buckets)
        )

    def add_collect_hook(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` before every :meth:`render` (a failing hook is skipped, not fatal)."""
        with self._lock:
            self._hooks.append(hook)

    def get(self, name: str) -> Counter | Gauge | Histogram | None:
        """The family ``name``, if registered."""
        with self._lock:
            return self._metrics.get(name)

    def render(self) -> str:
        """Every family in the text exposition format, in registration order."""
        with self._lock:
            hooks, metrics = list(self._hooks), list(self._metrics.values())
        for hook in hooks:
            try:
                hook()
            except Exception:  # a broken hook must not take /metrics down
                log.warning("a metrics collect hook failed", exc_info=True)
        text = "".join(metric.render() for metric in metrics)
        if not self._const:
            return text
        lines = text.split("\n")[:-1]  # not splitlines(): label values may hold other line breaks
        return "".join(
            (line if line.startswith("#") else _add_labels(line, self._const)) + "\n" for line in lines
        )


def _add_labels(sample: str, labels: str) -> str:
    """One sample line with ``labels`` (``a="b",c="d"``) first in its label set."""
    cut = min(i for i in (sample.find("{"), sample.find(" ")) if i >= 0)  # the end of the metric name
    if sample[cut] == "{":
        return f"{sample[: cut + 1]}{labels},{sample[cut + 1 :]}"
    return f"{sample[:cut]}{{{labels}}}{sample[cut:]}"


class ServiceMetrics:
    """tokenscale's own metrics, on ``registry`` (shared by every component that asks for them)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        labels = ("signal", "transport")
        self.exports_received = registry.counter(
            "tokenscale_exports_received_total",
            "OTLP export requests handed to the pipeline.",
            labels,
        )
        self.exports_rejected = registry.counter(
            "tokenscale_exports_rejected_total",
            "OTLP export requests refused as a whole by the pipeline "
            "(reason: invalid, unavailable or internal).",
            (*labels, "reason"),
        )
        self.items_rejected = registry.counter(
            "tokenscale_export_items_rejected_total",
            "Records rejected inside accepted exports (OTLP partial success).",
            labels,
        )
        self.in_flight = registry.gauge(
            "tokenscale_exports_in_flight",
            "Export requests being handled now (the receiver's queue depth).",
        )
        self.export_seconds = registry.histogram(
            "tokenscale_export_duration_seconds",
            "Time to map and commit one export request.",
            labels,
        )
        self.rows_written = registry.counter(
            "tokenscale_rows_written_total",
            "Usage and activity rows committed by the writer, per table (rows differenced from "
            "cumulative points are in tokenscale_cumulative_points_total; a retried export's rows "
            "count again although the database skips them).",
            ("table",),
        )
        self.cumulative_points = registry.counter(
            "tokenscale_cumulative_points_total",
            "Cumulative metric points committed by the writer, which differences them into rows.",
        )
        self.write_seconds = registry.histogram(
            "tokenscale_write_duration_seconds",
            "Time of one batched write transaction.",
            ("signal",),
        )
        self.write_failures = registry.counter(
            "tokenscale_write_failures_total",
            "Batched write transactions that failed.",
            ("signal",),
        )
        self.http_responses = registry.counter(
            "tokenscale_http_responses_total",
            "HTTP responses, by route (OTLP paths; everything else is 'other') and status code.",
            ("route", "code"),
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PermanentError):
        return "invalid"
    if isinstance(exc, RetryableError):
        return "unavailable"
    return "internal"


class _Exporter(Protocol):
    """What is wrapped: :class:`tokenscale.pipeline.ExportPipeline` or anything exporting alike."""

    def export(self, signal: Signal, request: Any, tenant: str) -> ExportResult: ...


class InstrumentedPipeline:
    """Wraps an export pipeline: counts exports per signal and transport, rejections, in-flight
    exports and export latency, then returns the wrapped pipeline's answer (or raises its error)."""

    def __init__(self, pipeline: _Exporter, registry: Registry) -> None:
        self._pipeline = pipeline
        self.metrics = ServiceMetrics(registry)

    def export(self, signal: Signal, request: Any, tenant: str) -> ExportResult:
        """Hand one export to the wrapped pipeline, measuring it. Blocking, like the pipeline."""
        m = self.metrics
        transport = TRANSPORT.get()
        m.exports_received.labels(signal, transport).inc()
        m.in_flight.inc()
        marker = _SIGNAL.set(signal)
        started = time.perf_counter()
        try:
            result = self._pipeline.export(signal, request, tenant)
        except BaseException as exc:
            m.exports_rejected.labels(signal, transport, _reason(exc)).inc()
            raise
        finally:
            _SIGNAL.reset(marker)
            m.in_flight.dec()
            m.export_seconds.labels(signal, transport).observe(time.perf_counter() - started)
        if result.rejected:
            m.items_rejected.labels(signal, transport).inc(result.rejected)
        return result


class InstrumentedWriter:
    """Wraps a :class:`tokenscale.pipeline.ResultWriter`: rows and cumulative points written, write
    latency and failures per signal (the signal comes from the :class:`InstrumentedPipeline` around
    it)."""

    def __init__(self, writer: ResultWriter, registry: Registry) -> None:
        self._writer = writer
        self.metrics = ServiceMetrics(registry)

    def write(self, result: MappingResult) -> None:
        """Commit ``result`` through the wrapped writer, measuring it."""
        m = self.metrics
        signal = _SIGNAL.get()
        started = time.perf_counter()
        try:
            self._writer.write(result)
        except BaseException:
            m.write_failures.labels(signal).inc()
            raise
        finally:
            m.write_seconds.labels(signal).observe(time.perf_counter() - started)
        if result.events or result.listed:
            m.rows_written.labels("usage_events").inc(len(result.events) + len(result.listed))
        if result.activity:
            m.rows_written.labels("activity_events").inc(len(result.activity))
        if result.cumulative:
            m.cumulative_points.inc(len(result.cumulative))


_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_Asgi = Callable[[_Scope, _Receive, _Send], Awaitable[None]]
_OTLP_PATHS: Final = frozenset({"/v1/metrics", "/v1/traces", "/v1/logs"})


class HttpTransportMiddleware:
    """ASGI middleware for the OTLP/HTTP app: marks its exports as ``transport="http"`` for
    :class:`InstrumentedPipeline` and counts every response by route and status code.

    Add it with ``app.add_middleware(HttpTransportMiddleware, registry=registry)`` before serving.
    """

    def __init__(self, app: _Asgi, registry: Registry) -> None:
        self.app = app
        self.metrics = ServiceMetrics(registry)

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        route = path if path in _OTLP_PATHS else "other"
        status = 500

        async def send_status(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        marker = TRANSPORT.set("http")
        try:
            await self.app(scope, receive, send_status)
        finally:
            TRANSPORT.reset(marker)
            self.metrics.http_responses.labels(route, str(status)).inc()


def expected_schema_version() -> int:
    """The highest migration version this tokenscale ships."""
    from tokenscale.store.migrate import available_migrations  # noqa: PLC0415 - reads package files

    return max((m.version for m in available_migrations()), default=0)


def readiness(pool: ConnectionPool, expected: int, timeout: float = 5.0) -> tuple[bool, dict[str, Any]]:
    """Whether the database answers and its schema is at ``expected``; blocking, with the reason."""
    try:
        with pool.connection(timeout=timeout) as conn:
            conn.execute("SELECT 1").fetchone()
            row = conn.execute("SELECT to_regclass('tokenscale.schema_migrations') IS NOT NULL").fetchone()
            if not row or not row[0]:
                return False, {
                    "status": "not ready",
                    "reason": "the tokenscale schema is not created (run `tokenscale migrate`)",
                    "expected_schema_version": expected,
                }
            found = conn.execute("SELECT max(version) FROM tokenscale.schema_migrations").fetchone()
    except PoolTimeout:
        reason = f"database unavailable: no pooled connection within {timeout:g} s (down, or pool busy)"
        return False, {"status": "not ready", "reason": reason}
    except psycopg.Error as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return False, {"status": "not ready", "reason": f"database unavailable: {detail}"}
    version = int(found[0]) if found and found[0] is not None else 0
    body: dict[str, Any] = {"schema_version": version, "expected_schema_version": expected}
    if version != expected:
        relation = "behind" if version < expected else "ahead of"
        body.update(
            status="not ready",
            reason=f"schema version {version:04d} is {relation} this tokenscale's {expected:04d}",
        )
        return False, body
    body["status"] = "ready"
    return True, body


def _pool_hook(pool: ConnectionPool, registry: Registry) -> Callable[[], None]:
    size = registry.gauge("tokenscale_db_pool_connections", "Open database connections in the pool.")
    idle = registry.gauge("tokenscale_db_pool_idle_connections", "Idle database connections in the pool.")
    waiting = registry.gauge(
        "tokenscale_db_pool_waiting_requests", "Callers waiting for a database connection."
    )

    def collect() -> None:
        stats: Mapping[str, int] = pool.get_stats()
        size.set(stats.get("pool_size", 0))
        idle.set(stats.get("pool_available", 0))
        waiting.set(stats.get("requests_waiting", 0))

    return collect


def create_health_routes(
    pool: ConnectionPool, registry: Registry, *, readiness_timeout: float = 5.0
) -> list[Route]:
    """``GET /healthz`` (alive), ``GET /readyz`` (database answers and schema is current, else 503
    with a JSON reason) and ``GET /metrics`` (Prometheus text format 0.0.4, with pool gauges)."""
    expected = expected_schema_version()
    registry.add_collect_hook(_pool_hook(pool, registry))

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(request: Request) -> Response:
        ready, body = await asyncio.to_thread(readiness, pool, expected, readiness_timeout)
        return JSONResponse(body, status_code=200 if ready else 503, headers={"Cache-Control": "no-store"})

    async def metrics(request: Request) -> Response:
        text = await asyncio.to_thread(registry.render)
        return Response(text, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    return [
        Route("/healthz", healthz, methods=["GET"], name="healthz"),
        Route("/readyz", readyz, methods=["GET"], name="readyz"),
        Route("/metrics", metrics, methods=["GET"], name="metrics"),
    ]
