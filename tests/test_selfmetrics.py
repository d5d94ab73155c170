"""Self-observability: the Prometheus registry, the instrumented pipeline and writer, /metrics and /readyz."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from psycopg_pool import ConnectionPool

from ground_truth import capture_bodies
from otlp_clients import background_loop, grpc_export, post, run
from tokenscale.errors import PermanentError, RetryableError
from tokenscale.mapping import map_request
from tokenscale.otlp import decode_request
from tokenscale.pipeline import ExportPipeline, ExportResult
from tokenscale.receiver.server import Receiver
from tokenscale.selfmetrics import (
    CONTENT_TYPE,
    HttpTransportMiddleware,
    InstrumentedPipeline,
    InstrumentedWriter,
    Registry,
    create_health_routes,
    expected_schema_version,
    readiness,
)
from tokenscale.store import migrate
from tokenscale.store.migrate import available_migrations
from tokenscale.store.writer import UsageWriter, open_pool

# One sample line of the text format 0.0.4: name, optional labels, value (no timestamps written).
_SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*)\})?'
    r" (?P<value>[-+]?(?:[0-9.]+(?:e[-+]?[0-9]+)?|Inf|NaN))$"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples by (name, labels), checking the format: HELP and TYPE before each family's samples."""
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    typed: dict[str, str] = {}
    helped: set[str] = set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split(" ")[2])
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}
            assert name in helped and name not in typed, name
            typed[name] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name = match["name"]
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in typed else name
        assert family in typed, f"sample {name} before its TYPE"
        labels = frozenset(
            (k, v.replace(r"\"", '"').replace(r"\n", "\n").replace(r"\\", "\\"))
            for k, v in _LABEL.findall(match["labels"] or "")
        )
        key = (name, labels)
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(match["value"].replace("Inf", "inf"))
    return samples


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# --- the registry ------------------------------------------------------------------------------------


def test_text_format_of_each_kind() -> None:
    registry = Registry()
    counter = registry.counter("demo_requests_total", "Requests\nby path \\ code.", ("path", "code"))
    counter.labels('/a"b', "200").inc()
    counter.labels(path="/x\ny", code="500").inc(2.5)
    gauge = registry.gauge("demo_queue_depth", "Queue depth.")
    gauge.set(3)
    gauge.dec()
    histogram = registry.histogram("demo_seconds", "Latency.", ("op",), buckets=(0.1, 1, 0.5))
    for value in (0.05, 0.1, 0.7, 3):
        histogram.labels("read").observe(value)
    assert registry.render() == (
        "# HELP demo_requests_total Requests\\nby path \\\\ code.\n"
        "# TYPE demo_requests_total counter\n"
        'demo_requests_total{path="/a\\"b",code="200"} 1\n'
        'demo_requests_total{path="/x\\ny",code="500"} 2.5\n'
        "# HELP demo_queue_depth Queue depth.\n"
        "# TYPE demo_queue_depth gauge\n"
        "demo_queue_depth 2\n"
        "# HELP demo_seconds Latency.\n"
        "# TYPE demo_seconds histogram\n"
        'demo_seconds_bucket{op="read",le="0.1"} 2\n'
        'demo_seconds_bucket{op="read",le="0.5"} 2\n'
        'demo_seconds_bucket{op="read",le="1"} 3\n'
        'demo_seconds_bucket{op="read",le="+Inf"} 4\n'
        'demo_seconds_sum{op="read"} 3.85\n'
        'demo_seconds_count{op="read"} 4\n'
    )
    parsed = parse_exposition(registry.render())
    assert sample(parsed, "demo_requests_total", path="/x\ny", code="500") == 2.5


