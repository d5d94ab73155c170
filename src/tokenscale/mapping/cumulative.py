"""Turning cumulative points into increments, given each series' last stored point (pure).

OTLP data model, "Sums": a cumulative series has a fixed start time; a point with a NEW start time
means the series was reset (process restart) and its value counts from zero again. A point at or
before the stored one (a retried or reordered export) adds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tokenscale.mapping._core import apply
from tokenscale.mapping.model import ActivityEvent, CumulativePoint, UsageEvent
from tokenscale.mapping.pricing import price_event

__all__ = ["SeriesState", "resolve_cumulative"]


@dataclass(frozen=True, slots=True)
class SeriesState:
    """The last point taken from one cumulative series."""

    start_ns: int
    time_ns: int
    value: float
    count: int


def resolve_cumulative(
    points: list[CumulativePoint], states: dict[bytes, SeriesState]
) -> tuple[list[UsageEvent | ActivityEvent], dict[bytes, SeriesState]]:
    """The usage events for ``points`` and the series states to store afterwards.

    ``states`` holds the stored state of the points' series (missing: never seen). Only series
    whose state changed appear in the returned states.
    """
    changed: dict[bytes, SeriesState] = {}
    events: list[UsageEvent | ActivityEvent] = []
    for point in sorted(points, key=lambda p: (p.series_key, p.start_ns, p.time_ns)):
        state = changed.get(point.series_key) or states.get(point.series_key)
        if state is None or point.start_ns > state.start_ns:
            value, count = point.value, point.count  # a new series, or a reset
        elif point.start_ns < state.start_ns or point.time_ns <= state.time_ns:
            continue  # an older run of the series, or a point already taken
        elif point.value < state.value or point.count < state.count:
            value, count = point.value, point.count  # a reset without a new start time
        else:
            value, count = point.value - state.value, point.count - state.count
        changed[point.series_key] = SeriesState(point.start_ns, point.time_ns, point.value, point.count)
        if value == 0 and count == 0:
            continue
        template = point.event
        if isinstance(template, ActivityEvent):
            activity = replace(template)
            apply(activity, point.contributions, value)
            events.append(activity)
            continue
        event = replace(template, attributes=dict(template.attributes))
        apply(event, point.contributions, value)
        if point.counts_requests:
            event.requests = count
        price_event(event, per_request=False)
        events.append(event)
    return events, changed
