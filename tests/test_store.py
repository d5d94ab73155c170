"""The storage layer on real PostgreSQL and TimescaleDB: migrations, exactly-once writes, rollups."""

from __future__ import annotations

import random
import threading
from typing import Any

import psycopg
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from dbservers import Server
from ground_truth import capture_bodies, labels
from tokenscale.errors import RetryableError
from tokenscale.mapping import MappingResult, UsageEvent
from tokenscale.pipeline import ExportPipeline
from tokenscale.store import Backend, migrate
from tokenscale.store.migrate import available_migrations
from tokenscale.store.writer import RECONCILED, UsageWriter, open_pool
from usage_db import assert_rollups_match_events, daily_by_model, expected_daily

REQUEST_TYPES: dict[str, Any] = {
    "metrics": ExportMetricsServiceRequest,
    "traces": ExportTraceServiceRequest,
    "logs": ExportLogsServiceRequest,
}
PROTOBUF_LABELS = [label for label in labels() if all(p.suffix == ".pb" for _, p, _ in capture_bodies(label))]


def test_migrate_is_idempotent_and_detects_the_back_end(db_url: str, db_server: Server) -> None:
    first = migrate(db_url)
    assert str(first.backend) == db_server.kind
    assert first.applied == tuple(m.version for m in available_migrations())
    second = migrate(db_url)
    assert second.applied == ()
    assert second.current == first.current


