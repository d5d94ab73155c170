"""The budget check cuts a window into whole hours and the events of its partial edges
(tokenscale.window_pieces): the cut covers every window exactly once, and a check is exact against
raw sums when events sit on, and a microsecond either side of, day, hour and 5-minute boundaries and
the windows' edges. Every back end."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from otlp_clients import background_loop, grpc_export, running
from tokenscale.api.scoped_budgets import BudgetWindow, Identity, check_budgets, create_budget
from tokenscale.pipeline import ExportPipeline
from tokenscale.receiver.server import Receiver
from tokenscale.store import migrate
from tokenscale.store.writer import UsageWriter, open_pool
from usage_db import assert_rollups_match_events

US = timedelta(microseconds=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
TOKENS = "input_tokens + cache_read_tokens + cache_write_tokens + output_tokens"


def reference_cut(lo: datetime, hi: datetime) -> list[tuple[str, datetime, datetime]]:
    """[lo, hi] as the events of its partial first hour, its whole hours and the events of its
    partial last hour (ranges [start, end), empty ones left out); one range of events when no whole
    hour fits."""
    a = EPOCH + -((EPOCH - lo) // HOUR) * HOUR  # the first whole hour's start (ceiling)
    b = EPOCH + (hi - EPOCH) // HOUR * HOUR  # the last partial hour's start (floor)
    if a >= b:
        return [("raw", lo, hi + US)]
    return [p for p in (("raw", lo, a), ("hour", a, b), ("raw", b, hi + US)) if p[1] < p[2]]


@pytest.fixture
def migrated(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    migrate(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        yield conn


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    hi_us=st.integers(min_value=0, max_value=200 * 365 * 86400 * 10**6),
    hours=st.integers(min_value=1, max_value=366 * 24),
)
def test_the_database_cuts_each_window_once_into_whole_hours_and_edges(
    migrated: psycopg.Connection[Any], hi_us: int, hours: int
) -> None:
    """tokenscale.window_pieces (which chooses the ranges budget_check reads) covers every window
    once, in contiguous ranges, whole hours aligned to UTC hours, and equals the reference cut."""
    hi = EPOCH + timedelta(microseconds=hi_us)
    lo = hi - timedelta(hours=hours)
    pieces = [
        (g, a, b) for g, a, b in migrated.execute("SELECT * FROM tokenscale.window_pieces(%s, %s)", (lo, hi))
    ]
    assert pieces[0][1] == lo and pieces[-1][2] == hi + US  # [lo, hi], both ends included
    for (_, _, end), (_, start, _) in itertools.pairwise(pieces):
        assert end == start  # contiguous: nothing counted twice, nothing left out
    raw = [p for p in pieces if p[0] == "raw"]
    assert 1 <= len(raw) <= 2
    assert all(end - start <= HOUR + US for _, start, end in raw)  # a whole 1-hour window: raw
    for grain, start, end in pieces:
        assert start < end and grain in ("raw", "hour")
        if grain == "hour":
            assert (start - EPOCH) % HOUR == timedelta(0) and (end - EPOCH) % HOUR == timedelta(0)
    assert pieces == reference_cut(lo, hi)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    with background_loop() as event_loop:
        yield event_loop


@pytest.fixture
def receiver(db_url: str, loop: asyncio.AbstractEventLoop) -> Iterator[Receiver]:
    migrate(db_url)
    pool = open_pool(db_url)
    try:
        with running(loop, ExportPipeline(UsageWriter(pool))) as live:
            yield live
    finally:
        pool.close()


def _spans(times: list[datetime], model: str, user: str) -> bytes:
    """One OTLP trace export: a GenAI span ending at each of ``times`` (tokens 100 + its index)."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend(
        [
            KeyValue(key="service.name", value=AnyValue(string_value="grains-app")),
            KeyValue(key="user.email", value=AnyValue(string_value=user)),
        ]
    )
    scope = rs.scope_spans.add()
    for n, when in enumerate(times):
        end = (when - EPOCH) // US * 1000
        span = scope.spans.add(
            name=f"chat {model}",
            trace_id=(hash((model, user)) & 0xFFFF_FFFF).to_bytes(8, "big") + n.to_bytes(8, "big"),
            span_id=(n + 1).to_bytes(8, "big"),
            start_time_unix_nano=end - 10**9,
            end_time_unix_nano=end,
        )
        span.attributes.extend(
            [
                KeyValue(key="gen_ai.operation.name", value=AnyValue(string_value="chat")),
                KeyValue(key="gen_ai.request.model", value=AnyValue(string_value=model)),
                KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=100 + n)),
                KeyValue(key="gen_ai.usage.output_tokens", value=AnyValue(int_value=7)),
            ]
        )
    return request.SerializeToString()


