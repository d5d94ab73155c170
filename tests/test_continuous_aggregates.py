"""Continuous aggregates on TimescaleDB community stay exact: late data, retractions, compression,
retention; and the late-data horizon, the bounded refresh plans and the preload check everywhere.

The community tests need ``$TOKENSCALE_TEST_TIMESCALEDB_URL`` (skipped without it). They let the
service's refresher do its work (no manual refresh) and run the refresh policies as the job
scheduler would (``CALL run_job``), comparing the aggregates with the raw counted events each time.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from dbservers import Server, default_timescaledb_root, fresh_database, start_timescaledb
from ground_truth import capture_bodies
from otlp_clients import background_loop, grpc_export, running
from tokenscale.cli import main
from tokenscale.config import ConfigError, load_settings
from tokenscale.mapping import MappingResult, UsageEvent
from tokenscale.pipeline import ExportPipeline
from tokenscale.store import migrate
from tokenscale.store.backend import ExtensionNotPreloadedError
from tokenscale.store.refresh import (
    Refresher,
    RefreshWindow,
    plan_refresh,
    retention_safe_start,
    within_stored,
)
from tokenscale.store.retention import apply_policies
from tokenscale.store.writer import UsageWriter, open_pool
from usage_db import assert_rollups_match_events, daily_by_model, expected_daily, run_refresh_policies

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
NS = 10**9


# --- everywhere: settings, refresh plans -----------------------------------------------------------


def test_retention_not_longer_than_the_horizon_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"'retention_days' \(31\) must be greater than 'late_data_days' \(31\)"
    ):
        load_settings(environ={"TOKENSCALE_RETENTION_DAYS": "31"})
    with pytest.raises(
        ConfigError, match=r"'retention_days' \(20\) must be greater than 'late_data_days' \(30\)"
    ):
        load_settings(environ={"TOKENSCALE_RETENTION_DAYS": "20", "TOKENSCALE_LATE_DATA_DAYS": "30"})
    with pytest.raises(ConfigError, match="'late_data_days': must be at least 1"):
        load_settings(environ={"TOKENSCALE_LATE_DATA_DAYS": "0"})
    settings = load_settings(environ={"TOKENSCALE_RETENTION_DAYS": "32"})
    assert (settings.late_data_days, settings.retention_days) == (31, 32)
    assert load_settings(environ={}).late_data_days == 31


def test_the_command_refuses_retention_shorter_than_the_horizon(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENSCALE_RETENTION_DAYS", "7")
    assert main(["migrate", "--database-url", "postgresql://nobody@127.0.0.1:1/none"]) == 2
    assert "'retention_days' (7) must be greater than 'late_data_days' (31)" in capsys.readouterr().err


def test_refresh_plans_are_bounded_by_the_current_bucket_and_retention() -> None:
    now = datetime(2026, 12, 3, 8, 30, tzinfo=UTC)
    plans = plan_refresh(now - timedelta(days=40, hours=3), now, now=now)
    assert plans == [
        RefreshWindow("usage_daily", datetime(2026, 10, 24, tzinfo=UTC), datetime(2026, 12, 3, tzinfo=UTC)),
        RefreshWindow(
            "usage_hourly", datetime(2026, 10, 24, 5, tzinfo=UTC), datetime(2026, 12, 3, 8, tzinfo=UTC)
        ),
    ]
    # Retention of 33 days may have dropped every chunk up to 2026-10-31 (the day holding now - 33 days).
    assert retention_safe_start(now, 33) == datetime(2026, 11, 1, tzinfo=UTC)
    plans = plan_refresh(now - timedelta(days=40), now - timedelta(days=2), now=now, retention_days=33)
    assert [(w.start, w.end) for w in plans] == [
        (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC)),
        (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, 9, tzinfo=UTC)),
    ]
    # Only the current buckets: nothing for usage_daily (today), the past hours for usage_hourly.
    assert plan_refresh(now - timedelta(hours=2), now, now=now) == [
        RefreshWindow(
            "usage_hourly", datetime(2026, 12, 3, 6, tzinfo=UTC), datetime(2026, 12, 3, 8, tzinfo=UTC)
        )
    ]
    assert plan_refresh(now - timedelta(minutes=5), now, now=now) == []
    # Cut to the days usage_events has chunks for: two stored runs of days, a dropped gap between.
    stored = [
        (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC)),
        (datetime(2026, 11, 10, tzinfo=UTC), datetime(2026, 12, 4, tzinfo=UTC)),
    ]
    cut = within_stored(plan_refresh(datetime(2026, 10, 1, tzinfo=UTC), now, now=now), stored)
    assert [(w.aggregate, w.start.day, w.end.month, w.end.day) for w in cut] == [
        ("usage_daily", 1, 11, 3),
        ("usage_daily", 10, 12, 3),
        ("usage_hourly", 1, 11, 3),
        ("usage_hourly", 10, 12, 3),
    ]


# --- the receiver's late-data horizon (every back end) ----------------------------------------------


def _span_request(when: datetime, n: int, *, model: str = "gpt-4o-mini", tokens: int = 100) -> bytes:
    """An OTLP trace export of one GenAI span at ``when`` (span ``n``)."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="app")))
    start = int(when.timestamp() * NS)
    span = rs.scope_spans.add().spans.add(
        name=f"chat {model}",
        trace_id=n.to_bytes(16, "big"),
        span_id=n.to_bytes(8, "big"),
        start_time_unix_nano=start,
        end_time_unix_nano=start + NS,
    )
    span.attributes.extend(
        [
            KeyValue(key="gen_ai.operation.name", value=AnyValue(string_value="chat")),
            KeyValue(key="gen_ai.request.model", value=AnyValue(string_value=model)),
            KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=tokens)),
            KeyValue(key="gen_ai.usage.output_tokens", value=AnyValue(int_value=tokens // 10)),
        ]
    )
    return request.SerializeToString()


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    with background_loop() as event_loop:
        yield event_loop


