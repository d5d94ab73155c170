"""One export handler per signal, shared by the gRPC and HTTP transports.

transport -> decode (:mod:`tokenscale.otlp`) -> pure mapping (:mod:`tokenscale.mapping`) -> batched
write (:mod:`tokenscale.store`) -> aggregate (in the database).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from tokenscale.mapping import MappingOptions, map_request
from tokenscale.mapping.limits import DEFAULT_LIMITS, Limits, enforce_limits
from tokenscale.mapping.model import MappingResult, Signal

__all__ = ["DEFAULT_TENANT", "ExportPipeline", "ExportResult", "ResultWriter"]

#: The tenant of data that arrives without an API key (loopback, auth off).
DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class ExportResult:
    """The OTLP partial-success answer: how many items were rejected, and why."""

    rejected: int = 0
    error_message: str = ""


class ResultWriter(Protocol):
    """Commits a mapping result; raises :class:`tokenscale.errors.RetryableError` when it cannot."""

    def write(self, result: MappingResult) -> None: ...


class ExportPipeline:
    """Maps an export request and commits its rows before the export is acknowledged."""

    def __init__(
        self, writer: ResultWriter, options: MappingOptions | None = None, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self._writer = writer
        self._options = options or MappingOptions()
        self._limits = limits

    def export(self, signal: Signal, request: Any, tenant: str = DEFAULT_TENANT) -> ExportResult:
        """Handle one decoded ``Export*ServiceRequest``. Blocking: call it from a worker thread.

        Items the database could not store as they are (see :mod:`tokenscale.mapping.limits`) are
        rejected, naming the field. An export with nothing to store succeeds without touching the
        database.
        """
        result = enforce_limits(map_request(signal, request, tenant, self._options), self._limits)
        if result.events or result.activity or result.cumulative:
            self._writer.write(result)
        return ExportResult(result.rejected, result.error_message)
