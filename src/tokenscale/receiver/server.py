"""The OTLP receiver: grpc.aio and an embedded uvicorn serving the HTTP app, in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

from tokenscale.errors import TokenscaleError
from tokenscale.receiver._export import (
    DEFAULT_EXPORT_TIMEOUT,
    DEFAULT_MAX_CONCURRENT_EXPORTS,
    DEFAULT_MAX_INFLIGHT_BYTES,
    Admission,
    ExportHandler,
    TenantResolver,
    default_tenant_for,
)
from tokenscale.receiver.errors import DEFAULT_RETRY_AFTER_SECONDS
from tokenscale.receiver.grpc_server import create_grpc_server
from tokenscale.receiver.http_app import DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY_BYTES, create_http_app

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HOST",
    "DEFAULT_HTTP_PORT",
    "PortError",
    "Receiver",
]

logger = logging.getLogger("tokenscale.receiver")

DEFAULT_HOST = "127.0.0.1"
#: The OTLP default ports (OTLP spec, "OTLP/gRPC" and "OTLP/HTTP" sections).
DEFAULT_GRPC_PORT = 4317
DEFAULT_HTTP_PORT = 4318
#: How long :meth:`Receiver.stop` lets in-flight exports finish.
DEFAULT_GRACE_SECONDS = 5.0
#: Seconds a new (or kept-alive) HTTP connection may take to send a request's headers.
DEFAULT_HEADER_TIMEOUT = 10.0
#: Open HTTP connections per process; beyond it new ones are closed at once.
DEFAULT_MAX_CONNECTIONS = 4096


def _guarded_protocol(header_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header read timeout and a connection limit.

    uvicorn times out idle kept-alive connections only after a response; a connection that never
    sends a request, or sends its headers slowly, would stay open forever and hold a descriptor.
    """

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _waiting_cycle: Any = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                logger.warning("more than %d HTTP connections open: closing a new one", max_connections)
                transport.close()
                return
            self._await_headers()

        def _await_headers(self) -> None:
            if self._header_timer is None:
                self._waiting_cycle = self.cycle
                self._header_timer = self.loop.call_later(header_timeout, self._header_timeout)

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.cycle is self._waiting_cycle and not self.transport.is_closing():
                logger.debug("closing an HTTP connection that sent no request within %g s", header_timeout)
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self._await_headers()  # the next request is on its way: its headers have a deadline
            super().data_received(data)
            if self._header_timer is not None and self.cycle is not self._waiting_cycle:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

    return GuardedH11Protocol


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to whoever owns the event loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # the name older uvicorn releases call
        return


