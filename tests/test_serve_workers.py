"""``tokenscale serve --workers N``: several receiver processes sharing the OTLP ports (SO_REUSEPORT).

Everything is real: the service runs as a subprocess against a test database, spans arrive through
the OpenTelemetry SDK's own gRPC and HTTP exporters over many connections, and the totals stored, the
workers' own /metrics and the processes left behind are checked.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter

from dbservers import Server, fresh_database
from tokenscale.config import ConfigError, load_settings
from tokenscale.errors import TokenscaleError
from tokenscale.receiver.server import _bind_tcp
from tokenscale.selfmetrics import Registry
from tokenscale.workers import reserve_port

CONNECTIONS = 12  # per transport: with 2 workers, all on one worker has odds 2 / 2**24 over both
SPANS_PER_CONNECTION = 3


@dataclass
class Service:
    process: subprocess.Popen[str]
    grpc_port: int
    http_port: int
    pids: list[int]
    lines: list[str] = field(default_factory=list)

    @property
    def log(self) -> str:
        return "".join(self.lines)


def _start(url: str, workers: int) -> Service:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tokenscale.cli",
            "serve",
            "--workers",
            str(workers),
            "--database-url",
            url,
            "--grpc-port",
            "0",
            "--http-port",
            "0",
        ],
        env={**os.environ, "TOKENSCALE_LOG_LEVEL": "info"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if "ready;" in line or not line:
            break
    log = "".join(lines)
    served = re.search(
        r"(\d+) workers \(pids ([\d, ]+)\) serving OTLP on .*?gRPC port (\d+), HTTP port (\d+)", log
    )
    if served is None:
        process.kill()
        process.communicate()
        pytest.fail(f"tokenscale serve --workers {workers} did not start:\n{log}")
    service = Service(process, int(served[3]), int(served[4]), [int(p) for p in served[2].split(", ")], lines)
    assert int(served[1]) == workers == len(set(service.pids))

    def drain() -> None:  # keep the pipe from filling up
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)

    threading.Thread(target=drain, daemon=True).start()
    return service


@contextmanager
def serving(url: str, workers: int) -> Iterator[Service]:
    service = _start(url, workers)
    try:
        yield service
    finally:
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait(30)


def _children(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _send(exporter: SpanExporter, first: int) -> None:
    """SPANS_PER_CONNECTION spans through one exporter (one connection), one export each."""
    provider = TracerProvider(resource=Resource.create({"service.name": "workers-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("workers-test")
    for k in range(first, first + SPANS_PER_CONNECTION):
        with tracer.start_as_current_span("chat gpt-4o-mini") as span:
            span.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.usage.input_tokens": 1000 + k,
                    "gen_ai.usage.output_tokens": 10 + k,
                    "user.email": f"user{k % 5}@example.com",
                }
            )
    provider.shutdown()


def _worker_metrics(port: int, pids: list[int]) -> dict[int, dict[str, float]]:
    """Each worker's export counters, by pid: /metrics over new connections until every pid answered."""
    seen: dict[int, dict[str, float]] = {}
    for _ in range(400):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode()
        finally:
            connection.close()
        worker = re.search(r'^tokenscale_worker_info\{worker="(\d+)",pid="(\d+)"\} 1$', text, re.M)
        assert worker is not None, text
        counters = re.findall(
            r'^tokenscale_exports_received_total\{worker="(\d+)",signal="traces",transport="(\w+)"\} (\S+)$',
            text,
            re.M,
        )
        assert {w for w, _, _ in counters} <= {worker[1]}, text
        seen[int(worker[2])] = {transport: float(value) for _, transport, value in counters}
        if set(seen) == set(pids):
            break
    return seen


