"""The ``tokenscale`` command as a user runs it: serve on the embedded default, migrate, status."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tokenscale.cli import main
from tokenscale.config import ConfigError, load_settings


def _serve(data_dir: Path) -> tuple[subprocess.Popen[str], int, str]:
    env = {**os.environ, "TOKENSCALE_DATA_DIR": str(data_dir), "TOKENSCALE_GRPC_PORT": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenscale.cli", "serve", "--http-port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    log = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        log += line
        if "ready" in line or process.poll() is not None:
            break
    ports = re.search(r"gRPC port (\d+), HTTP port (\d+)", log)
    found = re.search(r"listening at (\S+) \(password in (\S+)\)", log)
    assert ports and found, log
    password = Path(found[2]).read_text().strip()
    return process, int(ports[1]), f"postgresql://tokenscale:{password}@{found[1]}/tokenscale"


def test_serve_on_the_embedded_default_records_sdk_usage(server_tmp_path: Path) -> None:
    process, grpc_port, url = _serve(server_tmp_path)
    try:
        provider = TracerProvider(resource=Resource.create({"service.name": "cli-test"}))
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True))
        )
        with provider.get_tracer("t").start_as_current_span("chat gpt-4o-mini") as span:
            span.set_attributes(
                {
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.usage.input_tokens": 1234,
                    "gen_ai.usage.output_tokens": 56,
                    "user.email": "cli@example.com",
                }
            )
        provider.shutdown()
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT tool, user_email, model, requests, input_tokens, output_tokens "
                "FROM tokenscale.usage_daily"
            ).fetchone()
        assert row == ("cli-test", "cli@example.com", "gpt-4o-mini", 1, 1234, 56)
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    with pytest.raises(psycopg.OperationalError):  # the embedded server stopped with the service
        psycopg.connect(url, connect_timeout=2)

    # A second start reuses the cluster: the data is still there.
    process, _, url = _serve(server_tmp_path)
    try:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT sum(input_tokens) FROM tokenscale.usage_daily").fetchone() == (1234,)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


def test_migrate_then_status(db_url: str, db_server: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--database-url", db_url]) == 0
    assert main(["status", "--database-url", db_url]) == 0
    out = capsys.readouterr().out
    assert f"back end:     {db_server.kind}" in out  # type: ignore[attr-defined]
    assert "usage_events: 0 rows" in out


def test_status_before_migrate_says_what_to_do(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--database-url", db_url]) == 1
    assert "run `tokenscale migrate`" in capsys.readouterr().out


def test_unreachable_database_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--database-url", "postgresql://x@127.0.0.1:1/none?connect_timeout=1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tokenscale: database unavailable")


def test_settings_precedence_and_unknown_keys(tmp_path: Path) -> None:
    config = tmp_path / "tokenscale.toml"
    config.write_text('[tokenscale]\nhttp_port = 9000\ngrpc_port = 9001\nhost = "0.0.0.0"\n')
    settings = load_settings(
        {"grpc_port": 9100}, environ={"TOKENSCALE_HTTP_PORT": "9200"}, config_file=config
    )
    assert (settings.host, settings.http_port, settings.grpc_port) == ("0.0.0.0", 9200, 9100)
    config.write_text("[tokenscale]\nhttp_prot = 9000\n")
    with pytest.raises(ConfigError, match="unknown setting 'http_prot'"):
        load_settings(config_file=config, environ={})
    with pytest.raises(ConfigError, match="setting 'grpc_port'"):
        load_settings(environ={"TOKENSCALE_GRPC_PORT": "many"})
    with pytest.raises(ConfigError, match="setting 'log_format'"):
        load_settings(environ={"TOKENSCALE_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError, match="setting 'retention_days'"):
        load_settings(environ={"TOKENSCALE_RETENTION_DAYS": "-1"})


def test_json_logs_are_one_object_per_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENSCALE_LOG_FORMAT", "json")
    main(["status", "--database-url", "postgresql://x@127.0.0.1:1/none?connect_timeout=1"])
    logging.getLogger("tokenscale").warning("hello %s", "world")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    entry = json.loads(lines[-1])
    assert (entry["level"], entry["logger"], entry["message"]) == ("warning", "tokenscale", "hello world")
