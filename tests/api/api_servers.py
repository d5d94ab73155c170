"""The usage API served for real in tests: uvicorn and grpc.aio on free loopback ports, in a thread."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterable
from typing import Any

import grpc
import psycopg
import requests
import uvicorn
from psycopg_pool import ConnectionPool
from starlette.applications import Starlette

from tokenscale.api import UsageApiService, UsageApiServicer, create_api_routes
from tokenscale.api.budgets import set_budget
from tokenscale.api.gen.tokenscale.v1 import usage_api_pb2_grpc
from tokenscale.auth import AuthPolicy, KeyCache, create_key
from tokenscale.dashboard import create_dashboard_routes
from tokenscale.mapping import MappingResult, UsageEvent
from tokenscale.store.writer import UsageWriter

__all__ = ["ApiServers"]


class ApiServers:
    """Both transports of one :class:`UsageApiService`, started on ``127.0.0.1`` port 0.

    ``http(method, path, key=..., **kwargs)`` and ``stub`` are real clients (requests, grpc).
    """

    def __init__(self, url: str, *, allow_anonymous: bool = False) -> None:
        self.url = url
        self.pool = ConnectionPool(url, min_size=1, max_size=4, open=True, kwargs={"autocommit": False})
        self.pool.wait(timeout=30)
        self.writer = UsageWriter(self.pool)
        self.cache = KeyCache(ttl=0.5)
        self.auth = AuthPolicy(self.pool, allow_anonymous=allow_anonymous, cache=self.cache)
        self.service = UsageApiService(self.pool, self.auth, self.writer)
        self.http_port = 0
        self.grpc_port = 0
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="api-servers", daemon=True)
        self._channel: grpc.Channel | None = None
        self.session = requests.Session()

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> ApiServers:
        """Serve until :meth:`stop`; raises what prevented starting."""
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the API servers did not start within 30 s")
        if self._error is not None:
            raise self._error
        self._channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.stub = usage_api_pb2_grpc.UsageApiStub(self._channel)
        return self

    def stop(self) -> None:
        """Stop both servers, the client channel and the pool (a second call does nothing)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
        self.session.close()
        self.pool.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # As `tokenscale serve` composes them: the dashboard's API is in the same OpenAPI document.
        app = Starlette(
            routes=[*create_api_routes(self.service), *create_dashboard_routes(self.pool, auth=self.auth)]
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.http_port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
        http_server = uvicorn.Server(config)
        grpc_server = grpc.aio.server()
        UsageApiServicer(self.service).add_to_server(grpc_server)
        self.grpc_port = grpc_server.add_insecure_port("127.0.0.1:0")
        await grpc_server.start()
        task = asyncio.create_task(http_server.serve(sockets=[sock]))
        try:
            while not http_server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            self._started.set()
            await self._stop.wait()
        finally:
            http_server.should_exit = True
            await asyncio.wait([task], timeout=10)
            await grpc_server.stop(None)

    # --- clients and data ---------------------------------------------------------------------------

    @property
    def base(self) -> str:
        """The HTTP base URL."""
        return f"http://127.0.0.1:{self.http_port}"

    def http(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> requests.Response:
        """One HTTP request, with ``Authorization: Bearer key`` when a key is given."""
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.session.request(method, self.base + path, headers=headers, timeout=30, **kwargs)

    @staticmethod
    def metadata(key: str | None) -> list[tuple[str, str]]:
        """gRPC call metadata carrying ``key``."""
        return [] if key is None else [("authorization", f"Bearer {key}")]

    def key(self, tenant: str, scopes: Iterable[str] = ("ingest", "read"), name: str = "") -> str:
        """A new API key's secret."""
        with psycopg.connect(self.url) as conn:
            return create_key(conn, tenant, scopes, name)

    def budget(self, tenant: str, token_limit: int, window_days: int) -> None:
        """Set a tenant's budget."""
        with psycopg.connect(self.url) as conn:
            set_budget(conn, tenant, token_limit, window_days)

    def write(self, events: Iterable[UsageEvent]) -> None:
        """Store usage events exactly as an OTLP export does (UsageWriter, one transaction)."""
        self.writer.write(MappingResult(events=list(events)))

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Rows of one query on a new connection."""
        with psycopg.connect(self.url) as conn:
            return conn.execute(sql.encode(), params).fetchall()  # type: ignore[arg-type]
