"""An export with a bad API key is refused before its body is read, over gRPC and HTTP: the answer
arrives while the client has not sent the body yet."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import grpc
import pytest

from otlp_clients import GRPC_METHODS, RESPONSES, background_loop, running
from tokenscale.auth import AuthPolicy
from tokenscale.pipeline import ExportPipeline
from tokenscale.receiver.server import Receiver
from tokenscale.store import migrate
from tokenscale.store.writer import UsageWriter, open_pool


@pytest.fixture
def secured(db_url: str) -> Iterator[Receiver]:
    migrate(db_url)
    pool = open_pool(db_url)
    try:
        auth = AuthPolicy.for_bind(pool, "127.0.0.1", require_auth=True)
        with (
            background_loop() as loop,
            running(loop, ExportPipeline(UsageWriter(pool)), tenant_for=auth.tenant_for) as r,
        ):
            yield r
    finally:
        pool.close()


@pytest.mark.parametrize("db_server", ["postgres"], indirect=True)
def test_grpc_refuses_a_bad_key_before_the_message_is_sent(secured: Receiver) -> None:
    release = threading.Event()

    def message() -> Iterator[bytes]:
        release.wait(20)  # the message is held back until the answer has arrived
        yield b"\x0a\x00"

    with grpc.insecure_channel(f"127.0.0.1:{secured.grpc_port}") as channel:
        call = channel.stream_unary(
            GRPC_METHODS["traces"], response_deserializer=RESPONSES["traces"].FromString
        )
        future = call.future(message(), timeout=30, metadata=(("authorization", "Bearer tsk_nope"),))
        try:
            error = future.exception(timeout=10)
        finally:
            release.set()
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("db_server", ["postgres"], indirect=True)
def test_http_refuses_a_bad_key_before_the_body_is_sent(secured: Receiver) -> None:
    with socket.create_connection(("127.0.0.1", secured.http_port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Authorization: Bearer tsk_nope\r\nContent-Length: 50000000\r\n\r\n"
        )
        answer = sock.recv(200)
    assert answer.startswith(b"HTTP/1.1 401 ")
