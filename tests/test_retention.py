"""Retention of raw usage events: whole days dropped past the horizon, daily aggregates kept."""

from __future__ import annotations

import time

import psycopg
import pytest

from tokenscale.mapping import MappingResult, UsageEvent
from tokenscale.store import Backend, migrate
from tokenscale.store.retention import apply_policies, enforce_retention
from tokenscale.store.writer import UsageWriter, open_pool

DAY_NS = 86_400 * 10**9


def _event(days_ago: int) -> UsageEvent:
    today = time.time_ns() // DAY_NS * DAY_NS
    return UsageEvent(
        time_ns=today - days_ago * DAY_NS + 3_600 * 10**9,
        tenant="t",
        carrier="gen_ai.span",
        rank=3,
        tool="app",
        stream="s",
        service_name="app",
        dedupe_key=days_ago.to_bytes(16, "big"),
        model="m",
        requests=1,
        input_tokens=100,
    )


def test_old_days_of_raw_events_are_dropped_and_aggregates_kept(db_url: str) -> None:
    backend = migrate(db_url).backend
    if backend is Backend.TIMESCALEDB_COMMUNITY:
        pytest.skip("the community edition runs its own retention policy")
    pool = open_pool(db_url)
    try:
        UsageWriter(pool).write(MappingResult(events=[_event(d) for d in range(10)]))
    finally:
        pool.close()
    with psycopg.connect(db_url, autocommit=True) as conn:
        report = apply_policies(conn, backend, retention_days=4, compress_after_days=0)
        assert report.retention == "4 days, enforced by tokenscale"
        assert enforce_retention(conn, backend, 4) >= 5
        assert enforce_retention(conn, backend, 4) == 0  # idempotent
        kept = conn.execute("SELECT count(*) FROM tokenscale.usage_events").fetchone()
        daily = conn.execute("SELECT count(*), sum(input_tokens) FROM tokenscale.usage_daily").fetchone()
    # Day 4 may straddle the horizon (it moves with the clock): days 0-3 are always kept, 5-9 dropped.
    assert kept is not None and kept[0] in (4, 5)
    assert daily == (10, 1000)


def test_compression_is_reported_where_it_cannot_apply(db_url: str) -> None:
    backend = migrate(db_url).backend
    if backend is Backend.TIMESCALEDB_COMMUNITY:
        pytest.skip("the community edition compresses")
    with psycopg.connect(db_url, autocommit=True) as conn:
        report = apply_policies(conn, backend, retention_days=0, compress_after_days=7)
    assert report == type(report)(
        "keep forever", "not available on this back end (TimescaleDB community only)"
    )
