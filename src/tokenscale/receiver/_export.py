"""What both transports share: the export handler they call and the tenant resolver hook."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol, TypeVar

from tokenscale.mapping.model import Signal
from tokenscale.pipeline import DEFAULT_TENANT, ExportResult
from tokenscale.receiver.errors import DeadlineExceededError, OverloadedError

__all__ = [
    "DEFAULT_EXPORT_TIMEOUT",
    "DEFAULT_MAX_CONCURRENT_EXPORTS",
    "DEFAULT_MAX_INFLIGHT_BYTES",
    "SIGNALS",
    "Admission",
    "ExportHandler",
    "TenantResolver",
    "Ticket",
    "call_blocking",
    "default_tenant_for",
    "export_deadline",
    "resolve_tenant",
]

logger = logging.getLogger("tokenscale.receiver")
T = TypeVar("T")

#: The OTLP signals, in the order their services and routes are registered.
SIGNALS: tuple[Signal, ...] = ("metrics", "traces", "logs")

#: Picks the tenant of an export from its request headers (HTTP) or metadata (gRPC); keys are lower
#: case. It may raise :class:`tokenscale.errors.PermanentError` to refuse the export, and it may block
#: (an API key lookup): it is called in a worker thread.
TenantResolver = Callable[[Mapping[str, str]], str]


class ExportHandler(Protocol):
    """The one export handler per signal (:class:`tokenscale.pipeline.ExportPipeline`)."""

    def export(self, signal: Signal, request: Any, tenant: str) -> ExportResult:
        """Store one decoded ``Export*ServiceRequest``; blocking, so it is run in a worker thread."""
        ...


def default_tenant_for(headers: Mapping[str, str]) -> str:
    """Every export belongs to :data:`tokenscale.pipeline.DEFAULT_TENANT` (no API keys yet)."""
    return DEFAULT_TENANT


async def resolve_tenant(
    tenant_for: TenantResolver, headers: Mapping[str, str], deadline: float | None = None
) -> str:
    """The tenant of an export, resolved before its body is read or handed on.

    A resolver may look an API key up in the database, so it runs in a worker thread, given up on
    at ``deadline`` (event loop time; see :func:`call_blocking`); the default one cannot block and
    is called directly.
    """
    if tenant_for is default_tenant_for:
        return DEFAULT_TENANT
    if deadline is None:
        deadline = asyncio.get_running_loop().time() + DEFAULT_EXPORT_TIMEOUT
    return await call_blocking(deadline, tenant_for, headers)


#: Seconds an export may wait for the database (key lookup, then mapping and writing) before it is
#: answered UNAVAILABLE: well within the OpenTelemetry SDKs' default export timeout of 10 s.
DEFAULT_EXPORT_TIMEOUT = 4.0
#: A large export gets one more second of its deadline per this many (decompressed) bytes: mapping
#: it takes time of its own, which the database is not to blame for.
DEADLINE_BYTES_PER_SECOND = 10 * 1024 * 1024


#: gRPC messages read at once (their size is unknown until read).
_UNSIZED_READS = 2


def export_deadline(now: float, timeout: float, size: int) -> float:
    """The event loop time by which an export of ``size`` bytes must be answered."""
    return now + timeout + size / DEADLINE_BYTES_PER_SECOND


#: Exports handled at once per receiver process; more are answered RESOURCE_EXHAUSTED / 429.
DEFAULT_MAX_CONCURRENT_EXPORTS = 16
#: Decompressed request bytes held at once per receiver process (an export alone is always let in).
DEFAULT_MAX_INFLIGHT_BYTES = 64 * 1024 * 1024


async def call_blocking(deadline: float, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a worker thread, given up on at ``deadline`` (event loop time).

    On timeout the call goes on in its thread (a database call cannot be interrupted) and
    :class:`DeadlineExceededError` is raised: the export is answered UNAVAILABLE, and its retry is
    harmless since a write that commits late is deduplicated like any retried export.
    """
    task = asyncio.ensure_future(asyncio.to_thread(function, *args))
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        return await asyncio.wait_for(asyncio.shield(task), max(remaining, 0.0))
    except TimeoutError:
        task.add_done_callback(_late_result)
        raise DeadlineExceededError("the database did not answer in time") from None


def _late_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("an export given up on failed later: %s", task.exception())


class Admission:
    """Bounds the exports a process handles at once and the request bytes they hold.

    Used from the event loop only. :meth:`admit` is called before a body is read: beyond either
    bound it raises :class:`OverloadedError` (RESOURCE_EXHAUSTED / 429 with a retry hint). The
    ticket it returns grows as the body turns out larger (read, then decompressed), and may be
    refused then, still before anything is parsed. An export arriving when nothing else is held is
    always let in, so that no export is too large to ever be admitted.
    """

    def __init__(
        self,
        max_exports: int = DEFAULT_MAX_CONCURRENT_EXPORTS,
        max_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
        retry_after: int = 1,
    ) -> None:
        self.max_exports = max_exports
        self.max_bytes = max_bytes
        self.retry_after = retry_after
        self.exports = 0
        self.bytes = 0
        #: Exports refused since start (for tests and metrics).
        self.refused = 0
        # A gRPC message's size is known only once it is read: so few are read at once.
        self._unsized = asyncio.Semaphore(_UNSIZED_READS)

    @contextlib.asynccontextmanager
    async def unsized_read(self) -> AsyncIterator[None]:
        """Around the read of a body whose size is not known beforehand (a gRPC message): at most
        :data:`_UNSIZED_READS` such reads at once; another is refused at once rather than made to
        wait (gRPC would take in its bytes while it waits)."""
        if self._unsized.locked():
            self.refused += 1
            raise OverloadedError(
                "too many large exports being received at once: retry later", self.retry_after
            )
        await self._unsized.acquire()  # free: returns at once
        try:
            yield
        finally:
            self._unsized.release()

    def admit(self, size: int = 0) -> Ticket:
        """A ticket for one export of (at least) ``size`` bytes, or :class:`OverloadedError`."""
        if self.exports >= self.max_exports:
            self.refused += 1
            raise OverloadedError(
                f"too many exports at once (limit {self.max_exports} per process): retry later",
                self.retry_after,
            )
        ticket = Ticket(self)
        self.exports += 1
        try:
            ticket.hold(size)
        except OverloadedError:
            ticket.release()
            raise
        return ticket


class Ticket:
    """One admitted export's share of an :class:`Admission`; release it when the export is answered."""

    __slots__ = ("_admission", "held", "released")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.held = 0
        self.released = False

    def hold(self, size: int) -> None:
        """Hold ``size`` bytes in all (more than before), or raise :class:`OverloadedError`."""
        extra = size - self.held
        if extra <= 0:
            return
        admission = self._admission
        alone = admission.bytes == self.held
        if not alone and admission.bytes + extra > admission.max_bytes:
            admission.refused += 1
            raise OverloadedError(
                f"too many request bytes in flight (limit {admission.max_bytes} per process): retry later",
                admission.retry_after,
            )
        admission.bytes += extra
        self.held = size

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._admission.exports -= 1
            self._admission.bytes -= self.held
            self.held = 0
