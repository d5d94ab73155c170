"""The burn-rate forecast (tokenscale.forecast): exact on clean shapes, within 5% on a noisy steady load."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from tokenscale.forecast import (
    UsageBucket,
    burn_rate,
    describe_duration,
    forecast_exhaustion,
    lookback_seconds,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def hourly(rate_by_hour: dict[int, float]) -> list[UsageBucket]:
    """Buckets for hours ``-k`` (the hour starting k hours before NOW) with the given usage."""
    return [UsageBucket(NOW - k * HOUR, amount) for k, amount in sorted(rate_by_hour.items())]


def test_lookback_is_a_quarter_of_the_window_at_least_an_hour() -> None:
    assert lookback_seconds(7 * 86400) == 42 * 3600
    assert lookback_seconds(86400) == 6 * 3600
    assert lookback_seconds(3600) == 3600
    assert lookback_seconds(7200) == 3600


def test_steady_load_from_an_empty_window_runs_out_after_remaining_over_rate() -> None:
    # 1,000 tokens an hour for the last 10 hours of a 24-hour window: 10,000 used of 20,000.
    buckets = hourly({k: 1000.0 for k in range(1, 11)})
    f = forecast_exhaustion(limit=20000, used=10000, buckets=buckets, window_seconds=86400, now=NOW)
    assert f.rate_per_hour == pytest.approx(1000.0)
    assert f.exhausted_at == NOW + 10 * HOUR
    assert f.seconds_left(NOW) == pytest.approx(36000.0)


def test_rate_is_measured_since_first_use_not_over_the_empty_hours_before_it() -> None:
    # Two hours of use in a 7-day window (lookback 42 h): the rate is per hour of use.
    buckets = hourly({1: 600.0, 2: 600.0})
    assert burn_rate(buckets, window_seconds=7 * 86400, now=NOW) * 3600 == pytest.approx(600.0)


def test_what_rolls_out_delays_the_exhaustion() -> None:
    # 200/h from 168 h to 48 h ago, then 1,000/h: 24,000 + 48,000 = 72,000 of 100,000 in a 7-day
    # window. The rate is 1,000/h, but for the next 120 h, 200/h rolls out: the window grows by
    # 800/h and runs out after 28,000 / 800 = 35 h (not the 28 h remaining/rate would say).
    buckets = hourly({k: (1000.0 if k <= 48 else 200.0) for k in range(1, 169)})
    f = forecast_exhaustion(limit=100000, used=72000, buckets=buckets, window_seconds=7 * 86400, now=NOW)
    assert f.rate_per_hour == pytest.approx(1000.0)
    assert f.exhausted_at is not None
    assert (f.exhausted_at - NOW).total_seconds() == pytest.approx(35 * 3600)


def test_a_burst_rolling_out_means_it_never_runs_out() -> None:
    # 10,000 in the window's first hour, then 500/h: 21,500 of 22,000. Naively 1 h left; but the burst
    # rolls out within the hour and afterwards 500/h rolls in as 500/h rolls out.
    buckets = hourly({23: 10000.0, **{k: 500.0 for k in range(1, 23)}, 0: 0.0})
    used = 10000.0 + 22 * 500.0
    f = forecast_exhaustion(limit=used + 500, used=used, buckets=buckets, window_seconds=23 * 3600, now=NOW)
    assert f.exhausted_at is None


def test_steady_state_below_the_limit_never_runs_out_and_above_it_already_has() -> None:
    buckets = hourly({k: 100.0 for k in range(1, 169)})
    never = forecast_exhaustion(limit=20000, used=16800, buckets=buckets, window_seconds=7 * 86400, now=NOW)
    assert never.exhausted_at is None
    assert never.rate_per_hour == pytest.approx(100.0)
    spent = forecast_exhaustion(limit=16000, used=16800, buckets=buckets, window_seconds=7 * 86400, now=NOW)
    assert spent.exhausted_at == NOW
    assert spent.seconds_left(NOW) == 0.0


def test_no_usage_never_runs_out() -> None:
    f = forecast_exhaustion(limit=10, used=0, buckets=[], window_seconds=3600, now=NOW)
    assert f.rate_per_hour == 0.0
    assert f.exhausted_at is None
    assert f.seconds_left(NOW) is None


def test_a_window_must_have_a_length() -> None:
    with pytest.raises(ValueError, match="window_seconds"):
        forecast_exhaustion(limit=10, used=0, buckets=[], window_seconds=0, now=NOW)


def _simulate(rate_per_hour: float, start: datetime, end: datetime, seed: int) -> dict[datetime, float]:
    """A noisy steady load: every minute, between half and one and a half times the mean rate."""
    rng = random.Random(seed)
    per_minute = rate_per_hour / 60
    out: dict[datetime, float] = {}
    t = start
    while t < end:
        out[t] = per_minute * rng.uniform(0.5, 1.5)
        t += timedelta(minutes=1)
    return out


@pytest.mark.parametrize(
    ("window_hours", "phases", "limit"),
    [
        # (hours before NOW the phase starts, its mean rate per hour)
        (168, [(168, 200.0), (48, 1000.0)], 100000.0),  # light then heavy: roll-out matters
        (24, [(10, 1500.0)], 30000.0),  # usage began within the window
        (6, [(30, 800.0)], 6000.0),  # a short window, full: 4,800 of 6,000 at steady state
        (72, [(100, 300.0), (20, 2000.0)], 90000.0),
    ],
)
def test_forecast_within_5_percent_of_a_simulated_noisy_steady_load(
    window_hours: int, phases: list[tuple[int, float]], limit: float
) -> None:
    window = timedelta(hours=window_hours)
    minutes: dict[datetime, float] = {}
    for i, (hours_ago, rate) in enumerate(phases):
        end = NOW - timedelta(hours=phases[i + 1][0]) if i + 1 < len(phases) else NOW
        minutes.update(_simulate(rate, NOW - timedelta(hours=hours_ago), end, seed=i))
    lo = NOW - window
    buckets_by_hour: dict[datetime, float] = defaultdict(float)
    for t, amount in minutes.items():
        if lo <= t < NOW:
            buckets_by_hour[t.replace(minute=0)] += amount
    buckets = [UsageBucket(start, amount) for start, amount in sorted(buckets_by_hour.items())]
    used = sum(buckets_by_hour.values())
    f = forecast_exhaustion(
        limit=limit, used=used, buckets=buckets, window_seconds=window.total_seconds(), now=NOW
    )
    # The load goes on at the last phase's mean rate (new noise): when does the window run out?
    future = _simulate(phases[-1][1], NOW, NOW + window, seed=99)
    everything = {**minutes, **future}
    actual: datetime | None = None
    level = used
    # Step minute by minute: the minute t rolls in, the minute t - window rolls out.
    for t in (NOW + timedelta(minutes=m) for m in range(int(window.total_seconds() // 60))):
        level += everything.get(t, 0.0) - everything.get(t - window, 0.0)
        if level >= limit:
            actual = t + timedelta(minutes=1)
            break
    if actual is None:
        assert f.exhausted_at is None
        return
    assert f.exhausted_at is not None
    predicted = (f.exhausted_at - NOW).total_seconds()
    observed = (actual - NOW).total_seconds()
    assert predicted == pytest.approx(observed, rel=0.05), (predicted / 3600, observed / 3600)


def test_durations_read_as_people_say_them() -> None:
    assert describe_duration(0) == "now"
    assert describe_duration(20) == "1 min"
    assert describe_duration(45 * 60) == "45 min"
    assert describe_duration(9 * 3600 + 600) == "9 h"
    assert describe_duration(76 * 3600) == "3 d 4 h"
    assert describe_duration(72 * 3600) == "3 d"


def test_a_first_bucket_from_the_first_use_keeps_the_rate_exact() -> None:
    # 1,000 tokens an hour since 2.5 hours ago: the first hour's bucket starts at the first use.
    first = NOW - timedelta(hours=2, minutes=30)
    exact = [
        UsageBucket(first, 500.0, 1800),
        UsageBucket(NOW - 2 * HOUR, 1000.0),
        UsageBucket(NOW - HOUR, 1000.0),
    ]
    assert burn_rate(exact, window_seconds=86400, now=NOW) * 3600 == pytest.approx(1000.0)
    # The same usage in whole hours reads as spread over 3 hours.
    whole = [UsageBucket(NOW - 3 * HOUR, 500.0), *exact[1:]]
    assert burn_rate(whole, window_seconds=86400, now=NOW) * 3600 == pytest.approx(2500 / 3)
