"""``tokenscale serve --workers N``: N receiver processes sharing the OTLP ports (SO_REUSEPORT).

Decoding, mapping and row encoding are Python and hold the GIL, so one process uses about one core.
With ``workers`` > 1 the ``serve`` process (the *supervisor*) resolves the database, migrates and
applies the policies once (see :func:`tokenscale.cli._cmd_serve`), picks concrete ports, then starts N
worker processes (``spawn``: nothing is forked after gRPC is loaded). Each worker composes the whole
service as a single-process ``serve`` does (its own database pools, writer, metrics) and binds both
ports with SO_REUSEPORT; the kernel spreads incoming connections over the workers. Only worker 1 runs
the hourly retention task.

The supervisor holds no database connection and serves nothing itself. On SIGTERM or SIGINT it
stops the workers with SIGTERM (each lets its in-flight exports finish) and returns 0. A worker that
exits on its own is logged, the others are stopped, and ``serve`` exits 1 (a supervisor such as
systemd or Kubernetes restarts the service; restarting single workers here would hide a crash loop).
A worker whose supervisor disappears (SIGKILL) stops by itself: it watches its pipe to the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, Final

from tokenscale import __version__
from tokenscale.config import Settings
from tokenscale.errors import TokenscaleError

__all__ = ["STARTUP_TIMEOUT_SECONDS", "STOP_TIMEOUT_SECONDS", "reserve_port", "serve_workers"]

log = logging.getLogger("tokenscale")

#: How long the supervisor waits for every worker to be serving.
STARTUP_TIMEOUT_SECONDS: Final = 120.0
#: How long the supervisor waits for the workers to exit after SIGTERM (the receiver's grace period
#: for in-flight exports is 5 s) before it kills them.
STOP_TIMEOUT_SECONDS: Final = 30.0
_STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def reserve_port(host: str, port: int, what: str) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT (port 0: a free port), not listening.

    Workers bind the same port with SO_REUSEPORT while it is held; the caller closes it once they
    are serving. The port is first bound without SO_REUSEPORT, so that a port in use by anything
    (another ``serve --workers`` of the same user included) is an error rather than silently shared.
    """
    from tokenscale.receiver.server import _bind_tcp  # noqa: PLC0415

    try:
        probe = _bind_tcp(host, port)
        chosen = int(probe.getsockname()[1])
        probe.close()
        return _bind_tcp(host, chosen, reuse_port=True)
    except OSError as exc:
        raise TokenscaleError(f"cannot bind the {what} port {host}:{port}: {exc.strerror or exc}") from exc


def serve_workers(settings: Settings, url: str, backend: Any) -> int:
    """Serve with ``settings.workers`` worker processes on ``url`` (migrated) until SIGINT/SIGTERM.

    Returns the exit status: 0 after a requested stop, 1 when a worker failed."""
    reservations: list[socket.socket] = []
    try:
        reservations.append(reserve_port(settings.host, settings.grpc_port, "OTLP/gRPC"))
        reservations.append(reserve_port(settings.host, settings.http_port, "OTLP/HTTP"))
        ports = dataclasses.replace(
            settings,
            grpc_port=int(reservations[0].getsockname()[1]),
            http_port=int(reservations[1].getsockname()[1]),
        )
        return _Supervisor(ports, url, str(backend), reservations).run()
    finally:
        for sock in reservations:
            sock.close()


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    control: Connection
    pid: int = 0
    ready: bool = False


