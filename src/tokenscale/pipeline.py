"""One export handler per signal, shared by the gRPC and HTTP transports.

transport -> decode (:mod:`tokenscale.otlp`) -> pure mapping (:mod:`tokenscale.mapping`) -> batched
write (:mod:`tokenscale.store`) -> aggregate (in the database).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from tokenscale.mapping import MappingOptions, map_request
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


_NS_PER_DAY: Final = 86_400 * 10**9


def _reject_older(result: MappingResult, late_data_days: int, now_ns: int) -> None:
    """Reject the usage and activity in ``result`` older than the late-data horizon (one item per
    row or cumulative point), with a partial-success message naming the horizon."""
    cutoff = now_ns - late_data_days * _NS_PER_DAY
    events = [e for e in result.events if e.time_ns >= cutoff]
    activity = [a for a in result.activity if a.time_ns >= cutoff]
    cumulative = [p for p in result.cumulative if p.time_ns >= cutoff]
    old = (
        len(result.events) - len(events)
        + len(result.activity) - len(activity)
        + len(result.cumulative) - len(cumulative)
    )  # fmt: skip
    if old:
        result.events, result.activity, result.cumulative = events, activity, cumulative
        since = datetime.fromtimestamp(cutoff / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        result.reject(
            f"{old} item(s) older than the late-data horizon of {late_data_days} days "
            f"(before {since}; setting late_data_days)",
            old,
        )


class ExportPipeline:
    """Maps an export request and commits its rows before the export is acknowledged.

    With ``late_data_days``, usage older than that many days is rejected (partial success)."""

    def __init__(
        self,
        writer: ResultWriter,
        options: MappingOptions | None = None,
        *,
        late_data_days: int | None = None,
    ) -> None:
        self._writer = writer
        self._options = options or MappingOptions()
        self._late_data_days = late_data_days

    def export(self, signal: Signal, request: Any, tenant: str = DEFAULT_TENANT) -> ExportResult:
        """Handle one decoded ``Export*ServiceRequest``. Blocking: call it from a worker thread.

        An export with nothing to store succeeds without touching the database.
        """
        result = map_request(signal, request, tenant, self._options)
        if self._late_data_days is not None:
            _reject_older(result, self._late_data_days, time.time_ns())
        if result.events or result.activity or result.cumulative:
            self._writer.write(result)
        return ExportResult(result.rejected, result.error_message)