def test_concurrent_migrations_apply_each_version_once(db_url: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(db_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT version, count(*) FROM tokenscale.schema_migrations GROUP BY 1"
        ).fetchall()
    assert {count for _, count in rows} == {1}
    assert len(rows) == len(available_migrations())


def test_usage_tables_have_the_layout_of_their_back_end(db_url: str) -> None:
    backend = migrate(db_url).backend
    with psycopg.connect(db_url) as conn:
        hypertables = conn.execute(
            "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
        if backend is Backend.POSTGRES:
            assert hypertables == (0,)
            kind = conn.execute(
                "SELECT relkind FROM pg_class WHERE oid = 'tokenscale.usage_events'::regclass"
            ).fetchone()
            assert kind == ("p",)  # declaratively partitioned
        else:
            row = conn.execute(
                "SELECT hypertable_name FROM timescaledb_information.hypertables "
                "WHERE hypertable_schema = 'tokenscale'"
            ).fetchall()
            assert ("usage_events",) in row
        if backend is Backend.TIMESCALEDB_COMMUNITY:
            cagg = conn.execute(
                "SELECT materialized_only FROM timescaledb_information.continuous_aggregates "
                "WHERE view_schema = 'tokenscale' AND view_name = 'usage_daily'"
            ).fetchone()
            assert cagg == (False,)  # real-time aggregation on
            # timescaledb_information.jobs.hypertable_name is the aggregate itself on TimescaleDB
            # 2.20 and later, its materialization hypertable before.
            jobs = conn.execute(
                "SELECT c.view_name, j.config->>'start_offset', j.config->>'end_offset' "
                "FROM timescaledb_information.jobs j JOIN timescaledb_information.continuous_aggregates c "
                "ON j.hypertable_name IN (c.view_name, c.materialization_hypertable_name) "
                "WHERE c.view_schema = 'tokenscale' AND j.proc_name = 'policy_refresh_continuous_aggregate' "
                "ORDER BY 1"
            ).fetchall()
            # The window spans the default late-data horizon (31 days) and its first day.
            assert jobs == [("usage_daily", "32 days", "01:00:00"), ("usage_hourly", "32 days", "01:00:00")]
        else:
            kind = conn.execute(
                "SELECT relkind FROM pg_class WHERE oid = 'tokenscale.usage_daily'::regclass"
            ).fetchone()
            assert kind == ("r",)


def _replay(pipeline: ExportPipeline, label: str, order: list[int] | None = None, tenant: str = "t") -> None:
    bodies = capture_bodies(label)
    for i in order if order is not None else range(len(bodies)):
        signal, raw, _ = bodies[i]
        result = pipeline.export(signal, REQUEST_TYPES[signal].FromString(raw.read_bytes()), tenant)  # type: ignore[arg-type]
        assert result.rejected == 0, result.error_message


@pytest.fixture
def pipeline(db_url: str) -> Any:
    migrate(db_url)
    pool = open_pool(db_url)
    try:
        yield ExportPipeline(UsageWriter(pool))
    finally:
        pool.close()


@pytest.mark.parametrize("label", PROTOBUF_LABELS)
def test_replayed_capture_equals_ground_truth(pipeline: ExportPipeline, db_url: str, label: str) -> None:
    _replay(pipeline, label)
    assert daily_by_model(db_url) == expected_daily(label)
    assert_rollups_match_events(db_url)


@pytest.mark.parametrize("label", ["claude-tools-slow-cumulative-httpproto", "gemini-tools-grpc"])
def test_any_arrival_order_with_retries_is_counted_once(
    pipeline: ExportPipeline, db_url: str, label: str
) -> None:
    n = len(capture_bodies(label))
    rng = random.Random(label)
    for _ in range(3):
        order = list(range(n)) * 2  # every export retried once
        rng.shuffle(order)
        _replay(pipeline, label, order)
    assert daily_by_model(db_url) == expected_daily(label)
    assert_rollups_match_events(db_url)


def test_tenants_are_counted_apart(pipeline: ExportPipeline, db_url: str) -> None:
    _replay(pipeline, "claude-grpc", tenant="a")
    _replay(pipeline, "claude-grpc", tenant="b")
    assert daily_by_model(db_url, tenant="a") == expected_daily("claude-grpc")
    assert daily_by_model(db_url, tenant="b") == expected_daily("claude-grpc")
    assert_rollups_match_events(db_url)


def test_each_request_is_one_record_from_its_best_carrier(pipeline: ExportPipeline, db_url: str) -> None:
    _replay(pipeline, "claude-tools-grpc")  # the spans arrive before the events
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT source, counted, amended_at IS NOT NULL, count(*) FROM tokenscale.usage_events "
            "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ).fetchall()
    assert rows == [
        ("claude_code.api_request", False, False, 3),  # the events, kept as evidence
        ("claude_code.api_request", True, True, 3),  # the span records, amended with the events' values
        ("claude_code.metrics", False, False, 10),  # token and cost points: no residual beyond the records
    ]
    assert_rollups_match_events(db_url)


def test_a_day_boundary_splits_usage_by_utc_day(db_url: str) -> None:
    migrate(db_url)
    midnight = 1_795_392_000 * 10**9  # 2026-11-23T00:00:00Z
    events = [
        UsageEvent(
            time_ns=midnight + offset,
            tenant="t",
            carrier="gen_ai.span",
            rank=3,
            tool="app",
            stream="s",
            service_name="app",
            dedupe_key=offset.to_bytes(16, "big", signed=True),
            model="m",
            requests=1,
            input_tokens=10,
        )
        for offset in (-1_000, 0, 1_000)
    ]
    pool = open_pool(db_url)
    try:
        UsageWriter(pool).write(MappingResult(events=events))
    finally:
        pool.close()
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT to_char(day AT TIME ZONE 'UTC', 'YYYY-MM-DD'), requests, input_tokens "
            "FROM tokenscale.usage_daily ORDER BY day"
        ).fetchall()
    assert rows == [("2026-11-22", 1, 10), ("2026-11-23", 2, 20)]


def test_unreachable_database_is_a_retryable_error() -> None:
    pool = open_pool("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1", min_size=0)
    try:
        writer = UsageWriter(pool, timeout=1.0)
        event = UsageEvent(
            time_ns=1_795_392_000 * 10**9,
            tenant="t",
            carrier="c",
            rank=1,
            tool="x",
            stream="s",
            service_name="x",
            dedupe_key=b"k",
        )
        with pytest.raises(RetryableError):
            writer.write(MappingResult(events=[event]))
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("label", "tool", "activity"),
    [
        (
            "claude-tools-grpc",
            "claude_code",
            {"sessions": 1, "tool_calls": 2, "lines_added": 4, "edits_accepted": 1},
        ),
        (
            "gemini-tools-grpc",
            "gemini_cli",
            {"sessions": 1, "tool_calls": 2, "lines_added": 3, "file_operations": 1},
        ),
    ],
)
def test_ai_tool_daily_metrics_from_otlp(
    pipeline: ExportPipeline, db_url: str, label: str, tool: str, activity: dict[str, int]
) -> None:
    _replay(pipeline, label)
    _replay(pipeline, label)  # retried: still counted once
    truth = expected_daily(label)
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT tool, is_active, metrics, input_tokens, output_tokens, cache_read_tokens, "
            "cache_write_tokens, source FROM tokenscale.ai_tool_daily_metrics"
        ).fetchall()
    [(got_tool, active, metrics, input_tokens, output_tokens, cache_read, cache_write, source)] = rows
    assert (got_tool, active, source) == (tool, True, "otlp")
    # The LLM API answered with exactly these tool calls (llm-requests.jsonl: response.tool_calls).
    assert {k: metrics[k] for k in activity} == activity
    assert metrics["requests"] == sum(row["requests"] for row in truth.values())
    assert input_tokens == sum(row["input_tokens"] for row in truth.values())
    assert output_tokens == sum(row["output_tokens"] for row in truth.values())
    assert cache_read == sum(row["cache_read_tokens"] for row in truth.values())
    assert cache_write == sum(row["cache_write_tokens"] for row in truth.values())


