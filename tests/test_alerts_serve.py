"""Budget alerts in ``tokenscale serve``: two service processes on one database, usage over real OTLP
(the OpenTelemetry SDK's gRPC exporter), a local webhook receiver that fails twice: each crossing is
delivered exactly once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import psycopg
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from test_alerts import WebhookReceiver
from tokenscale.alerts import add_webhook
from tokenscale.api.scoped_budgets import BudgetWindow, create_budget
from tokenscale.store import migrate

USER = "dev@example.com"


@contextmanager
def serve(url: str) -> Iterator[tuple[int, list[str]]]:
    """``tokenscale serve`` (one process) on ``url`` with alerts every half second: its gRPC port and log."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tokenscale.cli",
            "serve",
            "--database-url",
            url,
            "--grpc-port",
            "0",
            "--http-port",
            "0",
        ],
        env={
            **os.environ,
            "TOKENSCALE_LOG_LEVEL": "info",
            "TOKENSCALE_ALERT_INTERVAL_SECONDS": "0.5",
            "TOKENSCALE_ALERT_RETRY_SECONDS": "0.3",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        port = None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if found := re.search(r"gRPC port (\d+), HTTP port (\d+)", line):
                port = int(found[1])
            if "ready;" in line or not line:
                break
        assert port is not None and "ready;" in "".join(lines), "".join(lines)

        def drain() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)

        threading.Thread(target=drain, daemon=True).start()
        yield port, lines
    finally:
        process.terminate()
        process.wait(30)


def send(port: int, tokens: list[int]) -> None:
    """One span per request, as an app instrumented with the GenAI conventions exports them."""
    provider = TracerProvider(resource=Resource.create({"service.name": "alerts-test"}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"localhost:{port}", insecure=True))
    )
    tracer = provider.get_tracer("alerts-test")
    for n in tokens:
        with tracer.start_as_current_span("chat gpt-4o-mini") as span:
            span.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.usage.input_tokens": n,
                    "gen_ai.usage.output_tokens": 0,
                    "user.email": USER,
                }
            )
    provider.shutdown()


def wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_two_serve_processes_deliver_each_crossing_once(db_url: str) -> None:
    migrate(db_url)
    hook = WebhookReceiver(fail_first=2)
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            budget = create_budget(
                conn, "default", "user", USER, [BudgetWindow("tokens", Decimal(5000), 3600)]
            )
            add_webhook(conn, "default", hook.url, "json")
        with serve(db_url) as (port_a, log_a), serve(db_url) as (_, log_b):
            send(port_a, [1000, 1000, 1000])  # 3,000 of 5,000: 60%
            wait_for(lambda: len(hook.requests) == 1)
            send(port_a, [1000, 1100])  # 5,100: 102%
            wait_for(lambda: len(hook.requests) == 2)
            time.sleep(3)  # both processes evaluate about six more times: nothing new
            assert len(hook.requests) == 2
        bodies = [body for _, body in hook.requests]
        assert [(b["threshold"], b["used"], b["budgetId"], b["tenant"]) for b in bodies] == [
            (50, 3000, budget.id, "default"),
            (100, 5100, budget.id, "default"),
        ]
        assert bodies[1]["message"].endswith("the budget is spent. Also crossed: 80%.")
        assert hook.answered == [500, 500, 200, 200]
        logs = "".join(log_a) + "".join(log_b)
        assert logs.count("failed (attempt 1 of 8), retrying") == 1, logs
        assert logs.count("failed (attempt 2 of 8), retrying") == 1, logs
    finally:
        hook.stop()
