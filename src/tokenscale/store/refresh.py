"""Keeping the continuous aggregates of TimescaleDB community exact: bounded refreshes, the refresher.

On TimescaleDB community ``usage_daily`` and ``usage_hourly`` are continuous aggregates with
real-time aggregation: buckets before the aggregate's watermark are read from what was materialized,
later ones from the raw events. A change to a materialized bucket (late data or an
amendment) shows only once a refresh covers that bucket, so:

- every refresh here is bounded: it ends at the start of the current bucket (today for
  ``usage_daily``, this hour for ``usage_hourly``), never open-ended, so the bucket still being
  written stays real-time; it starts no earlier than the days whose raw events retention may have
  dropped (a refresh over a dropped day would erase its aggregates);
- :class:`Refresher` runs in the service: the writer tells it the time span of every committed
  export, and a few seconds later (well within a minute) it refreshes from that span's first bucket,
  or from the start of the late-data horizon if earlier, to the current bucket. TimescaleDB only
  recomputes the buckets invalidated in that window, so a refresh of unchanged days costs little;
- :func:`materialize_history` (called by ``migrate``) materializes everything stored before,
  so events older than the refresh policies' window are never hidden behind the watermark.

``refresh_continuous_aggregate`` cannot run inside a transaction: these functions need an
autocommit connection, and the refresher uses connections of its own, after the export's commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

__all__ = [
    "AGGREGATES",
    "CommitListener",
    "RefreshWindow",
    "Refresher",
    "materialize_history",
    "plan_refresh",
    "refresh",
    "retention_safe_start",
    "stored_ranges",
    "within_stored",
]

log = logging.getLogger(__name__)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_DAY: Final = timedelta(days=1)

#: Told the time span (first, last: ns since the Unix epoch) of each committed export's usage rows.
CommitListener = Callable[[int, int], None]

#: The continuous aggregates over ``usage_events`` and their bucket widths.
AGGREGATES: Final[tuple[tuple[str, timedelta], ...]] = (
    ("usage_daily", timedelta(days=1)),
    ("usage_hourly", timedelta(hours=1)),
)


@dataclass(frozen=True, slots=True)
class RefreshWindow:
    """One bounded refresh of one continuous aggregate: whole buckets in [start, end)."""

    aggregate: str
    start: datetime
    end: datetime

    def __str__(self) -> str:
        fmt = "%Y-%m-%dT%H:%MZ"
        return f"{self.aggregate} {self.start.strftime(fmt)} .. {self.end.strftime(fmt)}"


def _floor(moment: datetime, width: timedelta) -> datetime:
    """The start of the UTC-aligned bucket of ``width`` holding ``moment`` (time_bucket's origin)."""
    return _EPOCH + (moment - _EPOCH) // width * width


def retention_safe_start(now: datetime, retention_days: int) -> datetime | None:
    """The first UTC day whose raw events retention cannot have dropped (None: no retention).

    A retention policy drops the daily chunks that end before ``now - retention_days``; the day
    after the one holding that moment is safe to refresh, whichever side of it the policy is on.
    """
    if not retention_days:
        return None
    return _floor(now - timedelta(days=retention_days), _DAY) + _DAY


def plan_refresh(
    first: datetime, last: datetime, *, now: datetime, retention_days: int = 0
) -> list[RefreshWindow]:
    """The bounded refreshes that cover every bucket from the one holding ``first`` to the one
    holding ``last``: never the current bucket or later, never a day retention may have dropped."""
    safe = retention_safe_start(now, retention_days)
    windows = []
    for aggregate, width in AGGREGATES:
        start = _floor(first, width)
        if safe is not None:
            start = max(start, safe)
        end = min(_floor(last, width) + width, _floor(now, width))
        if start < end:
            windows.append(RefreshWindow(aggregate, start, end))
    return windows


def refresh(conn: psycopg.Connection[Any], windows: list[RefreshWindow], *, wait: float = 60.0) -> None:
    """Run the refreshes (``conn`` in autocommit mode). TimescaleDB refuses to refresh an aggregate
    while another refresh of it overlaps (a policy's, another process's): each is retried until
    that one is done, for up to ``wait`` seconds."""
    for window in windows:
        statement = sql.SQL("CALL refresh_continuous_aggregate({}, {}, {})").format(
            sql.Literal(f"tokenscale.{window.aggregate}"), sql.Literal(window.start), sql.Literal(window.end)
        )
        deadline = time.monotonic() + wait
        while True:
            try:
                conn.execute(statement)
                break
            except psycopg.errors.LockNotAvailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def stored_ranges(conn: psycopg.Connection[Any]) -> list[tuple[datetime, datetime]]:
    """The time ranges ``usage_events`` has chunks for (adjacent chunks merged), oldest first.

    A refresh confined to them never recomputes a day whose raw events were dropped (its chunk is
    gone), whatever retention setting the caller knows of."""
    ranges: list[tuple[datetime, datetime]] = []
    for start, end in conn.execute(
        "SELECT range_start, range_end FROM timescaledb_information.chunks "
        "WHERE hypertable_schema = 'tokenscale' AND hypertable_name = 'usage_events' ORDER BY 1"
    ):
        if ranges and start <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], end))
        else:
            ranges.append((start, end))
    return ranges


