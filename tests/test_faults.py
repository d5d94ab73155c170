"""Faults on real servers: a 20 s database outage under load from the real OpenTelemetry SDK
exporters (default settings; gRPC and HTTP; API keys on and off) loses and doubles nothing, and
every export is answered within 5 s; a silent database is answered within the export timeout; a
partition dropped by retention does not fail the exports into its day."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from dbservers import FAST_SETTINGS, Server, fresh_database
from hostile import Sender, semconv_span, spans_export
from otlp_clients import background_loop, running
from tokenscale.auth import AuthPolicy, KeyCache, create_key
from tokenscale.embedded import EmbeddedPostgres, free_port
from tokenscale.pipeline import ExportPipeline
from tokenscale.receiver.spool import Spool
from tokenscale.store import migrate
from tokenscale.store.backend import Backend
from tokenscale.store.retention import enforce_retention
from tokenscale.store.writer import UsageWriter, open_pool

pytestmark = pytest.mark.slow

OUTAGE_SECONDS = 20.0
ANSWER_BOUND_SECONDS = 5.0


class _Timed:
    """Wraps a real OTLP span exporter (default settings): records each export's result and time."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.calls: list[tuple[float, SpanExportResult, int]] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        started = time.monotonic()
        result = self.exporter.export(spans)
        self.calls.append((time.monotonic() - started, result, len(spans)))
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


@pytest.fixture
def own_server() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of this test's own, on a fixed port, to stop and start again."""
    data_dir = Path(tempfile.mkdtemp(prefix="tokenscale-fault-"))
    pg = EmbeddedPostgres(data_dir, port=free_port(), settings=FAST_SETTINGS)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _usage_attributes(i: int) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 1,
        "gen_ai.usage.output_tokens": 2,
        "session.id": f"s{i % 7}",
    }


@pytest.mark.parametrize("auth_on", [False, True], ids=["auth-off", "auth-on"])
def test_database_outage_under_sdk_load_loses_and_doubles_nothing(
    own_server: EmbeddedPostgres, auth_on: bool
) -> None:
    url = own_server.conninfo
    migrate(url)
    headers: dict[str, str] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE tokenscale.usage_events")
        if auth_on:
            headers = {"authorization": f"Bearer {create_key(conn, 'acme', ['ingest'])}"}
    tenant = "acme" if auth_on else "default"
    spool_dir = Path(tempfile.mkdtemp(prefix="tokenscale-spool-"))
    pool = open_pool(url, connect_timeout=2)
    spool = Spool(spool_dir)
    pipeline = ExportPipeline(UsageWriter(pool, timeout=2.0), spool=spool)
    options: dict[str, Any] = {}
    if auth_on:
        options["tenant_for"] = AuthPolicy(pool, cache=KeyCache(), timeout=1.0).tenant_for
    sent = 0
    try:
        with background_loop() as loop, running(loop, pipeline, **options) as receiver:
            spool.start(pipeline.replay, interval=0.5)
            exporters = [
                _Timed(
                    GrpcSpanExporter(
                        endpoint=f"127.0.0.1:{receiver.grpc_port}", insecure=True, headers=headers
                    )
                ),
                _Timed(
                    HttpSpanExporter(
                        endpoint=f"http://127.0.0.1:{receiver.http_port}/v1/traces", headers=headers
                    )
                ),
            ]
            providers = []
            for name, exporter in zip(("fault-grpc", "fault-http"), exporters, strict=True):
                provider = TracerProvider(resource=Resource.create({"service.name": name}))
                provider.add_span_processor(BatchSpanProcessor(exporter))  # type: ignore[arg-type]
                providers.append(provider)
            tracers = [p.get_tracer("fault") for p in providers]

            def load(seconds: float) -> None:
                nonlocal sent
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    for tracer in tracers:
                        tracer.start_span("chat gpt-4o", attributes=_usage_attributes(sent)).end()
                        sent += 1
                    time.sleep(0.04)

            load(4)
            for provider in providers:  # the keys have been seen: the receiver may vouch for them
                provider.force_flush(30_000)
            own_server.stop()  # the outage: every connection is closed, new ones refused
            outage_started = time.monotonic()
            load(OUTAGE_SECONDS)
            own_server.start()
            outage = time.monotonic() - outage_started
            load(4)
            for provider in providers:
                provider.force_flush(30_000)
                provider.shutdown()
            deadline = time.monotonic() + 60
            while spool.pending and time.monotonic() < deadline:
                time.sleep(0.2)
            spool.stop()
            pending = spool.pending
    finally:
        pool.close()
        shutil.rmtree(spool_dir, ignore_errors=True)

    assert outage >= OUTAGE_SECONDS
    calls = [call for exporter in exporters for call in exporter.calls]
    assert all(result is SpanExportResult.SUCCESS for _, result, _ in calls), calls
    assert sum(count for _, _, count in calls) == sent
    slowest = max(duration for duration, _, _ in calls)
    print(f"spans {sent}, exports {len(calls)}, slowest answer {slowest:.2f} s, spooled {spool.spooled}")
    print(sorted(round(d, 2) for d, _, _ in calls))
    assert slowest < ANSWER_BOUND_SECONDS, slowest
    assert spool.spooled > 0
    assert pending == 0
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT count(*), sum(input_tokens), sum(output_tokens), count(DISTINCT dedupe_key) "
            "FROM tokenscale.usage_events WHERE tenant = %s",
            (tenant,),
        ).fetchone()
    assert rows == (sent, sent, 2 * sent, sent)


