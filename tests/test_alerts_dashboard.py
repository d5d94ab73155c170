"""The dashboard's alerts panel: recent alerts and forecasts in the summary JSON and on the page."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from otlp_clients import background_loop
from test_alerts import TENANT, USER, WebhookReceiver, write
from test_dashboard import CHROMIUM, _Dom, chromium, dashboard_server, get_json
from tokenscale.alerts import AlertService, DeliveryPolicy, add_webhook
from tokenscale.api.scoped_budgets import BudgetWindow, create_budget
from tokenscale.store import migrate
from tokenscale.store.writer import open_pool


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    with background_loop() as event_loop:
        yield event_loop


def test_alerts_panel(db_url: str, loop: asyncio.AbstractEventLoop) -> None:
    migrate(db_url)
    hook = WebhookReceiver()
    pool = open_pool(db_url)
    try:
        with pool.connection() as conn:
            budget = create_budget(
                conn, TENANT, "user", USER, [BudgetWindow("tokens", Decimal(10000), 24 * 3600)]
            )
            add_webhook(conn, TENANT, hook.url, "json")
        now = datetime.now(UTC)
        # 1,000 tokens an hour for the last 6 hours: 6,000 of 10,000.
        for i in range(60):
            write(pool, now - timedelta(minutes=6 * i + 3), 100)
        [fired] = AlertService(pool, policy=DeliveryPolicy(retry_seconds=60)).run_once().fired
    finally:
        pool.close()
    try:
        with dashboard_server(db_url, loop) as receiver:
            status, body = get_json(receiver.http_port, "/api/dashboard/summary?days=7")
            assert status == 200
            panel = body["alerts"]
            assert panel["available"] is True and panel["forecasts_skipped"] is False
            [item] = panel["items"]
            assert (item["alertId"], item["threshold"], item["used"], item["delivery"]) == (
                fired.id,
                50,
                6000,
                "delivered",
            )
            [forecast] = panel["forecasts"]
            assert (forecast["budgetId"], forecast["used"], forecast["percentUsed"]) == (
                budget.id,
                6000,
                60.0,
            )
            assert forecast["ratePerHour"] == pytest.approx(1000, rel=0.05)
            runs_out = datetime.fromisoformat(forecast["forecastExhaustedAt"].replace("Z", "+00:00"))
            assert (runs_out - now).total_seconds() == pytest.approx(4 * 3600, rel=0.05)
            _, other = get_json(receiver.http_port, "/api/dashboard/summary?days=7&tenant=globex")
            assert other["alerts"] == {
                "available": True,
                "items": [],
                "forecasts": [],
                "forecasts_skipped": False,
            }
            if CHROMIUM is None:
                pytest.skip("no Chromium to render the page")
            dumped = chromium(f"http://127.0.0.1:{receiver.http_port}/?days=7", "--dump-dom")
            assert dumped.returncode == 0, dumped.stderr[-2000:]
            dom = _Dom()
            dom.feed(dumped.stdout)
            assert dom.body.get("data-loaded") == "true"
            assert fired.message in dom.cells
            assert f"user {USER}, 1-day" in dom.cells
            assert "6,000 tokens of 10,000 tokens (60%)" in dom.cells
            assert "delivered" in dom.cells
    finally:
        hook.stop()