def within_stored(
    windows: list[RefreshWindow], ranges: list[tuple[datetime, datetime]]
) -> list[RefreshWindow]:
    """``windows`` cut to the stored ``ranges`` (whole buckets inside them only)."""
    widths = dict(AGGREGATES)
    out = []
    for window in windows:
        width = widths[window.aggregate]
        for start, end in ranges:
            cut_start = max(window.start, _floor(start - timedelta(microseconds=1), width) + width)
            cut_end = min(window.end, _floor(end, width))
            if cut_start < cut_end:
                out.append(RefreshWindow(window.aggregate, cut_start, cut_end))
    return out


def materialize_history(conn: psycopg.Connection[Any]) -> list[RefreshWindow]:
    """Materialize the buckets of every stored event (up to the current ones), so that no event is
    ever hidden behind the watermark of a refresh policy; cheap when they already are. ``conn``
    must be in autocommit mode. Only the days ``usage_events`` still has chunks for are refreshed."""
    ranges = stored_ranges(conn)
    if not ranges:
        return []
    now = datetime.now(UTC)
    windows = within_stored(plan_refresh(ranges[0][0], ranges[-1][1], now=now), ranges)
    refresh(conn, windows)
    return windows


class Refresher:
    """Refreshes the continuous aggregates after exports commit (TimescaleDB community).

    The writer calls :meth:`note` with the time span of each committed export; a background thread
    waits ``delay`` seconds to gather the exports of that moment, then refreshes from the earlier of
    the span's start and the late-data horizon to the current buckets (see the module's doc). A
    failed refresh is retried after ``retry`` seconds; :meth:`close` runs what is still pending.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        late_data_days: int,
        retention_days: int = 0,
        delay: float = 5.0,
        retry: float = 15.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._conninfo = conninfo
        self._horizon = timedelta(days=late_data_days)
        self._retention_days = retention_days
        self._delay = delay
        self._retry = retry
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: tuple[int, int] | None = None  # (first, last) in ns since the Unix epoch
        self._closed = False
        self._thread: threading.Thread | None = None
        #: Completed refresh runs, and the failed ones (for tests and logs).
        self.runs = 0
        self.failures = 0

    def start(self) -> Refresher:
        """Start the background thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tokenscale-refresher", daemon=True)
            self._thread.start()
        return self

    def note(self, first_ns: int, last_ns: int) -> None:
        """An export spanning [first_ns, last_ns] (ns since the Unix epoch) has been committed."""
        with self._cond:
            if self._pending is None:
                self._pending = (first_ns, last_ns)
            else:
                self._pending = (min(self._pending[0], first_ns), max(self._pending[1], last_ns))
            self._cond.notify_all()

    def flush(self) -> list[RefreshWindow]:
        """Refresh what is pending now, in the calling thread; the refreshes run."""
        with self._cond:
            pending, self._pending = self._pending, None
        if pending is None:
            return []
        try:
            return self._refresh(pending)
        except BaseException:
            self._requeue(pending)
            raise

    def close(self) -> None:
        """Stop the thread, then refresh what is still pending (errors are logged)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        try:
            self.flush()
        except Exception as exc:
            log.warning("continuous aggregates not refreshed at shutdown: %s", exc)

    def _requeue(self, pending: tuple[int, int]) -> None:
        with self._cond:
            if self._pending is not None:
                pending = (min(pending[0], self._pending[0]), max(pending[1], self._pending[1]))
            self._pending = pending

    def _refresh(self, pending: tuple[int, int]) -> list[RefreshWindow]:
        now = self._clock()
        first = min(_EPOCH + timedelta(microseconds=pending[0] // 1000), now - self._horizon)
        last = _EPOCH + timedelta(microseconds=pending[1] // 1000)
        windows = plan_refresh(first, last, now=now, retention_days=self._retention_days)
        if windows:
            with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
                refresh(conn, windows)
        self.runs += 1
        log.debug("refreshed %s", "; ".join(map(str, windows)) or "nothing (all in current buckets)")
        return windows

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                # Gather the exports committed in the next moment into the same refresh.
                deadline = time.monotonic() + self._delay
                while not self._closed and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                if self._closed:
                    return
            try:
                self.flush()
            except Exception as exc:
                self.failures += 1
                log.warning(
                    "refreshing the continuous aggregates failed (retrying in %gs): %s", self._retry, exc
                )
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, self._retry)