def _stored(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM tokenscale.usage_events").fetchone()
    assert row is not None
    return int(row[0])


def test_usage_older_than_the_horizon_is_rejected_naming_it(
    db_url: str, loop: asyncio.AbstractEventLoop
) -> None:
    migrate(db_url)
    pool = open_pool(db_url)
    now = datetime.now(UTC)
    try:
        with running(loop, ExportPipeline(UsageWriter(pool), late_data_days=31)) as receiver:
            fresh = grpc_export(receiver.grpc_port, "traces", _span_request(now - timedelta(days=30), 1))
            old = grpc_export(
                receiver.grpc_port, "traces", _span_request(now - timedelta(days=31, minutes=1), 2)
            )
    finally:
        pool.close()
    assert fresh.partial_success.rejected_spans == 0
    assert old.partial_success.rejected_spans == 1
    assert "older than the late-data horizon of 31 days" in old.partial_success.error_message
    assert "setting late_data_days" in old.partial_success.error_message
    assert _stored(db_url) == 1


def test_a_server_offering_timescaledb_without_preloading_it_is_refused_clearly(
    tsdb_server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_timescaledb(default_timescaledb_root(), tmp_path, preload=False)
    try:
        with fresh_database(server) as url:
            with pytest.raises(
                ExtensionNotPreloadedError, match="offers the timescaledb extension but does not"
            ):
                migrate(url)
            assert main(["migrate", "--database-url", url]) == 1
            err = capsys.readouterr().err
            assert (
                "tokenscale: the database server offers the timescaledb extension but does not preload it"
                in err
            )
            assert "shared_preload_libraries = 'timescaledb'" in err
    finally:
        server.stop()


# --- TimescaleDB community --------------------------------------------------------------------------


@pytest.fixture
def community_url(community_server: Server) -> Iterator[str]:
    with fresh_database(community_server) as url:
        migrate(url)
        yield url


def _poll_until(check: Callable[[], None], timeout: float = 60.0) -> float:
    """Call ``check`` until it passes (re-raising its last failure after ``timeout`` s); seconds taken."""
    started = time.monotonic()
    while True:
        try:
            check()
            return time.monotonic() - started
        except AssertionError:
            if time.monotonic() - started > timeout:
                raise
            time.sleep(0.5)


def _daily(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT day, tenant, tool, user_email, provider, model, requests, input_tokens, output_tokens, "
            "cost_usd, events FROM tokenscale.usage_daily ORDER BY 1, 2, 3, 4, 5, 6"
        ).fetchall()


def _materialized_days(url: str) -> int:
    """Days of usage_daily read from its materialization (before the watermark)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(DISTINCT day) FROM tokenscale.usage_daily "
            "WHERE day < _timescaledb_functions.to_timestamp(_timescaledb_functions.cagg_watermark("
            "(SELECT mat_hypertable_id FROM _timescaledb_catalog.continuous_agg "
            "WHERE user_view_name = 'usage_daily')))"
        ).fetchone()
    assert row is not None
    return int(row[0])


class _Service:
    """The service's write path on one database: receiver -> pipeline (late-data horizon) -> writer
    -> refresher, as ``tokenscale serve`` composes it."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop, *, retention_days: int = 0) -> None:
        self.url = url
        self.pool = open_pool(url)
        self.refresher = Refresher(url, late_data_days=31, retention_days=retention_days).start()
        writer = UsageWriter(self.pool, on_commit=self.refresher.note)
        self._receiver = running(loop, ExportPipeline(writer, late_data_days=31))
        self.receiver = self._receiver.__enter__()
        self._n = 0

    def send(
        self, when: datetime, *, model: str = "gpt-4o-mini", tokens: int = 100, n: int | None = None
    ) -> None:
        if n is None:
            self._n += 1
            n = self._n
        response = grpc_export(
            self.receiver.grpc_port, "traces", _span_request(when, n, model=model, tokens=tokens)
        )
        assert response.partial_success.rejected_spans == 0, response.partial_success.error_message

    def close(self) -> None:
        self._receiver.__exit__(None, None, None)
        self.refresher.close()
        self.pool.close()


@pytest.fixture
def service(community_url: str, loop: asyncio.AbstractEventLoop) -> Iterator[_Service]:
    svc = _Service(community_url, loop)
    try:
        yield svc
    finally:
        svc.close()


def _send_days(service: _Service, days: tuple[int, ...], now: datetime, *, per_day: int = 3) -> None:
    for d in days:
        for i in range(per_day):
            # Spread over hours and models; "now" stays a few minutes in the past.
            when = now - d * DAY - timedelta(minutes=5) - i * 7 * HOUR * (1 if d else 0)
            service.send(
                when, model=("gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-pro")[i % 3], tokens=100 + d + i
            )


def test_aggregates_stay_exact_through_refreshes_and_late_data(service: _Service) -> None:
    url = service.url
    now = datetime.now(UTC)
    _send_days(service, (0, 1, 2, 5, 10, 20), now)
    assert _stored(url) == 18
    # At once (real-time aggregation), and after every refresh policy has run (run_job), again.
    assert_rollups_match_events(url)
    with psycopg.connect(url) as conn:
        past_days = conn.execute(
            "SELECT count(DISTINCT date_trunc('day', time, 'UTC')) FROM tokenscale.usage_events "
            "WHERE time < date_trunc('day', now(), 'UTC')"
        ).fetchone()
    assert past_days is not None and past_days[0] >= 5
    assert _materialized_days(url) == past_days[0]  # every past day is read from the materialization
    # Late data into days already materialized: the refresher shows it within a minute, no manual step.
    _send_days(service, (1, 5, 12), now, per_day=2)
    assert _stored(url) == 24
    took = _poll_until(lambda: _assert_without_policies(url))
    assert took < 60
    assert service.refresher.runs >= 1 and service.refresher.failures == 0
    assert_rollups_match_events(url)  # and the policies agree


def _assert_without_policies(url: str) -> None:
    """The aggregates equal the raw sums, as they stand (no refresh here)."""
    assert_rollups_match_events(url, run_policies=False)


def _event(when: datetime, key: int, *, tokens: int = 1000) -> UsageEvent:
    """A request's usage row, as an import through the writer would store it."""
    return UsageEvent(
        time_ns=int(when.timestamp() * NS),
        tenant="t",
        carrier="gen_ai.span",
        rank=3,
        tool="app",
        stream=f"s{key}",
        service_name="app",
        dedupe_key=key.to_bytes(16, "big"),
        model="m",
        requests=1,
        input_tokens=tokens,
    )


CAPTURE = "claude-tools-grpc"  # Claude Code: spans, then the better carrier (events) of the same requests


def _replay(service: _Service, signals: tuple[str, ...]) -> None:
    """Send the capture's exports of ``signals`` (in that order) through the service's receiver."""
    for wanted in signals:
        for sig, raw, _ in capture_bodies(CAPTURE):
            if sig == wanted:
                response = grpc_export(service.receiver.grpc_port, sig, raw.read_bytes())
                assert not response.HasField("partial_success") or not response.partial_success.error_message


def test_a_better_carrier_in_materialized_days_shows_within_a_minute(service: _Service) -> None:
    url = service.url
    # The spans of a Claude Code session arrive first, and their day is materialized ...
    _replay(service, ("traces",))
    service.refresher.flush()
    assert run_refresh_policies(url) == 2
    assert _materialized_days(url) >= 1
    # ... then its events and metrics: the better carrier of the same requests changes what is
    # counted in that materialized day. The refresher shows it within a minute, no manual step.
    _replay(service, ("logs", "metrics"))
    took = _poll_until(lambda: _assert_without_policies(url))
    assert took < 60
    assert daily_by_model(url) == expected_daily(CAPTURE)  # the ground truth, then after the policies
    assert_rollups_match_events(url)


def test_compressed_chunks_stay_exact_for_retries_late_data_and_better_carriers(service: _Service) -> None:
    url = service.url
    now = datetime.now(UTC)
    for d in range(2, 9):
        service.send(now - d * DAY, n=d, tokens=100 + d)
    _replay(service, ("traces",))
    service.refresher.flush()
    with psycopg.connect(url, autocommit=True) as conn:
        report = apply_policies(conn, migrate(url).backend, retention_days=0, compress_after_days=2)
        assert report.compression == "after 2 days (columnstore policy)"
        conn.execute(
            "SELECT compress_chunk(c) "
            "FROM show_chunks('tokenscale.usage_events', older_than => now() - interval '1 day') c"
        )
        compressed = conn.execute(
            "SELECT count(*) FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'usage_events' AND is_compressed"
        ).fetchone()
    assert compressed == (8,)  # days 2..8 and the capture's day
    assert_rollups_match_events(url)
    # Retried exports into compressed chunks are not counted twice ...
    for d in range(2, 9):
        service.send(now - d * DAY, n=d, tokens=100 + d)
    _replay(service, ("traces",))
    # ... late data into them is added, and the better carrier changes rows stored in them.
    service.send(now - 3 * DAY, n=100, tokens=7)
    _replay(service, ("logs", "metrics"))
    _poll_until(lambda: _assert_without_policies(url))
    by_model = daily_by_model(url)
    assert by_model.pop("gpt-4o-mini") == {
        "requests": 8,
        "input_tokens": sum(100 + d for d in range(2, 9)) + 7,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": sum((100 + d) // 10 for d in range(2, 9)),
        "reasoning_tokens": 0,
    }
    assert by_model == expected_daily(CAPTURE)
    assert_rollups_match_events(url)


def test_daily_aggregates_survive_retention_and_later_refreshes(
    community_url: str,
    loop: asyncio.AbstractEventLoop,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = community_url
    now = datetime.now(UTC)
    # History written directly (as an import would): days 0..40, materialized by the refresher.
    service = _Service(url, loop, retention_days=0)
    try:
        writer = UsageWriter(service.pool, on_commit=service.refresher.note)
        writer.write(
            MappingResult(events=[_event(now - d * DAY - HOUR, d, tokens=100 + d) for d in range(41)])
        )
        service.refresher.flush()
    finally:
        service.close()
    before = _daily(url)
    assert len(before) == 41
    assert_rollups_match_events(url)
    with psycopg.connect(url, autocommit=True) as conn:
        apply_policies(conn, migrate(url).backend, retention_days=33, compress_after_days=0)
        job = conn.execute(
            "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention'"
        ).fetchone()
        assert job is not None
        conn.execute(f"CALL run_job({int(job[0])})")
        left = conn.execute(
            "SELECT count(DISTINCT date_trunc('day', time, 'UTC')) FROM tokenscale.usage_events"
        ).fetchone()
    assert left is not None and left[0] in (33, 34)  # the day holding now - 33 days may straddle the drop
    assert _daily(url) == before  # raw chunks dropped, daily aggregates kept
    # Later refreshes: the policies, the service's refresher after new data, and the operator's
    # command over a range reaching into the dropped days (clamped to the days still stored).
    assert run_refresh_policies(url) == 2
    service = _Service(url, loop, retention_days=33)
    try:
        service.send(now - 2 * DAY, tokens=5)
        service.refresher.flush()
    finally:
        service.close()
    start = (now - 45 * DAY).strftime("%Y-%m-%d")
    # Even without the retention setting, the command refreshes only the days still stored.
    assert main(["refresh", "--database-url", url, "--from", start]) == 0
    assert "may have been dropped" not in capsys.readouterr().out
    assert [r for r in _daily(url) if r[0] < now - 30 * DAY] == [r for r in before if r[0] < now - 30 * DAY]
    monkeypatch.setenv("TOKENSCALE_RETENTION_DAYS", "33")
    assert main(["refresh", "--database-url", url, "--from", start]) == 0
    out = capsys.readouterr().out
    assert (
        f"from {retention_safe_start(datetime.now(UTC), 33):%Y-%m-%d}: "
        "raw events before it may have been dropped" in out
    )
    assert "refreshed usage_daily" in out and "refreshed usage_hourly" in out
    migrate(url)  # materializes history from the oldest stored event: no dropped day
    after = _daily(url)
    day2 = (now - 2 * DAY).replace(hour=0, minute=0, second=0, microsecond=0)
    assert [r for r in after if r[0] != day2] == [r for r in before if r[0] != day2]
    assert [(r[6], r[7]) for r in after if r[0] == day2] == [(1, 5), (1, 102)]  # tenants default, t


def test_the_refresh_command_is_bounded_and_explains_other_back_ends(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = migrate(db_url).backend
    assert main(["refresh", "--database-url", db_url, "--from", "2026-01-02", "--to", "2026-01-01"]) == 2
    assert "--from must be before --to" in capsys.readouterr().err
    assert main(["refresh", "--database-url", db_url]) == 0
    out = capsys.readouterr().out
    if backend.keeps_rollups:
        assert (
            out == f"nothing to refresh: on {backend} tokenscale keeps usage_daily and usage_hourly "
            "exact itself\n"
        )
        return
    assert out == "nothing to refresh: the range holds no stored day before the current buckets\n"
    now = datetime.now(UTC)
    pool = open_pool(db_url)
    try:
        UsageWriter(pool).write(MappingResult(events=[_event(now - 3 * DAY, 1)]))
    finally:
        pool.close()
    assert main(["refresh", "--database-url", db_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    # The horizon up to now, cut to the one stored day (its chunk).
    day, next_day = (now - 3 * DAY).strftime("%Y-%m-%d"), (now - 2 * DAY).strftime("%Y-%m-%d")
    assert lines == [
        f"refreshed usage_daily {day}T00:00Z .. {next_day}T00:00Z",
        f"refreshed usage_hourly {day}T00:00Z .. {next_day}T00:00Z",
    ]
    assert_rollups_match_events(db_url)


def test_serve_keeps_aggregates_exact_with_no_manual_step(community_url: str) -> None:
    """The whole service, two worker processes (each with its refresher), on a community server:
    usage sent now and 1..20 days ago, then late data, read exactly from the aggregates."""
    from test_serve_workers import serving  # noqa: PLC0415 - the same `serve --workers` harness

    url = community_url
    now = datetime.now(UTC)
    with serving(url, 2) as served:
        port = served.grpc_port

        def send(when: datetime, n: int) -> Any:
            return grpc_export(port, "traces", _span_request(when, n, tokens=100 + n))

        n = 0
        for d in (0, 1, 2, 5, 10, 20):
            for hour in (0, 7):
                n += 1
                assert (
                    send(now - d * DAY - hour * HOUR - timedelta(minutes=2), n).partial_success.rejected_spans
                    == 0
                )
        refused = send(now - 40 * DAY, 999)
        assert refused.partial_success.rejected_spans == 1
        assert "older than the late-data horizon of 31 days" in refused.partial_success.error_message
        assert _stored(url) == 12
        assert_rollups_match_events(url)  # as sent, then after every refresh policy has run
        for d in (1, 5, 12):
            n += 1
            assert send(now - d * DAY - 3 * HOUR, n).partial_success.rejected_spans == 0
        assert _stored(url) == 15
        took = _poll_until(lambda: _assert_without_policies(url))
        assert took < 60
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0, served.log
    assert_rollups_match_events(url)
    with psycopg.connect(url) as conn:
        total = conn.execute("SELECT sum(requests), sum(input_tokens) FROM tokenscale.usage_daily").fetchone()
    assert total == (15, sum(100 + i for i in range(1, 16)))