def test_check_is_exact_on_every_grain_boundary(receiver: Receiver, db_url: str) -> None:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    # Events on a day, an hour and 5-minute boundaries and a microsecond either side of them.
    marks = [midnight, midnight + timedelta(hours=3), midnight + timedelta(hours=3, minutes=5)]
    marks += [midnight + timedelta(days=1, hours=7, minutes=35), midnight + timedelta(days=1, hours=23)]
    times = sorted({m + d for m in marks for d in (-US, timedelta(0), US, timedelta(minutes=2, seconds=30))})
    for model, user, every in (("gpt-4o-mini", "ana@example.com", 1), ("gpt-4o", "bo@example.com", 2)):
        response = grpc_export(receiver.grpc_port, "traces", _spans(times[::every], model, user))
        assert not response.HasField("partial_success") or not response.partial_success.error_message
    assert_rollups_match_events(db_url)

    with psycopg.connect(db_url, autocommit=True) as conn:
        (tenant,) = conn.execute("SELECT DISTINCT tenant FROM tokenscale.usage_events").fetchone() or ("",)
        stored = [r[0] for r in conn.execute("SELECT DISTINCT time FROM tokenscale.usage_events ORDER BY 1")]
        assert stored == times  # the span's end, to the microsecond
        lengths = [3600, 5 * 3600, 25 * 3600, 2 * 86400]
        windows = [BudgetWindow("tokens", Decimal(10**9), s) for s in lengths]
        windows += [BudgetWindow("usd", Decimal(10**6), 5 * 3600)]
        for scope, value in (("tenant", None), ("user", "ana@example.com"), ("model", "gpt-4o")):
            create_budget(conn, tenant, scope, value, windows)
        create_budget(conn, tenant, "tool", "grains-app", windows[:2])
        identity = Identity(user="ana@example.com", tool="grains-app", model="gpt-4o")
        filters = {
            "tenant": ("TRUE", None),
            "user": ("coalesce(user_email, user_id) = %(v)s", "ana@example.com"),
            "model": ("model = %(v)s", "gpt-4o"),
            "tool": ("tool = %(v)s", "grains-app"),
        }
        checked = 0
        # Windows that start and end on each event, and a microsecond either side.
        nows = {
            t + timedelta(seconds=s) + d
            for t in times
            for s in [0, *lengths]
            for d in (-US, timedelta(0), US)
        }
        for now in sorted(nows):
            answer = check_budgets(conn, tenant, identity, now=now)
            assert len(answer["windows"]) == 3 * len(windows) + 2
            for w in answer["windows"]:
                where, value = filters[w["scope"]]
                row = conn.execute(
                    f"SELECT coalesce(sum({TOKENS}), 0), coalesce(sum(cost_usd), 0) "
                    "FROM tokenscale.usage_events WHERE tenant = %(t)s AND counted "
                    f"AND time >= %(lo)s AND time <= %(hi)s AND {where}",
                    {"t": tenant, "v": value, "lo": now - timedelta(seconds=w["windowSeconds"]), "hi": now},
                ).fetchone()
                assert row is not None
                if w["unit"] == "tokens":
                    assert w["used"] == int(row[0]), (w, now)
                else:
                    assert Decimal(str(w["used"])) == Decimal(row[1]), (w, now)
                checked += int(row[0] != 0)
        assert checked > 1000  # most of the windows hold usage
