"""The budget check is exact: usage from real captured clients over OTLP through a real receiver,
several windows per user (tokens and USD), every answer equal to the raw sums of ``usage_events``,
with events just inside and just outside a window's start and end. Every back end."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ground_truth import capture_bodies
from otlp_clients import background_loop, grpc_export, running
from tokenscale.api.scoped_budgets import BudgetWindow, Identity, check_budgets, create_budget
from tokenscale.pipeline import ExportPipeline
from tokenscale.receiver.server import Receiver
from tokenscale.store import migrate
from tokenscale.store.writer import UsageWriter, open_pool
from usage_db import assert_rollups_match_events, daily_by_model, expected_daily

HOUR = timedelta(hours=1)
US = timedelta(microseconds=1)
CLASSES: dict[str, Any] = {
    "logs": ExportLogsServiceRequest,
    "metrics": ExportMetricsServiceRequest,
    "traces": ExportTraceServiceRequest,
}
#: (capture, hours before the anchor, salt): runs of two clients spread over two days.
RUNS = [
    ("claude-grpc", 30.2, 0x11),
    ("claude-grpc", 5.4, 0x12),
    ("claude-grpc", 2.1, 0x13),
    ("claude-grpc", 0.3, 0x14),
    ("gemini-grpc", 26.7, 0x21),
    ("gemini-grpc", 1.6, 0x22),
]
TOKENS = "input_tokens + cache_read_tokens + cache_write_tokens + output_tokens"


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


def _first_ns(requests: list[tuple[str, Any]]) -> int:
    times = []
    for signal, request in requests:
        if signal == "traces":
            times += [
                s.start_time_unix_nano
                for rs in request.resource_spans
                for ss in rs.scope_spans
                for s in ss.spans
            ]
        elif signal == "logs":
            times += [
                r.time_unix_nano
                for rl in request.resource_logs
                for sl in rl.scope_logs
                for r in sl.log_records
            ]
    return min(t for t in times if t)


def _shifted(request: Any, signal: str, shift_ns: int, salt: int) -> Any:
    """A captured export as another run of the client sent it: times moved, trace and span ids salted."""
    copy = type(request).FromString(request.SerializeToString())
    if signal == "traces":
        for rs in copy.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    span.trace_id = bytes(b ^ salt for b in span.trace_id)
                    span.span_id = bytes(b ^ salt for b in span.span_id)
                    span.start_time_unix_nano += shift_ns
                    span.end_time_unix_nano += shift_ns
    elif signal == "logs":
        for rl in copy.resource_logs:
            for sl in rl.scope_logs:
                for record in sl.log_records:
                    record.time_unix_nano += shift_ns if record.time_unix_nano else 0
                    record.observed_time_unix_nano += shift_ns
    else:
        for rm in copy.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    for point in getattr(metric, metric.WhichOneof("data")).data_points:
                        point.start_time_unix_nano += shift_ns
                        point.time_unix_nano += shift_ns
    return copy


def _replay(receiver: Receiver, anchor: datetime) -> None:
    for label, hours, salt in RUNS:
        requests = [(s, CLASSES[s].FromString(raw.read_bytes())) for s, raw, _ in capture_bodies(label)]
        target_ns = int((anchor - timedelta(hours=hours)).timestamp()) * 10**9
        shift = target_ns - _first_ns(requests)
        for signal, request in requests:
            response = grpc_export(
                receiver.grpc_port, signal, _shifted(request, signal, shift, salt).SerializeToString()
            )
            assert not response.HasField("partial_success") or not response.partial_success.error_message


def _raw(
    conn: psycopg.Connection[Any], tenant: str, where: str, value: str | None, lo: datetime, hi: datetime
) -> tuple[int, Decimal]:
    row = conn.execute(
        f"SELECT coalesce(sum({TOKENS}), 0), coalesce(sum(cost_usd), 0) FROM tokenscale.usage_events "
        f"WHERE tenant = %(t)s AND counted AND time >= %(lo)s AND time <= %(hi)s AND {where}",
        {"t": tenant, "v": value, "lo": lo, "hi": hi},
    ).fetchone()
    assert row is not None
    return int(row[0]), Decimal(row[1])


FILTERS = {
    "tenant": "TRUE",
    "user": "coalesce(user_email, user_id) = %(v)s",
    "tool": "tool = %(v)s",
    "model": "model = %(v)s",
    "team": "attributes @> jsonb_build_object('team.id', %(v)s::text)",
}


def test_check_equals_raw_sums_at_window_edges(receiver: Receiver, db_url: str) -> None:
    anchor = datetime.now(UTC).replace(second=0, microsecond=0) - HOUR
    _replay(receiver, anchor)
    # The replayed runs are counted as the ground truth says: 4 Claude runs, 2 Gemini runs.
    claude, gemini = expected_daily("claude-grpc"), expected_daily("gemini-grpc")
    stored = daily_by_model(db_url)
    for model, row in claude.items():
        assert stored[model]["input_tokens"] == 4 * row["input_tokens"]
    for model, row in gemini.items():
        assert stored[model]["output_tokens"] == 2 * row["output_tokens"]
    assert_rollups_match_events(db_url)

    with psycopg.connect(db_url, autocommit=True) as conn:
        tenant, claude_user = conn.execute(
            "SELECT tenant, coalesce(user_email, user_id) FROM tokenscale.usage_events "
            "WHERE counted AND tool = 'claude_code' LIMIT 1"
        ).fetchone() or ("", "")
        gemini_user = (
            conn.execute(
                "SELECT coalesce(user_email, user_id) FROM tokenscale.usage_events "
                "WHERE counted AND tool = 'gemini_cli' LIMIT 1"
            ).fetchone()
            or ("",)
        )[0]
        claude_model = (
            conn.execute(
                "SELECT model FROM tokenscale.usage_events WHERE counted AND tool = 'claude_code' LIMIT 1"
            ).fetchone()
            or ("",)
        )[0]
        assert claude_user and gemini_user and claude_model
        budgets = {
            "user": create_budget(
                conn,
                tenant,
                "user",
                claude_user,
                [
                    BudgetWindow("tokens", Decimal(10**9), 3 * 3600),
                    BudgetWindow("tokens", Decimal(10**9), 6 * 3600),
                    BudgetWindow("usd", Decimal(1000), 2 * 86400),
                ],
            ),
            "tenant": create_budget(
                conn,
                tenant,
                "tenant",
                None,
                [
                    BudgetWindow("tokens", Decimal(10**9), 86400),
                    BudgetWindow("usd", Decimal(1000), 27 * 3600),
                ],
            ),
            "tool": create_budget(
                conn, tenant, "tool", "claude_code", [BudgetWindow("tokens", Decimal(10**9), 4 * 3600)]
            ),
            "model": create_budget(
                conn, tenant, "model", claude_model, [BudgetWindow("usd", Decimal(1000), 7 * 3600)]
            ),
            "team": create_budget(
                conn, tenant, "team", "otlp-test", [BudgetWindow("tokens", Decimal(10**9), 29 * 3600)]
            ),
        }
        create_budget(conn, tenant, "user", gemini_user, [BudgetWindow("tokens", Decimal(1), 3600)])
        identity = Identity(user=claude_user, team="otlp-test", tool="claude_code", model=claude_model)
        values = {
            "tenant": None,
            "user": claude_user,
            "tool": "claude_code",
            "model": claude_model,
            "team": "otlp-test",
        }
        times = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT time FROM tokenscale.usage_events WHERE counted ORDER BY 1"
            )
        ]
        assert len(times) >= 6
        claude_times = {
            r[0]
            for r in conn.execute(
                "SELECT time FROM tokenscale.usage_events WHERE counted AND tool = 'claude_code'"
            )
        }
        usd_seen = False

        def check_at(now: datetime) -> None:
            nonlocal usd_seen
            answer = check_budgets(conn, tenant, identity, now=now)
            assert answer["allowed"] is True
            got = {(w["budgetId"], w["windowSeconds"], w["unit"]): w for w in answer["windows"]}
            expected_count = sum(len(b.windows) for b in budgets.values())
            assert len(got) == len(answer["windows"]) == expected_count  # not the Gemini user's budget
            for scope, budget in budgets.items():
                for window in budget.windows:
                    tokens, usd = _raw(
                        conn,
                        tenant,
                        FILTERS[scope],
                        values[scope],
                        now - timedelta(seconds=window.window_seconds),
                        now,
                    )
                    w = got[(budget.id, window.window_seconds, window.unit)]
                    if window.unit == "tokens":
                        assert w["used"] == tokens, (scope, window, now)
                    else:
                        assert Decimal(str(w["used"])) == usd, (scope, window, now)
                        usd_seen = usd_seen or usd > 0

        # Window starts on an event (inside) and a microsecond after it (outside), for every
        # window length; window ends on an event and a microsecond before it.
        lengths = sorted({w.window_seconds for b in budgets.values() for w in b.windows})
        for t in times:
            for seconds in lengths:
                start_on = t + timedelta(seconds=seconds)
                check_at(start_on)
                check_at(start_on + US)
            check_at(t)
            check_at(t - US)
        assert usd_seen  # USD windows were checked against non-zero costs

        # An event at the start of the 3 h window moves exactly its tokens out a microsecond later.
        edge = next(t for t in reversed(times) if t in claude_times)
        now = edge + timedelta(hours=3)
        inside = check_budgets(conn, tenant, identity, now=now)
        outside = check_budgets(conn, tenant, identity, now=now + US)
        (edge_tokens,) = conn.execute(
            f"SELECT sum({TOKENS}) FROM tokenscale.usage_events WHERE counted AND time = %s "
            "AND coalesce(user_email, user_id) = %s",
            (edge, claude_user),
        ).fetchone() or (0,)

        def user_3h(answer: dict[str, Any]) -> int:
            (w,) = [w for w in answer["windows"] if w["scope"] == "user" and w["windowSeconds"] == 3 * 3600]
            return int(w["used"])

        assert edge_tokens and user_3h(inside) - user_3h(outside) == edge_tokens

        # The Gemini user's 1-token hourly budget is spent once it has used any.
        spent = check_budgets(conn, tenant, Identity(user=gemini_user), now=anchor - timedelta(hours=1.5))
        assert spent["allowed"] is False
        assert spent["windows"][0]["scope"] == "user" and spent["windows"][0]["exceeded"] is True