def test_two_workers_share_the_ports_store_every_span_and_stop_cleanly(db_url: str) -> None:
    with serving(db_url, workers=2) as service:
        children = _children(service.process.pid)
        assert set(service.pids) <= children, (service.pids, children)
        assert service.log.count("OTLP receiver listening on") == 2

        exporters: list[SpanExporter] = []
        for _ in range(CONNECTIONS):
            # A local subchannel pool: each exporter gets a connection of its own (gRPC would share one).
            exporters.append(
                GrpcSpanExporter(
                    endpoint=f"127.0.0.1:{service.grpc_port}",
                    insecure=True,
                    channel_options=(("grpc.use_local_subchannel_pool", 1),),  # type: ignore[arg-type]
                )
            )
            exporters.append(HttpSpanExporter(endpoint=f"http://127.0.0.1:{service.http_port}/v1/traces"))
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(_send, exporters, [c * SPANS_PER_CONNECTION for c in range(len(exporters))]))

        n = len(exporters) * SPANS_PER_CONNECTION
        with psycopg.connect(db_url) as conn:
            events = conn.execute(
                "SELECT count(*), sum(requests), sum(input_tokens), sum(output_tokens), "
                "count(DISTINCT user_email) FROM tokenscale.usage_events"
            ).fetchone()
            daily = conn.execute(
                "SELECT sum(requests), sum(input_tokens), sum(output_tokens) FROM tokenscale.usage_daily"
            ).fetchone()
        input_tokens = sum(1000 + k for k in range(n))
        output_tokens = sum(10 + k for k in range(n))
        assert events == (n, n, input_tokens, output_tokens, 5)
        assert daily == (n, input_tokens, output_tokens)

        # Both workers served exports; their per-process counters add up to every export sent.
        per_worker = _worker_metrics(service.http_port, service.pids)
        assert set(per_worker) == set(service.pids)
        assert all(sum(counts.values()) > 0 for counts in per_worker.values()), per_worker
        for transport in ("grpc", "http"):
            total = sum(counts.get(transport, 0) for counts in per_worker.values())
            assert total == CONNECTIONS * SPANS_PER_CONNECTION, (transport, per_worker)

        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(60) == 0, service.log
    time.sleep(0.2)  # the drain thread reads the last lines
    assert not [pid for pid in children if _alive(pid)], service.log
    assert "all workers stopped" in service.log


def test_a_worker_that_dies_stops_the_service_with_status_1(pg_server: Server) -> None:
    with fresh_database(pg_server) as url, serving(url, workers=2) as service:
        os.kill(service.pids[0], signal.SIGKILL)
        assert service.process.wait(60) == 1
        time.sleep(0.2)
        assert not _alive(service.pids[1])
    assert re.search(rf"worker 1 \(pid {service.pids[0]}\) exited unexpectedly with status -9", service.log)


def test_reserved_ports_are_shared_only_by_reuseport_binds() -> None:
    held = reserve_port("127.0.0.1", 0, "test")
    port = held.getsockname()[1]
    try:
        assert port > 0
        worker = _bind_tcp("127.0.0.1", port, reuse_port=True)  # what each worker does
        worker.listen()
        with pytest.raises(OSError):  # a plain bind (a single-process receiver) is refused
            _bind_tcp("127.0.0.1", port)
        # A port already served, even by another service's SO_REUSEPORT workers, is refused.
        with pytest.raises(TokenscaleError, match=f"cannot bind the OTLP/gRPC port 127.0.0.1:{port}"):
            reserve_port("127.0.0.1", port, "OTLP/gRPC")
        worker.close()
    finally:
        held.close()
    plain = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(TokenscaleError, match="cannot bind the OTLP/HTTP port"):
            reserve_port("127.0.0.1", plain.getsockname()[1], "OTLP/HTTP")
    finally:
        plain.close()


def test_workers_setting() -> None:
    assert load_settings(environ={}).workers == 1
    assert load_settings({"workers": 3}, environ={"TOKENSCALE_WORKERS": "2"}).workers == 3
    assert load_settings(environ={"TOKENSCALE_WORKERS": "2"}).workers == 2
    with pytest.raises(ConfigError, match="setting 'workers': must be at least 1"):
        load_settings(environ={"TOKENSCALE_WORKERS": "0"})


def test_constant_labels_go_first_on_every_sample() -> None:
    registry = Registry(const_labels={"worker": "2"})
    registry.counter("c_total", "C.", ("signal",)).labels("traces").inc(3)
    registry.gauge("g", "G.").set(1.5)
    registry.histogram("h_seconds", "H.", buckets=(1.0,)).observe(0.5)
    samples = [line for line in registry.render().splitlines() if not line.startswith("#")]
    assert samples == [
        'c_total{worker="2",signal="traces"} 3',
        'g{worker="2"} 1.5',
        'h_seconds_bucket{worker="2",le="1"} 1',
        'h_seconds_bucket{worker="2",le="+Inf"} 1',
        'h_seconds_sum{worker="2"} 0.5',
        'h_seconds_count{worker="2"} 1',
    ]
    with pytest.raises(ValueError, match="constant label"):
        registry.counter("d_total", "D.", ("worker",))