def _silent_port() -> tuple[socket.socket, int]:
    """A listening socket nobody accepts from: connections open, and nothing is ever answered."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener, listener.getsockname()[1]


def test_a_silent_database_is_answered_unavailable_within_the_export_timeout() -> None:
    listener, port = _silent_port()
    url = f"postgresql://tokenscale@127.0.0.1:{port}/tokenscale"
    pool = open_pool(url, connect_timeout=2)
    try:
        auth = AuthPolicy(pool, cache=KeyCache(), timeout=2.0)
        with background_loop() as loop:
            for options in ({}, {"tenant_for": auth.tenant_for}):
                with running(
                    loop, ExportPipeline(UsageWriter(pool, timeout=2.0)), export_timeout=2.0, **options
                ) as r:
                    sender = Sender(r.grpc_port, r.http_port, {"authorization": "Bearer tsk_" + "x" * 43})
                    document = spans_export([semconv_span({})])
                    answers = sender.every_transport("traces", document)
                    while True:
                        started = time.monotonic()
                        try:
                            transport, code, _ = next(answers)
                        except StopIteration:
                            break
                        took = time.monotonic() - started
                        assert code in (503, grpc.StatusCode.UNAVAILABLE), (transport, code)
                        assert took < 3.0, (transport, took)
                    sender.close()
    finally:
        pool.close()
        listener.close()


def test_export_into_a_day_whose_partition_retention_dropped(pg_server: Server) -> None:
    with fresh_database(pg_server) as url:
        migrate(url)
        pool = open_pool(url)
        try:
            pipeline = ExportPipeline(UsageWriter(pool))
            day = datetime.now(UTC) - timedelta(days=3)
            time_ns = int(day.timestamp()) * 10**9

            def export(session: str) -> None:
                from hostile import to_protobuf  # noqa: PLC0415
                from tokenscale.otlp import REQUEST_TYPES  # noqa: PLC0415

                body = to_protobuf(
                    "traces", spans_export([semconv_span({"session.id": session}, time_ns=time_ns)])
                )
                result = pipeline.export("traces", REQUEST_TYPES["traces"].FromString(body))
                assert result.rejected == 0

            export("before")
            with psycopg.connect(url, autocommit=True) as conn:
                assert enforce_retention(conn, Backend.POSTGRES, 1) == 1
            export("after")  # the writer still believes the day's partition exists
            with psycopg.connect(url) as conn:
                assert conn.execute(
                    "SELECT session_id FROM tokenscale.usage_events ORDER BY session_id"
                ).fetchall() == [("after",)]
        finally:
            pool.close()