def test_registry_shares_families_and_refuses_conflicts() -> None:
    registry = Registry()
    first = registry.counter("a_total", "A.", ("x",))
    assert registry.counter("a_total", "A again.", ("x",)) is first
    with pytest.raises(ValueError, match="another kind or labels"):
        registry.gauge("a_total", "A.", ("x",))
    with pytest.raises(ValueError, match="another kind or labels"):
        registry.counter("a_total", "A.", ("y",))
    registry.histogram("h", "H.")
    with pytest.raises(ValueError, match="collides"):
        registry.counter("h_count", "C.")
    for bad in ("1abc", "a-b", ""):
        with pytest.raises(ValueError, match="invalid metric name"):
            registry.counter(bad, "bad")
    with pytest.raises(ValueError, match="invalid label name"):
        registry.counter("b_total", "B.", ("__reserved",))
    with pytest.raises(ValueError, match="'le'"):
        registry.histogram("c", "C.", ("le",))
    with pytest.raises(ValueError, match="takes the labels"):
        first.labels(y="1")
    with pytest.raises(ValueError, match="has labels"):
        first.inc()
    with pytest.raises(ValueError, match="only increase"):
        first.labels("1").inc(-1)


def test_collect_hooks_run_before_rendering_and_failures_are_skipped() -> None:
    registry = Registry()
    gauge = registry.gauge("g", "G.")
    calls = []

    def broken() -> None:
        raise RuntimeError("boom")

    registry.add_collect_hook(broken)
    registry.add_collect_hook(lambda: (calls.append(1), gauge.set(len(calls)))[1])
    assert "g 1\n" in registry.render()
    assert "g 2\n" in registry.render()


