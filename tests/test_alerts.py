"""Budget alerts end to end: usage stored by the real writer, real databases, a local webhook receiver."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tokenscale.alerts import (
    AlertService,
    DeliveryPolicy,
    add_webhook,
    alert_payload,
    deliver_due,
    list_alerts,
    list_webhooks,
    read_windows,
    redact_url,
    remove_webhook,
    set_thresholds,
)
from tokenscale.api.budgets import set_budget
from tokenscale.api.scoped_budgets import BudgetWindow, Identity, check_budgets, create_budget
from tokenscale.mapping import MappingResult, UsageEvent
from tokenscale.store import migrate
from tokenscale.store.writer import UsageWriter, open_pool

TENANT = "acme"
USER = "ana@example.com"
HOUR = timedelta(hours=1)
FAST = DeliveryPolicy(retry_seconds=0.05, max_attempts=4, timeout=5)


@dataclass
class WebhookReceiver:
    """A local HTTP server taking webhook POSTs: answers ``fail_first`` requests 500, then 200."""

    fail_first: int = 0
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = 500 if len(receiver.answered) < receiver.fail_first else 200
                receiver.answered.append(status)
                if status == 200:
                    receiver.requests.append((dict(self.headers.items()), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/alerts"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def pool(db_url: str) -> Iterator[ConnectionPool]:
    migrate(db_url)
    p = open_pool(db_url)
    try:
        yield p
    finally:
        p.close()


_n = [0]


def write(pool: ConnectionPool, at: datetime, tokens: int, *, user: str = USER, cost: float = 0.0) -> None:
    """One request's usage at ``at``, stored by the writer as an OTLP export's is."""
    _n[0] += 1
    time_ns = int(at.timestamp() * 10**9)
    event = UsageEvent(
        time_ns=time_ns,
        tenant=TENANT,
        carrier="gen_ai.span",
        rank=1,
        tool="claude_code",
        stream=f"s{_n[0]}",
        service_name="claude-code",
        dedupe_key=hashlib.blake2b(f"{_n[0]}/{time_ns}".encode(), digest_size=16).digest(),
        requests=1,
        user_email=user,
        model="claude-sonnet-4-5",
        input_tokens=tokens,
        cost_usd=cost or None,
    )
    UsageWriter(pool).write(MappingResult(events=[event]))


def user_budget(pool: ConnectionPool, limit: int, hours: int) -> str:
    with pool.connection() as conn:
        budget = create_budget(
            conn, TENANT, "user", USER, [BudgetWindow("tokens", Decimal(limit), hours * 3600)]
        )
    return budget.id


def base_time() -> datetime:
    """A whole minute shortly before now: events and evaluations are placed around it."""
    return datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)


def test_an_alert_fires_once_per_crossing_and_again_after_the_window_rolls(
    pool: ConnectionPool, hook: WebhookReceiver
) -> None:
    budget_id = user_budget(pool, 1000, 2)
    with pool.connection() as conn:
        add_webhook(conn, TENANT, hook.url, "json")
    service = AlertService(pool, policy=FAST)
    t0 = base_time()
    write(pool, t0 - timedelta(minutes=90), 300)
    assert service.run_once(t0).fired == []  # 30%
    write(pool, t0 - timedelta(minutes=10), 250)
    first = service.run_once(t0).fired  # 55%: the 50% threshold
    assert [(a.percent, a.used, a.limit) for a in first] == [(50, 550, 1000)]
    # Evaluated again, later, by a restarted service: nothing new.
    assert AlertService(pool, policy=FAST).run_once(t0 + timedelta(minutes=1)).fired == []
    write(pool, t0 + timedelta(minutes=2), 300)
    second = service.run_once(t0 + timedelta(minutes=3)).fired  # 85%: the 80% threshold
    assert [(a.percent, a.used) for a in second] == [(80, 850)]
    # 35 minutes on, the first 300 tokens have rolled out of the 2-hour window: 55%, 80% re-armed.
    assert service.run_once(t0 + timedelta(minutes=35)).fired == []
    write(pool, t0 + timedelta(minutes=36), 300)
    third = service.run_once(t0 + timedelta(minutes=37)).fired  # 85% again: 80% fires again
    assert [(a.percent, a.used) for a in third] == [(80, 850)]
    assert service.run_once(t0 + timedelta(minutes=38)).fired == []
    bodies = [body for _, body in hook.requests]
    assert [(b["threshold"], b["used"], b["limit"], b["budgetId"], b["scopeValue"]) for b in bodies] == [
        (50, 550, 1000, budget_id, USER),
        (80, 850, 1000, budget_id, USER),
        (80, 850, 1000, budget_id, USER),
    ]
    keys = [b["idempotencyKey"] for b in bodies]
    assert len(set(keys)) == 3
    assert [headers["Idempotency-Key"] for headers, _ in hook.requests] == keys
    assert hook.answered == [200, 200, 200]
    # The window as the budget check answers it, at the same moment: the same usage.
    with pool.connection() as conn:
        check = check_budgets(conn, TENANT, Identity(user=USER), now=t0 + timedelta(minutes=37))
        readings = read_windows(conn, t0 + timedelta(minutes=37))
    assert [w["used"] for w in check["windows"]] == [850]
    assert [r.used for r in readings] == [850]
    assert bodies[2]["windowStart"] == check["windows"][0]["windowStart"]
    stored = [(a.percent, a.deliveries[0]["status"]) for a in reversed(list_alerts_of(pool))]
    assert stored == [(50, "delivered"), (80, "delivered"), (80, "delivered")]


def list_alerts_of(pool: ConnectionPool) -> list[Any]:
    with pool.connection() as conn:
        return list_alerts(conn, TENANT)


def test_a_receiver_failing_twice_gets_the_alert_once_on_retry(pool: ConnectionPool) -> None:
    hook = WebhookReceiver(fail_first=2)
    try:
        user_budget(pool, 100, 1)
        with pool.connection() as conn:
            add_webhook(conn, TENANT, hook.url, "slack")
        service = AlertService(pool, policy=FAST)
        t0 = base_time()
        write(pool, t0 - timedelta(minutes=1), 100)
        report = service.run_once(t0)
        assert len(report.fired) == 1
        assert (report.deliveries.delivered, report.deliveries.retried) == (0, 1)
        [alert] = list_alerts_of(pool)
        assert alert.deliveries[0]["status"] == "pending"
        assert alert.deliveries[0]["lastError"] == "HTTP 500"
        delivered = 0
        for _ in range(100):
            delivered += deliver_due(pool, FAST).delivered
            if delivered:
                break
            threading.Event().wait(0.05)
        # Nothing more is due, however often the senders look.
        for _ in range(3):
            assert deliver_due(pool, FAST).delivered == 0
        assert hook.answered == [500, 500, 200]
        assert len(hook.requests) == 1
        headers, body = hook.requests[0]
        assert set(body) == {"text", "idempotency_key"}
        assert body["text"].startswith(
            ":warning: tokenscale budget alert: user ana@example.com has used 100% of the 1-hour token "
            "budget (100 tokens of 100 tokens); the budget is spent."
        )
        assert headers["Idempotency-Key"] == body["idempotency_key"] == alert.idempotency_key
        [after] = list_alerts_of(pool)
        assert (after.deliveries[0]["status"], after.deliveries[0]["attempts"]) == ("delivered", 3)
        # One evaluation crossed 50, 80 and 100% at once: one alert, for the highest.
        assert after.percent == 100
        assert after.message.endswith("Also crossed: 50%, 80%.")
    finally:
        hook.stop()


def test_a_delivery_that_keeps_failing_is_given_up_and_shown(
    pool: ConnectionPool, caplog: pytest.LogCaptureFixture
) -> None:
    hook = WebhookReceiver(fail_first=100)
    try:
        user_budget(pool, 100, 1)
        with pool.connection() as conn:
            add_webhook(conn, TENANT, hook.url, "json")
        policy = DeliveryPolicy(retry_seconds=0.02, max_attempts=3, timeout=5)
        write(pool, base_time(), 150)
        assert len(AlertService(pool, policy=policy).run_once(base_time() + timedelta(minutes=1)).fired) == 1
        for _ in range(100):
            deliver_due(pool, policy)
            [alert] = list_alerts_of(pool)
            if alert.deliveries[0]["status"] != "pending":
                break
            threading.Event().wait(0.03)
        assert hook.answered == [500, 500, 500]
        assert (alert.deliveries[0]["status"], alert.deliveries[0]["attempts"]) == ("failed", 3)
        assert alert.deliveries[0]["lastError"] == "HTTP 500"
        assert "failed after 3 attempts, giving up: HTTP 500" in caplog.text
        assert hook.url not in caplog.text  # a webhook's URL may hold a secret: never logged whole
    finally:
        hook.stop()


def test_two_services_evaluating_at_once_fire_once(db_url: str, hook: WebhookReceiver) -> None:
    migrate(db_url)
    pools = [open_pool(db_url), open_pool(db_url)]
    try:
        user_budget(pools[0], 1000, 3)
        with pools[0].connection() as conn:
            add_webhook(conn, TENANT, hook.url, "json")
        t0 = base_time()
        write(pools[0], t0 - timedelta(minutes=3), 900)
        services = [AlertService(p, policy=FAST) for p in pools]
        results: list[int] = []
        barrier = threading.Barrier(2)

        def run(service: AlertService) -> None:
            barrier.wait()
            for minute in range(5):
                results.append(len(service.run_once(t0 + timedelta(minutes=minute)).fired))

        threads = [threading.Thread(target=run, args=(s,)) for s in services]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sum(results) == 1
        for _ in range(3):
            deliver_due(pools[1], FAST)
        assert [b["threshold"] for _, b in hook.requests] == [80]
    finally:
        for p in pools:
            p.close()


def test_thresholds_usd_windows_and_the_company_budget(pool: ConnectionPool, hook: WebhookReceiver) -> None:
    with pool.connection() as conn:
        budget = create_budget(
            conn,
            TENANT,
            "tenant",
            None,
            [BudgetWindow("usd", Decimal("10"), 24 * 3600), BudgetWindow("tokens", Decimal(10000), 3600)],
        )
        assert set_thresholds(conn, TENANT, budget.id, [90, "25", 25]) == (Decimal(25), Decimal(90))
        with pytest.raises(LookupError):
            set_thresholds(conn, TENANT, "00000000-0000-0000-0000-000000000001", [50])
        with pytest.raises(ValueError, match="above 0"):
            set_thresholds(conn, TENANT, budget.id, [0])
        set_budget(conn, TENANT, 4000, 1)
        add_webhook(conn, TENANT, hook.url, "json")
    t0 = base_time()
    write(pool, t0 - timedelta(hours=3), 3000, cost=3.0)
    fired = AlertService(pool, policy=FAST).run_once(t0).fired
    got = sorted((a.budget_id == budget.id, a.unit, a.window_seconds, a.percent) for a in fired)
    # usd 24 h: 30% crosses 25; tokens 1 h: the usage is 3 h old, nothing; company 1 day: 75% crosses 50.
    assert got == [(False, "tokens", 86400, 50), (True, "usd", 86400, 25)]
    usd = next(a for a in fired if a.unit == "usd")
    assert usd.used == Decimal("3") and usd.scope == "tenant"
    assert "tenant acme has used 25% of the 1-day USD budget (3.00 USD of 10.00 USD)" in usd.message
    assert sorted(b["budgetId"] for _, b in hook.requests) == sorted([budget.id, "company"])


def test_the_alert_carries_the_forecast(pool: ConnectionPool) -> None:
    user_budget(pool, 10000, 24)
    t0 = base_time().replace(minute=0)
    # A steady 1,000 tokens an hour for 5 hours (one request every 6 minutes): 5,000 of 10,000.
    for i in range(50):
        write(pool, t0 - timedelta(hours=5) + i * timedelta(minutes=6), 100)
    [alert] = AlertService(pool, policy=FAST).run_once(t0).fired
    assert alert.percent == 50
    assert alert.rate_per_hour == pytest.approx(1000.0)
    assert alert.exhausted_at is not None
    # 5,000 left at 1,000 an hour: 5 hours from now, within 5%.
    assert (alert.exhausted_at - t0).total_seconds() == pytest.approx(5 * 3600, rel=0.05)
    assert "at this rate it runs out in 5 h" in alert.message
    payload = alert_payload(alert, "json")
    assert payload["forecastExhaustedAt"] is not None
    assert payload["ratePerHour"] == pytest.approx(1000.0)


def test_webhooks_are_per_tenant_and_their_urls_are_redacted(pool: ConnectionPool) -> None:
    secret = "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX1234"
    with pool.connection() as conn:
        hook = add_webhook(conn, TENANT, secret, "slack")
        assert add_webhook(conn, TENANT, secret, "slack").id == hook.id  # again: the same one
        add_webhook(conn, "globex", "http://127.0.0.1:9/x", "json")
        for bad in ("ftp://example.com/x", "https://example.com/\x00x", "https://example.com/a b"):
            with pytest.raises(ValueError, match="http"):
                add_webhook(conn, TENANT, bad, "json")
        with pytest.raises(ValueError, match="format"):
            add_webhook(conn, TENANT, "https://example.com/x", "xml")
        assert [w.url for w in list_webhooks(conn, TENANT)] == [secret]
        assert hook.as_json()["url"] == "https://hooks.slack.com/…1234"
        assert redact_url("http://127.0.0.1:9") == "http://127.0.0.1:9"
        assert not remove_webhook(conn, hook.id, "globex")
        assert remove_webhook(conn, hook.id, TENANT)
        assert not remove_webhook(conn, "not-a-uuid")
        assert [w.tenant for w in list_webhooks(conn)] == ["globex"]


def test_no_budget_windows_no_alerts(db_url: str) -> None:
    migrate(db_url)
    with psycopg.connect(db_url) as conn:
        assert read_windows(conn, datetime.now(UTC)) == []


def test_the_alerts_command(db_url: str, hook: WebhookReceiver, capsys: pytest.CaptureFixture[str]) -> None:
    from tokenscale.cli import main  # noqa: PLC0415

    db = ["--database-url", db_url]
    assert main(["alerts", "webhooks", "add", TENANT, hook.url, "--format", "slack", *db]) == 0
    hook_id = capsys.readouterr().out.split()[0]
    assert main(["alerts", "webhooks", "list", *db]) == 0
    port = hook.url.split(":")[2].split("/")[0]
    assert capsys.readouterr().out == f"{hook_id}  {TENANT}  slack  http://127.0.0.1:{port}/…erts\n"
    assert main(["alerts", "webhooks", "add", TENANT, "ftp://x", *db]) == 1
    assert "not an http(s) URL" in capsys.readouterr().err
    pool = open_pool(db_url)
    try:
        budget_id = user_budget(pool, 1000, 1)
        write(pool, datetime.now(UTC) - timedelta(minutes=2), 700)
    finally:
        pool.close()
    assert main(["alerts", "thresholds", "set", TENANT, budget_id, "60", "95", *db]) == 0
    assert capsys.readouterr().out == f"{TENANT} {budget_id}: 60% 95%\n"
    assert main(["alerts", "thresholds", "set", TENANT, "nope", "60", *db]) == 1
    assert capsys.readouterr().err == "tokenscale: tenant 'acme' has no budget 'nope'\n"
    assert main(["alerts", "run", *db]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "evaluated 1 budget window(s): 1 alert(s) fired"
    assert out[1].startswith(
        f"  {TENANT}  user {USER} has used 60% of the 1-hour token budget (700 tokens of 1,000"
    )
    assert out[2] == "deliveries: 1 delivered, 0 to retry, 0 failed"
    assert main(["alerts", "list", *db]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[1] == f"    -> http://127.0.0.1:{port}/…erts [slack] delivered after 1 attempt(s)"
    assert main(["alerts", "list", "--json", *db]) == 0
    [alert] = json.loads(capsys.readouterr().out)
    assert (alert["threshold"], alert["used"], alert["deliveries"][0]["status"]) == (60, 700, "delivered")
    assert main(["alerts", "webhooks", "remove", hook_id, *db]) == 0
    assert main(["alerts", "webhooks", "remove", hook_id, *db]) == 1
    assert [body["text"][:40] for _, body in hook.requests] == [":warning: tokenscale budget alert: user "]


def test_every_scope_reads_what_the_budget_check_answers(pool: ConnectionPool) -> None:
    t0 = base_time()

    def event(at: datetime, tokens: int, cost: float, **fields: Any) -> UsageEvent:
        _n[0] += 1
        time_ns = int(at.timestamp() * 10**9)
        return UsageEvent(
            time_ns=time_ns,
            tenant=TENANT,
            carrier="gen_ai.span",
            rank=1,
            tool=fields.pop("tool", "claude_code"),
            stream=f"s{_n[0]}",
            service_name="svc",
            dedupe_key=hashlib.blake2b(f"e{_n[0]}/{time_ns}".encode(), digest_size=16).digest(),
            requests=1,
            input_tokens=tokens,
            cost_usd=cost,
            **fields,
        )

    events = [
        event(
            t0 - timedelta(minutes=30), 100, 0.5, user_email=USER, model="m1", attributes={"team.id": "core"}
        ),
        # matched by user id; the team attribute is a number: no team budget counts it
        event(t0 - timedelta(hours=5), 200, 1.0, user_id=USER, model="m2", attributes={"team.id": 7}),
        event(t0 - timedelta(hours=30), 400, 2.0, user_email="bob@example.com", tool="codex", model="m1"),
        event(
            t0 - timedelta(minutes=59), 800, 4.0, user_email="bob@example.com", attributes={"team.id": "7"}
        ),
        # counted once for ana although both columns name her
        event(t0 - timedelta(minutes=10), 1600, 8.0, user_email=USER, user_id=USER, tool="codex"),
    ]
    UsageWriter(pool).write(MappingResult(events=events))
    windows = [
        BudgetWindow("tokens", Decimal(100000), 3600),
        BudgetWindow("usd", Decimal(1000), 6 * 3600),
        BudgetWindow("tokens", Decimal(100000), 48 * 3600),
    ]
    scopes = [("user", USER), ("user", "bob@example.com"), ("team", "core"), ("team", "7"), ("tool", "codex"),
              ("model", "m1"), ("tenant", None)]  # fmt: skip
    with pool.connection() as conn:
        for scope, value in scopes:
            create_budget(conn, TENANT, scope, value, windows)
        readings = read_windows(conn, t0)
        got = {(r.scope, r.scope_value, r.unit, r.window_seconds): r.used for r in readings}
        for identity in (
            Identity(user=USER, team="core", tool="codex", model="m1"),
            Identity(user="bob@example.com", team="7"),
        ):
            for w in check_budgets(conn, TENANT, identity, now=t0)["windows"]:
                key = (w["scope"], w["scopeValue"], w["unit"], w["windowSeconds"])
                assert got[key] == Decimal(str(w["used"])), key
    assert got[("user", USER, "tokens", 3600)] == 1700
    assert got[("user", USER, "usd", 6 * 3600)] == Decimal("9.5")
    assert got[("team", "7", "tokens", 48 * 3600)] == 800
    assert got[("tenant", None, "tokens", 48 * 3600)] == 3100


def test_a_window_hovering_at_a_threshold_fires_once(pool: ConnectionPool, hook: WebhookReceiver) -> None:
    user_budget(pool, 1000, 1)
    with pool.connection() as conn:
        set_thresholds(conn, TENANT, list_windows_budget(conn), [80])
        add_webhook(conn, TENANT, hook.url, "json")
    service = AlertService(pool, policy=FAST)
    t0 = base_time()
    write(pool, t0 - timedelta(minutes=50), 500)
    write(pool, t0 - timedelta(minutes=20), 310)
    fired = [len(service.run_once(t0).fired)]  # 810: 81%
    write(pool, t0 + timedelta(minutes=5), 480)
    fired.append(len(service.run_once(t0 + timedelta(minutes=9)).fired))  # 1,290: 129%
    # The first 500 roll out: 790 (79%, below 80% but not below 76%), then 20 more: 81% again.
    fired.append(len(service.run_once(t0 + timedelta(minutes=11)).fired))
    write(pool, t0 + timedelta(minutes=12), 20)
    fired.append(len(service.run_once(t0 + timedelta(minutes=13)).fired))
    # The 310 roll out: 500 (50%) re-arms; 320 more (82%) fires again.
    fired.append(len(service.run_once(t0 + timedelta(minutes=41)).fired))
    write(pool, t0 + timedelta(minutes=42), 320)
    fired.append(len(service.run_once(t0 + timedelta(minutes=43)).fired))
    assert fired == [1, 0, 0, 0, 0, 1]
    assert [b["threshold"] for _, b in hook.requests] == [80, 80]


def list_windows_budget(conn: psycopg.Connection[Any]) -> str:
    [reading] = read_windows(conn, datetime.now(UTC))
    return reading.budget_id


def test_an_unreachable_database_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio  # noqa: PLC0415
    import socket  # noqa: PLC0415

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pool = open_pool(f"postgresql://nobody@127.0.0.1:{port}/none", connect_timeout=2)
    service = AlertService(pool, interval=0.2, policy=DeliveryPolicy(retry_seconds=0.2, timeout=0.3))

    async def briefly() -> None:
        task = asyncio.create_task(service.run())
        await asyncio.sleep(3)
        task.cancel()

    try:
        caplog.set_level("INFO", logger="tokenscale.alerts")
        started = time.monotonic()
        asyncio.run(briefly())
        assert time.monotonic() - started < 6  # no thread left waiting on the database at the end
    finally:
        pool.close(timeout=1)
    warnings = [r.getMessage() for r in caplog.records if r.name == "tokenscale.alerts"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("budget alerts: the database is unavailable (")
