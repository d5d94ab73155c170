"""Budget alerts: how long one evaluation round of every budget window takes.

``U`` users (2,000; 200 with ``--quick``) each have a budget with two windows (24 hours in tokens,
7 days in USD); the tenant has a budget with two windows and a company budget: ``2U + 3`` windows.
The last 7 days hold a request every 4 hours per user (42 per user, stored by the writer).
One round (:meth:`tokenscale.alerts.AlertService.evaluate`) reads every window with its
usage per hour, computes its forecast and compares it with its thresholds; the first round also
creates the alert state and fires the alerts of the windows already over a threshold. Reported: the
first round, then the median and slowest of further rounds (nothing new to fire), and the time per
window.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final

import psycopg

from benchmarks._common import BenchOutput, Context, median
from benchmarks._servers import DbServer, database

__all__ = ["NAME", "run"]

NAME: Final = "alerts"
TENANT: Final = "bench"
EVENTS_PER_USER: Final = 42
ROUNDS: Final = 5


def _events(users: int, now: datetime) -> list[object]:
    from tokenscale.mapping import UsageEvent  # noqa: PLC0415

    out: list[object] = []
    for u in range(users):
        for k in range(EVENTS_PER_USER):
            at = now - timedelta(hours=4 * k, minutes=u % 240)
            time_ns = int(at.timestamp() * 10**9)
            out.append(
                UsageEvent(
                    time_ns=time_ns,
                    tenant=TENANT,
                    carrier="gen_ai.span",
                    rank=1,
                    tool="claude_code",
                    stream=f"u{u}",
                    service_name="claude-code",
                    dedupe_key=hashlib.blake2b(f"{u}/{k}".encode(), digest_size=16).digest(),
                    requests=1,
                    user_email=f"user{u}@example.com",
                    model="claude-sonnet-4-5",
                    input_tokens=1000 + u % 7,
                    output_tokens=200,
                    cost_usd=0.01,
                )
            )
    return out


def run(ctx: Context, server: DbServer) -> BenchOutput:
    from tokenscale.alerts import AlertService  # noqa: PLC0415
    from tokenscale.api.budgets import set_budget  # noqa: PLC0415
    from tokenscale.api.scoped_budgets import BudgetWindow, create_budget  # noqa: PLC0415
    from tokenscale.mapping import MappingResult  # noqa: PLC0415
    from tokenscale.store.writer import UsageWriter, open_pool  # noqa: PLC0415

    users = 200 if ctx.quick else 2000
    out = BenchOutput()
    now = datetime.now(UTC)
    with database(server, "alerts") as url:
        pool = open_pool(url, max_size=2)
        try:
            events = _events(users, now)
            ctx.log(f"[alerts/{server.backend}] writing {len(events):,} events")
            writer = UsageWriter(pool)
            for i in range(0, len(events), 5000):
                writer.write(MappingResult(events=events[i : i + 5000]))  # type: ignore[arg-type]
            with psycopg.connect(url, autocommit=True) as conn:
                for u in range(users):
                    # Limits put about a third of the users over 50% of their day.
                    create_budget(
                        conn,
                        TENANT,
                        "user",
                        f"user{u}@example.com",
                        [
                            BudgetWindow("tokens", Decimal(6000 + 3 * u), 86400),
                            BudgetWindow("usd", Decimal(1), 7 * 86400),
                        ],
                    )
                create_budget(
                    conn,
                    TENANT,
                    "tenant",
                    None,
                    [
                        BudgetWindow("tokens", Decimal(10**9), 86400),
                        BudgetWindow("usd", Decimal(10**4), 7 * 86400),
                    ],
                )
                set_budget(conn, TENANT, 2**31 - 1, 30)
            service = AlertService(pool)
            t0 = time.perf_counter()
            first = service.evaluate()
            first_s = time.perf_counter() - t0
            rounds = []
            for _ in range(ROUNDS):
                t0 = time.perf_counter()
                report = service.evaluate()
                rounds.append(time.perf_counter() - t0)
                assert report.fired == [], "a steady round fired"
        finally:
            pool.close()
    windows = first.windows
    out.rows.append(
        {
            "backend": server.backend,
            "budgets": users + 2,
            "windows": windows,
            "events": len(events),
            "alerts fired (first round)": len(first.fired),
            "first round s": round(first_s, 2),
            "round p50 s": round(median(rounds), 2),
            "round max s": round(max(rounds), 2),
            "ms per window": round(1000 * median(rounds) / windows, 3),
        }
    )
    out.data = {"users": users, "windows": windows, "first_s": first_s, "rounds_s": rounds}
    return out
