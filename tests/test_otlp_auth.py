"""OTLP with API keys: each key's exports land in its own tenant; no key, a bad key or a key without
the ingest scope is refused, over gRPC and HTTP, by the receiver as ``tokenscale serve`` assembles it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import psycopg
import pytest

from ground_truth import capture_bodies
from otlp_clients import background_loop, grpc_export, post, running
from tokenscale.auth import AuthPolicy, create_key
from tokenscale.pipeline import ExportPipeline
from tokenscale.receiver.server import Receiver
from tokenscale.store import migrate
from tokenscale.store.writer import UsageWriter, open_pool
from usage_db import daily_by_model, expected_daily


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    with background_loop() as event_loop:
        yield event_loop


@pytest.fixture
def secured(db_url: str, loop: asyncio.AbstractEventLoop) -> Iterator[tuple[Receiver, dict[str, str]]]:
    migrate(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        keys = {
            "acme": create_key(conn, "acme", ["ingest"]),
            "globex": create_key(conn, "globex", ["ingest", "read"]),
            "acme_read_only": create_key(conn, "acme", ["read"]),
        }
    pool = open_pool(db_url)
    try:
        auth = AuthPolicy.for_bind(pool, "127.0.0.1", require_auth=True)
        with running(loop, ExportPipeline(UsageWriter(pool)), tenant_for=auth.tenant_for) as receiver:
            yield receiver, keys
    finally:
        pool.close()


def _bodies(label: str) -> list[tuple[str, bytes]]:
    return [(signal, raw.read_bytes()) for signal, raw, _ in capture_bodies(label)]


def test_each_key_exports_into_its_own_tenant(secured: tuple[Receiver, dict[str, str]], db_url: str) -> None:
    receiver, keys = secured
    for signal, body in _bodies("claude-grpc"):
        grpc_export(receiver.grpc_port, signal, body, metadata=[("authorization", f"Bearer {keys['acme']}")])
    for signal, body in _bodies("gemini-grpc"):
        status, _, answer = post(
            receiver.http_port,
            f"/v1/{signal}",
            body,
            "application/x-protobuf",
            headers={"Authorization": f"Bearer {keys['globex']}"},
        )
        assert status == 200, answer
    assert daily_by_model(db_url, tenant="acme") == expected_daily("claude-grpc")
    assert daily_by_model(db_url, tenant="globex") == expected_daily("gemini-grpc")
    assert daily_by_model(db_url, tenant="default") == {}


@pytest.mark.parametrize(
    ("key", "grpc_code", "http_status"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED, 401),
        ("tsk_not_a_real_key", grpc.StatusCode.UNAUTHENTICATED, 401),
        ("acme_read_only", grpc.StatusCode.PERMISSION_DENIED, 403),
    ],
)
def test_refused_exports_store_nothing(
    secured: tuple[Receiver, dict[str, str]],
    db_url: str,
    key: str | None,
    grpc_code: grpc.StatusCode,
    http_status: int,
) -> None:
    receiver, keys = secured
    token = keys.get(key or "", key)
    signal, body = _bodies("claude-grpc")[0]
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with pytest.raises(grpc.RpcError) as raised:
        grpc_export(receiver.grpc_port, signal, body, metadata=metadata)
    assert raised.value.code() == grpc_code
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, _, _ = post(receiver.http_port, f"/v1/{signal}", body, "application/x-protobuf", headers=headers)
    assert status == http_status
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM tokenscale.usage_events").fetchone() == (0,)