class Receiver:
    """Serves OTLP over gRPC and HTTP on one event loop, handing every export to ``pipeline``.

    Port 0 picks a free port; after :meth:`start` the chosen ones are in :attr:`grpc_port` and
    :attr:`http_port`. ``tenant_for`` is the single tenant resolver both transports use.
    :attr:`http_app` may be given more routes before :meth:`start`. ``reuse_port`` binds both ports
    with SO_REUSEPORT so that several processes (``tokenscale serve --workers N``) share them; off,
    a port already in use is an error.
    """

    def __init__(
        self,
        pipeline: ExportHandler,
        host: str = DEFAULT_HOST,
        grpc_port: int = DEFAULT_GRPC_PORT,
        http_port: int = DEFAULT_HTTP_PORT,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        *,
        tenant_for: TenantResolver = default_tenant_for,
        retry_after: int = DEFAULT_RETRY_AFTER_SECONDS,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        grpc_services: Sequence[Callable[[grpc.aio.Server], None]] = (),
        reuse_port: bool = False,
        export_timeout: float = DEFAULT_EXPORT_TIMEOUT,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_concurrent_exports: int = DEFAULT_MAX_CONCURRENT_EXPORTS,
        max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
    ) -> None:
        self.pipeline = pipeline
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.max_body_bytes = max_body_bytes
        self.tenant_for = tenant_for
        self.retry_after = retry_after
        self.grace_seconds = grace_seconds
        self.reuse_port = reuse_port
        #: More gRPC services for the same server (each adds itself, e.g. tokenscale's own API).
        self.grpc_services = list(grpc_services)
        self.export_timeout = export_timeout
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        #: The one admission control both transports share.
        self.admission = Admission(max_concurrent_exports, max_inflight_bytes, retry_after=1)
        self.http_app: Starlette = create_http_app(
            pipeline,
            tenant_for=tenant_for,
            max_body_bytes=max_body_bytes,
            retry_after=retry_after,
            export_timeout=export_timeout,
            body_timeout=body_timeout,
            admission=self.admission,
        )
        self._grpc_server: grpc.aio.Server | None = None
        self._http_server: _EmbeddedServer | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._stopped: asyncio.Event | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._serving = False

    @property
    def started(self) -> bool:
        """Whether the receiver is serving (started and not yet stopped)."""
        return self._serving and self._stopped is not None and not self._stopped.is_set()

    async def start(self) -> None:
        """Bind both ports and start serving; a bind failure raises after undoing what started."""
        if self._stopped is not None:
            raise RuntimeError("a Receiver can be started only once")
        self._stopped = asyncio.Event()
        try:
            await self._start_grpc()
            await self._start_http()
        except BaseException:
            await self._shutdown()
            raise
        self._serving = True
        logger.info(
            "OTLP receiver listening on %s: gRPC port %d, HTTP port %d",
            self.host,
            self.grpc_port,
            self.http_port,
        )

    async def _start_grpc(self) -> None:
        server = create_grpc_server(
            self.pipeline,
            tenant_for=self.tenant_for,
            max_message_bytes=self.max_body_bytes,
            retry_after=self.retry_after,
            reuse_port=self.reuse_port,
            export_timeout=self.export_timeout,
            admission=self.admission,
        )
        for add_service in self.grpc_services:
            add_service(server)
        self._grpc_server = server
        address = _grpc_address(self.host, self.grpc_port)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError:  # grpcio raises RuntimeError, older releases return 0
            port = 0
        if not port:
            raise PortError(
                "OTLP/gRPC",
                "--grpc-port",
                self.host,
                self.grpc_port,
                _bind_problem(self.host, self.grpc_port),
            )
        self.grpc_port = port
        await server.start()

    async def _start_http(self) -> None:
        # Binding here, not in uvicorn, turns a busy port into an OSError instead of sys.exit().
        try:
            sock = _bind_tcp(self.host, self.http_port, reuse_port=self.reuse_port)
        except OSError as exc:
            raise PortError("OTLP/HTTP", "--http-port", self.host, self.http_port, exc) from exc
        self.http_port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.http_app,
            log_config=None,  # the embedding application owns logging
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=max(1, round(self.grace_seconds)),
            http=_guarded_protocol(self.header_timeout, self.max_connections),
        )
        server = _EmbeddedServer(config)
        self._http_server = server
        self._http_task = asyncio.create_task(_serve_http(server, sock), name="tokenscale-otlp-http")
        while not server.started:
            if self._http_task.done():
                sock.close()
                self._http_task.result()  # raises what stopped it
                raise RuntimeError("the OTLP/HTTP server stopped while starting")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stop accepting exports, let in-flight ones finish (up to the grace period), release ports.

        Harmless when never started or already stopped; concurrent calls wait for the same shutdown.
        """
        if self._stopped is None or self._stopped.is_set():
            return
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._shutdown())
        await asyncio.shield(self._stopping)

    async def _shutdown(self) -> None:
        try:
            await asyncio.gather(self._stop_http(), self._stop_grpc())
        finally:
            if self._stopped is not None:
                self._stopped.set()
            logger.info("OTLP receiver stopped")

    async def _stop_http(self) -> None:
        server, task = self._http_server, self._http_task
        if server is None or task is None:
            return
        server.should_exit = True
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            logger.error("the OTLP/HTTP server failed", exc_info=task.exception())

    async def _stop_grpc(self) -> None:
        if self._grpc_server is not None:
            await self._grpc_server.stop(self.grace_seconds)

    async def serve_forever(self) -> None:
        """Start if needed, serve until :meth:`stop` is called or the task is cancelled, then stop."""
        if self._stopped is None:
            await self.start()
        assert self._stopped is not None and self._http_task is not None
        stopped = asyncio.create_task(self._stopped.wait())
        try:
            # Also wake up if uvicorn ends on its own, so that a dead HTTP side is not left unnoticed.
            await asyncio.wait([stopped, self._http_task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            await self.stop()


async def _serve_http(server: uvicorn.Server, sock: socket.socket) -> None:
    """Run uvicorn on ``sock``; its ``sys.exit()`` (a failed app startup) would stop the whole loop."""
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:
        raise RuntimeError(f"the OTLP/HTTP server failed to start (exit status {exc.code})") from None


class PortError(TokenscaleError, OSError):
    """A port cannot be bound; the one-line message names it and what to do."""

    def __init__(self, what: str, flag: str, host: str, port: int, problem: OSError | None) -> None:
        if problem is not None and problem.errno == errno.EADDRINUSE:
            reason = "it is already in use (another tokenscale, or an OpenTelemetry Collector?)"
        elif problem is not None and problem.errno == errno.EACCES:
            reason = "permission denied (ports below 1024 need privileges)"
        elif problem is not None:
            reason = problem.strerror or str(problem)
        else:
            reason = "the address cannot be bound"
        super().__init__(
            f"cannot bind the {what} port {port} on {host or 'every interface'}: {reason}; "
            f"choose another with {flag} N, or {flag} 0 for a free one"
        )


def _bind_problem(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be bound, found by binding it (gRPC does not say)."""
    try:
        _bind_tcp(host, port).close()
    except OSError as exc:
        return exc
    return None


def _grpc_address(host: str, port: int) -> str:
    """A gRPC bind address; IPv6 literals need brackets, an empty host means every interface."""
    if not host:
        return f"[::]:{port}"
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _bind_tcp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening-ready TCP socket bound to ``host:port`` (port 0 picks a free one), with
    SO_REUSEPORT when ``reuse_port`` (other processes of the same user may then bind it too)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock
