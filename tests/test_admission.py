"""Admission control on a real receiver process: 50 concurrent 42 MB exports keep its peak RSS under
the documented bound (docs/operations.md) and the excess is answered 429 / RESOURCE_EXHAUSTED before
it is parsed; 1,100 idle connections do not stop /healthz or exports."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest

from dbservers import Server, fresh_database
from hostile import semconv_span, spans_export, to_protobuf
from otlp_clients import GRPC_METHODS, RESPONSES
from tokenscale.store import migrate

pytestmark = pytest.mark.slow

#: The documented bound on a receiver process's peak RSS under this load (docs/operations.md).
RSS_BOUND_MB = 1024
EXPORTS = 50
SPANS = 9_000

_SERVER = """
import asyncio, sys
from tokenscale.pipeline import ExportPipeline
from tokenscale.receiver.server import Receiver
from tokenscale.store.writer import UsageWriter, open_pool

async def main() -> None:
    pool = open_pool(sys.argv[1])
    receiver = Receiver(ExportPipeline(UsageWriter(pool)), grpc_port=0, http_port=0, header_timeout=2.0)
    await receiver.start()
    print(receiver.grpc_port, receiver.http_port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await receiver.stop()
    pool.close()
    with open("/proc/self/status") as status:
        print(next(line for line in status if line.startswith("VmHWM")), flush=True)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def receiver_process(pg_server: Server) -> Iterator[tuple[subprocess.Popen[str], int, int, str]]:
    with fresh_database(pg_server) as url:
        migrate(url)
        process = subprocess.Popen(
            [sys.executable, "-c", _SERVER, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert process.stdout is not None
        grpc_port, http_port = map(int, process.stdout.readline().split())
        try:
            yield process, grpc_port, http_port, url
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(30)


def _big_export() -> bytes:
    """~42 MB of spans, each with usage and a 4 KB content attribute (dropped by the mapping)."""
    blob = "m" * 4_500
    spans = [
        semconv_span({"session.id": f"big-{i % 50}", "gen_ai.input.messages": blob}, span_id=f"{i + 1:016x}")
        for i in range(SPANS)
    ]
    return to_protobuf("traces", spans_export(spans))


def _rss_peak_mb(process: subprocess.Popen[str]) -> float:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()
    line = process.stdout.read()
    process.wait(60)
    kb = int(line.split("VmHWM:")[1].split()[0])
    return kb / 1024


def test_idle_connections_do_not_stop_healthz_or_exports(
    receiver_process: tuple[subprocess.Popen[str], int, int, str],
) -> None:
    _, grpc_port, http_port, _ = receiver_process
    idle = []
    for port in (http_port,) * 1_100:
        sock = socket.create_connection(("127.0.0.1", port))
        idle.append(sock)
    half = [socket.create_connection(("127.0.0.1", http_port)) for _ in range(20)]
    for sock in half:
        sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    try:
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        connection.close()
        body = to_protobuf("traces", spans_export([semconv_span({"session.id": "idle-test"})]))
        connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        connection.request(
            "POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"}
        )
        assert connection.getresponse().status == 200
        connection.close()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            call = channel.unary_unary(
                GRPC_METHODS["traces"], response_deserializer=RESPONSES["traces"].FromString
            )
            call(body, timeout=10)
        assert time.monotonic() - started < 5
        # The header timeout (2 s here) closes connections that send no complete request.
        time.sleep(3)
        closed = 0
        for sock in idle[:50] + half:
            sock.settimeout(2)
            try:
                closed += sock.recv(1) == b""
            except (ConnectionResetError, TimeoutError):
                closed += 0
        assert closed == 70
    finally:
        for sock in idle + half:
            sock.close()


def test_concurrent_large_exports_are_bounded(
    receiver_process: tuple[subprocess.Popen[str], int, int, str],
) -> None:
    process, grpc_port, http_port, url = receiver_process
    body = _big_export()
    assert 40 * 2**20 < len(body) < 46 * 2**20
    answers: list[Any] = []
    lock = threading.Lock()
    start = threading.Barrier(EXPORTS)

    def over_http() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=120)
        start.wait()
        try:
            connection.request(
                "POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"}
            )
            response = connection.getresponse()
            answer: Any = (response.status, response.getheader("Retry-After"))
            response.read()
        except (ConnectionResetError, BrokenPipeError):  # refused before the whole body was sent
            answer = ("reset", None)
        finally:
            connection.close()
        with lock:
            answers.append(answer)

    def over_grpc() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            call = channel.unary_unary(
                GRPC_METHODS["traces"], response_deserializer=RESPONSES["traces"].FromString
            )
            start.wait()
            try:
                call(body, timeout=120)
                answer: Any = (grpc.StatusCode.OK, None)
            except grpc.RpcError as exc:
                trailers = dict(exc.trailing_metadata() or ())
                answer = (exc.code(), "google.rpc.retryinfo-bin" in trailers)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=over_http if i % 2 else over_grpc) for i in range(EXPORTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert len(answers) == EXPORTS
    accepted = [a for a in answers if a[0] in (200, grpc.StatusCode.OK)]
    refused = [a for a in answers if a not in accepted]
    assert accepted, answers
    assert refused, answers
    for code, hint in refused:
        assert (code, hint) in ((429, "1"), (grpc.StatusCode.RESOURCE_EXHAUSTED, True), ("reset", None)), (
            answers
        )
    with psycopg.connect(url) as conn:
        stored = conn.execute(
            "SELECT count(*), count(DISTINCT dedupe_key) FROM tokenscale.usage_events "
            "WHERE session_id LIKE 'big-%'"
        ).fetchone()
    assert stored == (SPANS, SPANS)
    peak = _rss_peak_mb(process)
    print(f"peak RSS {peak:.0f} MB; accepted {len(accepted)}, refused {len(refused)}")
    assert peak < RSS_BOUND_MB, peak