def test_rollups_stay_exact_over_hours_days_retries_and_amendments(db_url: str) -> None:
    """Random usage over three days (priced and unpriced, two tenants): 250 requests each reported by
    one to three per-request carriers (ranks 1-3, one identity), plus aggregate increments per
    stream, written in shuffled exports with retries. Each request is one record with its best
    carrier's values; usage_daily and usage_hourly equal the raw sums of counted rows."""
    rng = random.Random(7)
    start_ns = 1_790_000_000 * 10**9
    events: list[UsageEvent] = []
    best: dict[bytes, int] = {}
    for request in range(250):
        identity = b"req" + request.to_bytes(4, "big")
        time_ns = start_ns + rng.randrange(3 * 86_400 * 10**9)
        tenant = rng.choice(("a", "b"))
        stream = f"s{rng.randrange(6)}"
        user = rng.choice((None, "u1@example.com", "u2@example.com"))
        model = rng.choice(("m1", "m2", None))
        ranks = rng.sample((1, 2, 3), rng.randrange(1, 4))
        best[identity] = min(ranks)
        for rank in ranks:
            events.append(
                UsageEvent(
                    time_ns=time_ns + rank * 1000,
                    tenant=tenant,
                    carrier=f"carrier-{rank}",
                    rank=rank,
                    tool="tool",
                    stream=stream,
                    service_name="svc",
                    dedupe_key=identity + bytes([rank]),
                    user_email=user,
                    provider="openai",
                    model=model,
                    requests=1,
                    input_tokens=rng.randrange(1000),
                    cache_read_tokens=rng.randrange(100),
                    output_tokens=rng.randrange(500),
                    reasoning_tokens=rng.randrange(50),
                    cost_usd=rng.choice((None, rng.random() / 7)),
                    identity=identity,
                )
            )
    for i in range(150):  # aggregate increments (metric points): reconciled against the records
        events.append(
            UsageEvent(
                time_ns=start_ns + rng.randrange(3 * 86_400 * 10**9),
                tenant=rng.choice(("a", "b")),
                carrier="metrics",
                rank=10,
                tool="tool",
                stream=f"s{rng.randrange(6)}",
                service_name="svc",
                dedupe_key=b"agg" + i.to_bytes(4, "big"),
                provider="openai",
                model=rng.choice(("m1", "m2")),
                input_tokens=rng.randrange(3000),
                output_tokens=rng.randrange(900),
                aggregate=True,
            )
        )
    rng.shuffle(events)
    exports = [events[i : i + 40] for i in range(0, len(events), 40)]
    order = list(range(len(exports))) + rng.sample(range(len(exports)), 5)  # 5 retried exports
    rng.shuffle(order)
    migrate(db_url)
    pool = open_pool(db_url)
    try:
        writer = UsageWriter(pool)
        for i in order:
            writer.write(MappingResult(events=exports[i]))
    finally:
        pool.close()
    with psycopg.connect(db_url) as conn:
        counted = conn.execute(
            "SELECT dedupe_key, source FROM tokenscale.usage_events WHERE counted AND source <> %s",
            (RECONCILED,),
        ).fetchall()
        stored = conn.execute(
            "SELECT count(*) FROM tokenscale.usage_events WHERE source <> %s", (RECONCILED,)
        )
        assert stored.fetchone() == (len(events),)
    # One record per request (the row of whichever carrier came first), with its best carrier's values.
    assert sorted((bytes(k)[:-1], source) for k, source in counted) == sorted(
        (i, f"carrier-{r}") for i, r in best.items()
    )
    assert_rollups_match_events(db_url)