def test_concurrent_updates_are_not_lost() -> None:
    registry = Registry()
    counter = registry.counter("c_total", "C.", ("t",))
    histogram = registry.histogram("h_seconds", "H.")

    def work(name: str) -> None:
        for i in range(5_000):
            counter.labels(name if i % 2 else "shared").inc()
            histogram.observe(0.001 * (i % 7))

    threads = [threading.Thread(target=work, args=(f"t{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    parsed = parse_exposition(registry.render())
    assert sample(parsed, "c_total", t="shared") == 8 * 2_500
    assert sum(sample(parsed, "c_total", t=f"t{n}") for n in range(8)) == 8 * 2_500
    assert sample(parsed, "h_seconds_count") == 40_000
    assert sample(parsed, "h_seconds_bucket", le="+Inf") == 40_000


# --- the wrappers, on stand-ins -----------------------------------------------------------------------


class _Stub:
    def __init__(self, outcome: Any, gate: threading.Event | None = None) -> None:
        self.outcome, self.gate, self.entered = outcome, gate, threading.Event()

    def export(self, signal: str, request: Any, tenant: str) -> ExportResult:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        result: ExportResult = self.outcome
        return result


def test_instrumented_pipeline_counts_outcomes_and_in_flight_exports() -> None:
    registry = Registry()
    for outcome in (
        ExportResult(),
        ExportResult(rejected=3, error_message="bad"),
        PermanentError("bad data"),
        RetryableError("db down"),
        KeyError("bug"),
    ):
        pipeline = InstrumentedPipeline(_Stub(outcome), registry)
        if isinstance(outcome, ExportResult):
            assert pipeline.export("logs", object(), "default") is outcome
        else:
            with pytest.raises(type(outcome)):
                pipeline.export("logs", object(), "default")
    gate = threading.Event()
    stub = _Stub(ExportResult(), gate)
    blocked = threading.Thread(target=InstrumentedPipeline(stub, registry).export, args=("traces", None, "t"))
    blocked.start()
    assert stub.entered.wait(10)
    assert sample(parse_exposition(registry.render()), "tokenscale_exports_in_flight") == 1
    gate.set()
    blocked.join(10)
    parsed = parse_exposition(registry.render())
    assert sample(parsed, "tokenscale_exports_in_flight") == 0
    logs = {"signal": "logs", "transport": "grpc"}
    assert sample(parsed, "tokenscale_exports_received_total", **logs) == 5
    assert sample(parsed, "tokenscale_exports_received_total", signal="traces", transport="grpc") == 1
    assert sample(parsed, "tokenscale_export_items_rejected_total", **logs) == 3
    for reason in ("invalid", "unavailable", "internal"):
        assert sample(parsed, "tokenscale_exports_rejected_total", **logs, reason=reason) == 1
    assert sample(parsed, "tokenscale_export_duration_seconds_count", **logs) == 5


# --- against a real receiver and database ---------------------------------------------------------------


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    with background_loop() as event_loop:
        yield event_loop


@contextlib.contextmanager
def observed_receiver(
    url: str, loop: asyncio.AbstractEventLoop, pool: ConnectionPool | None = None
) -> Iterator[tuple[Receiver, Registry]]:
    """A receiver wired as ``tokenscale serve`` should be: instrumented, with the health routes."""
    own = pool is None
    pool = open_pool(url) if pool is None else pool
    registry = Registry()
    try:
        writer = InstrumentedWriter(UsageWriter(pool), registry)
        pipeline = InstrumentedPipeline(ExportPipeline(writer), registry)
        receiver = Receiver(pipeline, host="127.0.0.1", grpc_port=0, http_port=0)
        receiver.http_app.add_middleware(HttpTransportMiddleware, registry=registry)
        receiver.http_app.router.routes.extend(create_health_routes(pool, registry, readiness_timeout=2))
        run(loop, receiver.start())
        try:
            yield receiver, registry
        finally:
            run(loop, receiver.stop())
    finally:
        if own:
            pool.close()


def fetch(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["content-type"], exc.read().decode()


def _negative_point_request() -> ExportMetricsServiceRequest:
    """A Claude Code token metric with one valid and one negative (rejected) point."""
    now = time.time_ns()
    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    name = resource.resource.attributes.add()
    name.key, name.value.string_value = "service.name", "claude-code"
    metric = resource.scope_metrics.add().metrics.add()
    metric.name = "claude_code.token.usage"
    metric.sum.aggregation_temporality = 1  # DELTA
    metric.sum.is_monotonic = True
    for kind, value in (("output", 7.0), ("input", -5.0)):
        point = metric.sum.data_points.add()
        point.start_time_unix_nano, point.time_unix_nano, point.as_double = now - 10**9, now, value
        for key, text in (("type", kind), ("model", "claude-sonnet-4-5"), ("session.id", "s-neg")):
            attribute = point.attributes.add()
            attribute.key, attribute.value.string_value = key, text
    return request


def test_metrics_of_a_real_receiver(db_url: str, loop: asyncio.AbstractEventLoop) -> None:
    migrate(db_url)
    mapped = {"events": 0, "activity": 0, "cumulative": 0}

    def expect(signal: Any, body: bytes, content_type: str = "application/x-protobuf") -> None:
        result = map_request(signal, decode_request(signal, body, content_type), "default")
        mapped["events"] += len(result.events)
        mapped["activity"] += len(result.activity)
        mapped["cumulative"] += len(result.cumulative)

    with observed_receiver(db_url, loop) as (receiver, _):
        sent_grpc: dict[str, int] = {}
        for signal, raw, _ in capture_bodies("claude-tools-grpc"):
            grpc_export(receiver.grpc_port, signal, raw.read_bytes())
            expect(signal, raw.read_bytes())
            sent_grpc[signal] = sent_grpc.get(signal, 0) + 1
        sent_http: dict[str, int] = {}
        for signal, raw, meta in capture_bodies("gemini-http"):
            expect(signal, raw.read_bytes(), str(meta["content_type"]))
            status, _, _ = post(
                receiver.http_port, f"/v1/{signal}", raw.read_bytes(), str(meta["content_type"])
            )
            assert status == 200
            sent_http[signal] = sent_http.get(signal, 0) + 1
        status, _, _ = post(receiver.http_port, "/v1/logs", b"\x0a\xff\xff", "application/x-protobuf")
        assert status == 400  # refused while decoding: never reaches the pipeline
        negative = _negative_point_request().SerializeToString()
        expect("metrics", negative)
        response = grpc_export(receiver.grpc_port, "metrics", negative)
        assert response.partial_success.rejected_data_points == 1

        status, content_type, text = fetch(receiver.http_port, "/metrics")
        assert status == 200 and content_type == CONTENT_TYPE
        parsed = parse_exposition(text)
        with psycopg.connect(db_url) as conn:
            events = conn.execute("SELECT count(*) FROM tokenscale.usage_events").fetchone()
            activity = conn.execute("SELECT count(*) FROM tokenscale.activity_events").fetchone()
        assert events is not None and activity is not None

    received = "tokenscale_exports_received_total"
    for signal, count in sent_grpc.items():
        expected = count + (signal == "metrics")
        assert sample(parsed, received, signal=signal, transport="grpc") == expected, signal
    for signal, count in sent_http.items():
        assert sample(parsed, received, signal=signal, transport="http") == count, signal
    assert sample(parsed, received, signal="logs", transport="http") == sent_http["logs"]  # not the bad one
    assert sample(parsed, "tokenscale_export_items_rejected_total", signal="metrics", transport="grpc") == 1
    assert not any(name == "tokenscale_exports_rejected_total" for name, _ in parsed)
    # What the writer was handed (first deliveries only: nothing was retried), as the mapping says.
    assert sample(parsed, "tokenscale_rows_written_total", table="usage_events") == mapped["events"] > 0
    assert sample(parsed, "tokenscale_rows_written_total", table="activity_events") == mapped["activity"] > 0
    assert sample(parsed, "tokenscale_cumulative_points_total") == mapped["cumulative"] > 0
    # Cumulative points become at most one row each.
    assert mapped["events"] + mapped["activity"] <= events[0] + activity[0]
    assert events[0] + activity[0] <= mapped["events"] + mapped["activity"] + mapped["cumulative"]
    writes = sum(sample(parsed, "tokenscale_write_duration_seconds_count", signal=s) for s in sent_grpc)
    assert 0 < writes <= sum(sent_grpc.values()) + sum(sent_http.values()) + 1
    assert sample(parsed, "tokenscale_exports_in_flight") == 0
    assert sample(parsed, "tokenscale_http_responses_total", route="/v1/logs", code="400") == 1
    assert (
        sample(parsed, "tokenscale_http_responses_total", route="/v1/traces", code="200")
        == sent_http["traces"]
    )
    assert sample(parsed, "tokenscale_db_pool_connections") >= 1
    total = sample(parsed, "tokenscale_export_duration_seconds_count", signal="logs", transport="grpc")
    assert total == sent_grpc["logs"]


def test_healthz_and_readyz(db_url: str, loop: asyncio.AbstractEventLoop) -> None:
    shipped = max(m.version for m in available_migrations())
    assert expected_schema_version() == shipped
    with observed_receiver(db_url, loop) as (receiver, _):
        port = receiver.http_port
        assert fetch(port, "/healthz")[::2] == (200, "ok")

        status, _, body = fetch(port, "/readyz")
        assert status == 503 and "not created" in json.loads(body)["reason"]

        migrate(db_url)
        status, content_type, body = fetch(port, "/readyz")
        assert (status, content_type) == (200, "application/json")
        assert json.loads(body) == {
            "status": "ready",
            "schema_version": shipped,
            "expected_schema_version": shipped,
        }

        with psycopg.connect(db_url) as conn:
            conn.execute("DELETE FROM tokenscale.schema_migrations WHERE version = %s", (shipped,))
        status, _, body = fetch(port, "/readyz")
        assert status == 503 and "is behind" in json.loads(body)["reason"]

        with psycopg.connect(db_url) as conn:
            conn.execute(
                "INSERT INTO tokenscale.schema_migrations (version, name, backend) "
                "SELECT %s, 'future', backend FROM tokenscale.schema_migrations LIMIT 1",
                (shipped + 100,),
            )
        status, _, body = fetch(port, "/readyz")
        assert status == 503 and "ahead of" in json.loads(body)["reason"]


def test_readyz_when_the_database_is_unreachable(db_url: str, loop: asyncio.AbstractEventLoop) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    dead = ConnectionPool(
        f"postgresql://nobody@127.0.0.1:{dead_port}/nothing",
        min_size=1,
        open=False,
        kwargs={"connect_timeout": 1},
        reconnect_timeout=1,
    )
    dead.open(wait=False)
    try:
        ready, body = readiness(dead, 1, timeout=1)
        assert not ready and body["reason"].startswith("database unavailable")
        with observed_receiver(db_url, loop, pool=dead) as (receiver, _):
            status, _, text = fetch(receiver.http_port, "/readyz")
            assert status == 503 and json.loads(text)["status"] == "not ready"
            assert fetch(receiver.http_port, "/healthz")[0] == 200
            assert fetch(receiver.http_port, "/metrics")[0] == 200
    finally:
        dead.close()