class _Supervisor:
    def __init__(self, settings: Settings, url: str, backend: str, reservations: list[socket.socket]) -> None:
        self.settings = settings
        self.url = url
        self.backend = backend
        self.reservations = reservations
        self.workers: list[_Worker] = []
        self.stopping = False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"\0")

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        try:
            ok = self._start() and self._watch()
            return 0 if self._stop() and ok else 1
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for worker in self.workers:
                worker.control.close()
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _start(self) -> bool:
        """Start every worker and wait until each serves; False when one failed (or timed out)."""
        spawn = multiprocessing.get_context("spawn")
        n = self.settings.workers
        log.info("starting %d worker processes", n)
        for index in range(1, n + 1):
            parent_end, child_end = spawn.Pipe()
            process = spawn.Process(
                target=_worker_main,
                args=(index, self.settings, self.url, self.backend, child_end),
                name=f"tokenscale-worker-{index}",
            )
            process.start()
            child_end.close()
            self.workers.append(_Worker(index, process, parent_end))
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not self.stopping and not all(w.ready for w in self.workers):
            left = deadline - time.monotonic()
            if left <= 0:
                waiting = ", ".join(str(w.index) for w in self.workers if not w.ready)
                log.error("worker(s) %s not serving after %.0f s; stopping", waiting, STARTUP_TIMEOUT_SECONDS)
                return False
            pending = [w.control for w in self.workers if not w.ready]
            wait([*pending, *(w.process.sentinel for w in self.workers), self._wake_read], timeout=left)
            for worker in self.workers:
                if not worker.ready and worker.control.poll():
                    with contextlib.suppress(EOFError, OSError):
                        _, worker.pid = worker.control.recv()
                        worker.ready = True
                if not worker.process.is_alive() and not self.stopping:
                    self._report_exit(worker, "while starting")
                    return False
        if self.stopping:
            return True
        for sock in self.reservations:  # every worker has bound both ports now
            sock.close()
        log.info(
            "%d workers (pids %s) serving OTLP on %s: gRPC port %d, HTTP port %d (shared, SO_REUSEPORT)",
            len(self.workers),
            ", ".join(str(w.pid) for w in self.workers),
            self.settings.host,
            self.settings.grpc_port,
            self.settings.http_port,
        )
        from tokenscale.cli import dashboard_url  # noqa: PLC0415 - cli imports this module lazily

        log.info(
            "dashboard at %s (HTTP API docs at /docs)",
            dashboard_url(self.settings.host, self.settings.http_port),
        )
        log.info("tokenscale %s ready; press Ctrl-C to stop", __version__)
        return True

    def _watch(self) -> bool:
        """Wait for a stop signal (True) or a worker's exit (False)."""
        while not self.stopping:
            wait([*(w.process.sentinel for w in self.workers), self._wake_read])
            if self.stopping:
                break
            for worker in self.workers:
                if not worker.process.is_alive():
                    self._report_exit(worker, "unexpectedly")
                    return False
        return True

    def _report_exit(self, worker: _Worker, when: str) -> None:
        log.error(
            "worker %d (pid %s) exited %s with status %s; stopping the others",
            worker.index,
            worker.process.pid,
            when,
            worker.process.exitcode,
        )

    def _stop(self) -> bool:
        """SIGTERM every live worker and wait for them (killed after the timeout); True if all exited 0."""
        log.info("shutting down %d worker processes", sum(w.process.is_alive() for w in self.workers))
        running = [w for w in self.workers if w.process.is_alive()]
        for worker in running:
            with contextlib.suppress(ProcessLookupError):
                worker.process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        clean = True
        for worker in running:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.error("worker %d (pid %s) did not stop; killing it", worker.index, worker.process.pid)
                worker.process.kill()
                worker.process.join()
                clean = False
            elif worker.process.exitcode != 0:
                log.error("worker %d exited with status %s", worker.index, worker.process.exitcode)
                clean = False
        for worker in self.workers:
            worker.process.join()  # reaps the ones that had exited already
        log.info("all workers stopped")
        return clean


# -- a worker process -------------------------------------------------------------------------------


def _worker_main(index: int, settings: Settings, url: str, backend_name: str, control: Connection) -> None:
    """One worker: the whole ``serve`` composition on SO_REUSEPORT sockets, until SIGTERM/SIGINT."""
    early_stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        early_stop.set()  # before the event loop takes the signals over

    for sig in _STOP_SIGNALS:
        signal.signal(sig, on_signal)
    from tokenscale import cli  # noqa: PLC0415
    from tokenscale.store.backend import Backend  # noqa: PLC0415

    cli._configure_logging(settings, worker=index)
    try:
        with cli._service(settings, url, Backend(backend_name), worker=index) as (receiver, retention):
            asyncio.run(_serve_worker(receiver, retention, control, early_stop))
    except Exception:
        log.exception("worker %d failed", index)
        raise SystemExit(1) from None


async def _serve_worker(
    receiver: Any,
    retention: Callable[[], Coroutine[Any, Any, None]] | None,
    control: Connection,
    early_stop: threading.Event,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    if early_stop.is_set():
        stop.set()
    await receiver.start()
    task = asyncio.create_task(retention()) if retention is not None else None
    control.send(("serving", os.getpid()))

    def watch_supervisor() -> None:
        # The supervisor never writes again: end of file means it is gone.
        with contextlib.suppress(EOFError, OSError):
            control.recv()
        log.warning("the supervisor process is gone; stopping")
        with contextlib.suppress(RuntimeError):  # the loop may be closed already
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_supervisor, name="tokenscale-supervisor-watch", daemon=True).start()
    await stop.wait()
    log.info("shutting down")
    if task is not None:
        task.cancel()
    await receiver.stop()
