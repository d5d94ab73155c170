"""One export handler per signal, shared by the gRPC and HTTP transports.

transport -> decode (:mod:`tokenscale.otlp`) -> pure mapping (:mod:`tokenscale.mapping`) -> batched
write (:mod:`tokenscale.store`) -> aggregate (in the database).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from tokenscale.errors import RetryableError
from tokenscale.mapping import MappingOptions, map_request
from tokenscale.mapping.limits import DEFAULT_LIMITS, Limits, enforce_limits
from tokenscale.mapping.model import MappingResult, Signal

__all__ = ["DEFAULT_TENANT", "ExportPipeline", "ExportResult", "ExportSpool", "ResultWriter", "is_poison"]

log = logging.getLogger("tokenscale.pipeline")

#: After the database failed an export, how long further exports go straight to the spool (unless a
#: replay from the spool succeeds first).
_DOWN_SECONDS: Final = 5.0

#: SQLSTATE classes of data the database will never take, however often it is retried: 22 data
#: exception (a value out of range, an invalid byte), 54 program limit exceeded (an index row too large).
POISON_SQLSTATE_CLASSES: Final = ("22", "54")


def is_poison(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) is the database refusing the data itself, not an outage."""
    for candidate in (exc, exc.__cause__):
        sqlstate = getattr(candidate, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate[:2] in POISON_SQLSTATE_CLASSES:
            return True
    return False


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


class ExportSpool(Protocol):
    """Keeps exports the database cannot take now (:class:`tokenscale.receiver.spool.Spool`)."""

    def put(self, signal: Signal, tenant: str, request: Any) -> bool: ...


_NS_PER_DAY: Final = 86_400 * 10**9


def _reject_older(result: MappingResult, late_data_days: int, now_ns: int) -> None:
    """Reject the usage and activity in ``result`` older than the late-data horizon (one item per
    row or cumulative point), with a partial-success message naming the horizon."""
    cutoff = now_ns - late_data_days * _NS_PER_DAY
    events = [e for e in result.events if e.time_ns >= cutoff]
    activity = [a for a in result.activity if a.time_ns >= cutoff]
    cumulative = [p for p in result.cumulative if p.time_ns >= cutoff]
    listed = [e for e in result.listed if e.time_ns >= cutoff]
    old = (
        len(result.events) - len(events)
        + len(result.activity) - len(activity)
        + len(result.cumulative) - len(cumulative)
        + len(result.listed) - len(listed)
    )  # fmt: skip
    if old:
        result.events, result.activity, result.cumulative = events, activity, cumulative
        result.listed = listed
        since = datetime.fromtimestamp(cutoff / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        result.reject(
            f"{old} item(s) older than the late-data horizon of {late_data_days} days "
            f"(before {since}; setting late_data_days)",
            old,
        )


def _carried_by(writer: ResultWriter, options: MappingOptions, limits: Limits) -> MappingOptions:
    """``options`` with the attributes an event carries narrowed to what ``writer`` needs of them
    (its ``carried()``, where it says; :attr:`MappingOptions.carried`), unless they already say."""
    carried = getattr(writer, "carried", None)
    if options.carried is not None or not callable(carried):
        return options
    predicate = carried()
    if predicate is None:
        return options
    return dataclasses.replace(options, carried=predicate, carry_all_above=limits.max_attributes)


class ExportPipeline:
    """Maps an export request and commits its rows before the export is acknowledged.

    With a ``spool``, an export the database cannot take now (an outage, not bad data) is kept in
    the spool instead, durably, and acknowledged; the spool replays it through :meth:`replay`. With
    ``late_data_days``, usage older than that many days is rejected (partial success).
    """

    def __init__(
        self,
        writer: ResultWriter,
        options: MappingOptions | None = None,
        limits: Limits = DEFAULT_LIMITS,
        spool: ExportSpool | None = None,
        *,
        late_data_days: int | None = None,
    ) -> None:
        self._writer = writer
        self._options = _carried_by(writer, options or MappingOptions(), limits)
        self._limits = limits
        self.spool = spool
        self._down_until = 0.0
        self._late_data_days = late_data_days

    def _map(self, signal: Signal, request: Any, tenant: str) -> MappingResult:
        result = enforce_limits(map_request(signal, request, tenant, self._options), self._limits)
        if self._late_data_days is not None:
            _reject_older(result, self._late_data_days, time.time_ns())
        return result

    def export(self, signal: Signal, request: Any, tenant: str = DEFAULT_TENANT) -> ExportResult:
        """Handle one decoded ``Export*ServiceRequest``. Blocking: call it from a worker thread.

        Items the database could not store as they are (see :mod:`tokenscale.mapping.limits`) are
        rejected, naming the field. An export with nothing to store succeeds without touching the
        database.
        """
        result = self._map(signal, request, tenant)
        if result.has_rows:
            # The database failed a moment ago: spool at once rather than wait for it again (an export
            # after a few seconds tries it again; a successful replay from the spool ends this).
            if (
                self.spool is not None
                and time.monotonic() < self._down_until
                and self.spool.put(signal, tenant, request)
            ):
                return ExportResult(result.rejected, result.error_message)
            try:
                self._writer.write(result)
            except RetryableError as exc:
                if not is_poison(exc):
                    self._down_until = time.monotonic() + _DOWN_SECONDS
                if (
                    self.spool is None
                    or is_poison(exc)
                    or not self.spool.put(signal, request=request, tenant=tenant)
                ):
                    raise
                log.warning("database unavailable (%s): export kept in the outage spool", exc)
        return ExportResult(result.rejected, result.error_message)

    def replay(self, signal: Signal, request: Any, tenant: str) -> ExportResult:
        """:meth:`export` without the spool: for exports the spool hands back."""
        result = self._map(signal, request, tenant)
        if result.has_rows:
            self._writer.write(result)
            self._down_until = 0.0  # the database is back
        return ExportResult(result.rejected, result.error_message)
