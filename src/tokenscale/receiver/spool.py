"""The outage spool: exports taken while the database is unreachable, kept on disk until it is back.

OpenTelemetry SDKs give an export 10 s in all, retries included, and then drop it; a database outage
longer than that would lose data however quickly it is answered. So an export the database cannot
take now (:class:`~tokenscale.errors.RetryableError`) is written to the spool instead, durably
(written, fsynced, renamed into place), and acknowledged. A replay thread hands spooled exports to
the pipeline again, oldest first, once the database answers; each is deleted only after its rows are
committed. Replaying is safe however often it happens: rows are deduplicated like any retried export.

Each spooled export is one file ``<ns>-<random>.<signal>``: a line holding the tenant, then the
export request's protobuf bytes. Several processes may share a spool directory (``serve --workers``):
a file is replayed under an exclusive lock. The spool is bounded (:attr:`Spool.max_bytes`); when
full, exports are answered UNAVAILABLE again.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from tokenscale.errors import PermanentError, RetryableError
from tokenscale.mapping.model import Signal
from tokenscale.otlp import REQUEST_TYPES
from tokenscale.pipeline import is_poison

__all__ = ["DEFAULT_SPOOL_BYTES", "Spool"]

log = logging.getLogger("tokenscale.spool")

#: The most bytes of spooled exports kept by default (1 GiB).
DEFAULT_SPOOL_BYTES: Final = 1024**3
_SIGNALS: Final = frozenset(REQUEST_TYPES)


class Spool:
    """A directory of exports waiting for the database (see the module docs)."""

    def __init__(self, directory: Path, *, max_bytes: int = DEFAULT_SPOOL_BYTES) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.directory / "failed").mkdir(mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._bytes = sum(path.stat().st_size for path in self._files())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Exports spooled and replayed since start (for tests and logs).
        self.spooled = 0
        self.replayed = 0

    def _files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file() and p.suffix[1:] in _SIGNALS)

    @property
    def pending(self) -> int:
        """Spooled exports not yet replayed."""
        return len(self._files())

    def put(self, signal: Signal, tenant: str, request: Any) -> bool:
        """Keep one export durably; False (nothing kept) when the spool is full or cannot be written."""
        data = request.SerializeToString()
        size = len(data) + len(tenant) + 1
        with self._lock:
            if self._bytes + size > self.max_bytes:
                log.warning("the outage spool is full (%d bytes): answering exports UNAVAILABLE", self._bytes)
                return False
            self._bytes += size
        name = f"{time.time_ns():020d}-{secrets.token_hex(6)}.{signal}"
        temporary = self.directory / f".{name}.tmp"
        try:
            with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
                handle.write(tenant.encode() + b"\n" + data)
                handle.flush()
                os.fsync(handle.fileno())
            temporary.rename(self.directory / name)
        except OSError as exc:
            log.error("cannot write to the outage spool %s: %s", self.directory, exc)
            temporary.unlink(missing_ok=True)
            with self._lock:
                self._bytes -= size
            return False
        self.spooled += 1
        return True

    def replay(self, export: Callable[[Signal, Any, str], object]) -> int:
        """Hand spooled exports to ``export`` oldest first, deleting each once it succeeded; stops at
        the first that the database still cannot take. Returns how many were replayed."""
        done = 0
        for path in self._files():
            try:
                handle = open(path, "rb")  # noqa: SIM115 - held open for its lock
            except FileNotFoundError:
                continue  # another process replayed it
            with handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                if not path.exists():
                    continue
                tenant, _, data = handle.read().partition(b"\n")
                signal: Signal = path.suffix[1:]  # type: ignore[assignment]
                try:
                    request = REQUEST_TYPES[signal].FromString(data)
                    export(signal, request, tenant.decode())
                except RetryableError as exc:
                    if not is_poison(exc):
                        return done
                    log.error(
                        "a spooled export cannot be stored (%s): kept in %s/failed", exc, self.directory
                    )
                    path.rename(self.directory / "failed" / path.name)
                except PermanentError as exc:
                    log.error("a spooled export was refused (%s): kept in %s/failed", exc, self.directory)
                    path.rename(self.directory / "failed" / path.name)
                except Exception:
                    log.exception("replaying a spooled export failed: kept in %s/failed", self.directory)
                    path.rename(self.directory / "failed" / path.name)
                else:
                    path.unlink(missing_ok=True)
                    done += 1
                with self._lock:
                    self._bytes = max(0, self._bytes - len(data) - len(tenant) - 1)
        if done:
            self.replayed += done
            log.info("replayed %d export(s) from the outage spool", done)
        return done

    def start(self, export: Callable[[Signal, Any, str], object], interval: float = 1.0) -> None:
        """Replay in a background thread every ``interval`` s until :meth:`stop`."""
        if self._thread is not None:
            return

        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    self.replay(export)
                except Exception:
                    log.exception("replaying the outage spool failed")

        self._thread = threading.Thread(target=run, name="tokenscale-spool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
