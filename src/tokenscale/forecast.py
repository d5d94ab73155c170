"""Burn-rate forecast of a rolling budget window: when, at the recent rate of use, it runs out (pure).

A rolling window of ``W`` seconds ending now holds ``used``. At a steady rate ``r`` from now on, the
window ``h`` seconds later holds ``used + r*h`` minus what has rolled out of it meanwhile: the usage
of ``[now - W, now - W + h)``. The forecast walks that piecewise-linear curve (each hour's usage is
taken as spread evenly over the part of the hour inside the window) and answers the first moment it
reaches the limit, or ``None`` when it never does: after ``W`` seconds the window holds ``r*W`` for
ever, so a window that has not run out by then never will at this rate.

The rate is the usage of the recent past (:func:`lookback_seconds`: a quarter of the window, at least
an hour) divided by that span, shortened to the time since the window's first usage so that usage
which began only recently is not diluted by the empty hours before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

__all__ = [
    "BUCKET_SECONDS",
    "Forecast",
    "UsageBucket",
    "burn_rate",
    "describe_duration",
    "forecast_exhaustion",
    "lookback_seconds",
]

#: The length of a usage bucket: one hour.
BUCKET_SECONDS: Final = 3600.0
#: The shortest span the rate is measured over.
MIN_LOOKBACK_SECONDS: Final = 3600.0


@dataclass(frozen=True, slots=True)
class UsageBucket:
    """Usage (tokens or USD) from ``start`` for ``seconds`` (an hour; less for the window's first
    bucket when its first use is known), only its part inside the window."""

    start: datetime
    amount: float
    seconds: float = BUCKET_SECONDS


@dataclass(frozen=True, slots=True)
class Forecast:
    """A window's recent rate of use and when the budget runs out at that rate."""

    #: Usage per hour over the recent past.
    rate_per_hour: float
    #: When the window's usage reaches the limit at this rate; ``now`` when it already has;
    #: ``None`` when it never does at this rate.
    exhausted_at: datetime | None

    def seconds_left(self, now: datetime) -> float | None:
        """Seconds from ``now`` until the budget runs out (0 when it has), or ``None`` (never)."""
        return None if self.exhausted_at is None else max(0.0, (self.exhausted_at - now).total_seconds())


def lookback_seconds(window_seconds: float) -> float:
    """The span the recent rate is measured over: a quarter of the window, at least an hour (and
    never more than the window)."""
    return min(float(window_seconds), max(MIN_LOOKBACK_SECONDS, window_seconds / 4))


def _segments(
    buckets: Sequence[UsageBucket], window_start: datetime, now: datetime
) -> list[tuple[float, float, float]]:
    """Each bucket as (from, to, usage per second), in seconds after ``window_start``, clipped to the
    window and sorted; empty or zero buckets left out."""
    out: list[tuple[float, float, float]] = []
    end = (now - window_start).total_seconds()
    for bucket in buckets:
        lo = max(0.0, (bucket.start - window_start).total_seconds())
        hi = min(end, (bucket.start - window_start).total_seconds() + bucket.seconds)
        if hi <= lo:
            # Usage at the very instant ``now`` (an empty span): it rolls out last.
            if bucket.amount > 0 and lo <= end:
                lo, hi = max(0.0, end - 1e-6), end
            else:
                continue
        if bucket.amount > 0:
            out.append((lo, hi, bucket.amount / (hi - lo)))
    out.sort()
    return out


def burn_rate(buckets: Sequence[UsageBucket], *, window_seconds: float, now: datetime) -> float:
    """Usage per second over the recent past (see the module's description)."""
    window_start = now - timedelta(seconds=window_seconds)
    segments = _segments(buckets, window_start, now)
    if not segments:
        return 0.0
    end = float(window_seconds)
    first_use = segments[0][0]
    span = max(MIN_LOOKBACK_SECONDS, min(lookback_seconds(window_seconds), end - first_use))
    span = min(span, end)
    since = end - span
    used = sum(density * max(0.0, hi - max(lo, since)) for lo, hi, density in segments)
    return used / span


def forecast_exhaustion(
    *,
    limit: float,
    used: float,
    buckets: Sequence[UsageBucket],
    window_seconds: float,
    now: datetime,
    rate_per_second: float | None = None,
) -> Forecast:
    """When the rolling window of ``window_seconds`` ending ``now``, holding ``used`` of ``limit``,
    runs out at the recent rate (``rate_per_second``, default :func:`burn_rate` of ``buckets``).

    ``buckets`` are the window's usage per hour (their sum is normally ``used``; ``used`` is what the
    forecast starts from, the buckets give the shape of what rolls out).
    """
    if window_seconds <= 0:
        raise ValueError("window_seconds must be positive")
    rate = (
        burn_rate(buckets, window_seconds=window_seconds, now=now)
        if rate_per_second is None
        else rate_per_second
    )
    rate_per_hour = rate * 3600.0
    if used >= limit:
        return Forecast(rate_per_hour, now)
    if rate <= 0:
        return Forecast(rate_per_hour, None)
    window_start = now - timedelta(seconds=window_seconds)
    # The roll-out density over h in [0, W] as consecutive pieces (gaps roll out nothing): the
    # window's level is linear on each.
    pieces: list[tuple[float, float, float]] = []
    at = 0.0
    for lo, hi, density in _segments(buckets, window_start, now):
        start = max(lo, at)
        if start > at:
            pieces.append((at, start, 0.0))
        if hi > start:
            pieces.append((start, hi, density))
            at = hi
    if at < window_seconds:
        pieces.append((at, float(window_seconds), 0.0))
    level = float(used)
    for a, b, rolling_out in pieces:
        slope = rate - rolling_out
        if slope > 0 and level + slope * (b - a) >= limit:
            return Forecast(rate_per_hour, now + timedelta(seconds=a + (limit - level) / slope))
        level += slope * (b - a)
    return Forecast(rate_per_hour, None)


def describe_duration(seconds: float) -> str:
    """A duration as people say it: ``45 min``, ``9 h``, ``3 d 4 h``."""
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{max(minutes, 1)} min" if seconds > 0 else "now"
    hours = round(seconds / 3600)
    if hours < 48:
        return f"{hours} h"
    days, rest = divmod(hours, 24)
    return f"{days} d" if rest == 0 else f"{days} d {rest} h"
