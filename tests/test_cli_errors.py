"""One clear line, not a traceback, for a port in use, a port out of range, a malformed database
URL and a database host that never answers."""

from __future__ import annotations

import socket
import time

import pytest

from dbservers import Server, fresh_database
from tokenscale.cli import main


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("tokenscale:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serve", "--grpc-port", "70000"], "setting 'grpc_port': 70000 is not a TCP port (0-65535"),
        (["serve", "--http-port", "-1"], "setting 'http_port': -1 is not a TCP port"),
        (["status", "--database-url", "notaurl"], "setting 'database_url': not a PostgreSQL URL"),
        (["status", "--database-url", "mysql://x/y"], "setting 'database_url': unsupported scheme 'mysql'"),
    ],
)
def test_bad_settings_are_one_line(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOKENSCALE_CONFIG", raising=False)
    assert main(argv) == 2
    assert expected in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("flag", ["--grpc-port", "--http-port"])
def test_a_port_in_use_is_named_with_the_way_out(
    pg_server: Server, flag: str, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    busy = socket.create_server(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    other = "--http-port" if flag == "--grpc-port" else "--grpc-port"
    try:
        with fresh_database(pg_server) as url:
            code = main(["serve", "--database-url", url, flag, str(port), other, "0"])
    finally:
        busy.close()
    assert code == 1
    line = _one_line(capsys.readouterr().err)
    what = "OTLP/gRPC" if flag == "--grpc-port" else "OTLP/HTTP"
    assert f"cannot bind the {what} port {port} on 127.0.0.1: it is already in use" in line
    assert f"{flag} 0 for a free one" in line


def test_a_silent_database_host_is_reported_within_the_connect_timeout(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    monkeypatch.setenv("TOKENSCALE_CONNECT_TIMEOUT", "2")
    try:
        started = time.monotonic()
        code = main(["status", "--database-url", f"postgresql://x@127.0.0.1:{listener.getsockname()[1]}/db"])
        took = time.monotonic() - started
    finally:
        listener.close()
    assert code == 1
    assert "database unavailable" in _one_line(capsys.readouterr().err)
    assert took < 6, took
