"""Budget-check latency: ``tokenscale.api.budgets.budget_status`` on realistic data.

The check a client or proxy makes before an AI request ("how much of its rolling token budget has
this company used?"). The last 60 days of the reports data set (2,000 users x 5 tools x 4 models at
full scale, see :mod:`benchmarks.bench_reports`) are generated, a 30-day budget is set, and:

* ``budget_status`` is timed one call at a time (p50/p95/p99), and by 4 threads with a connection
  each (checks/s, p95 under concurrency);
* the same number is computed from raw ``usage_events`` alone (one range scan over 30 days) for
  comparison, and the two answers are checked to be equal.

This times the function behind the endpoint on one database connection, not the HTTP layer.
It skips with a message while the budget module (:data:`CANDIDATE_MODULES`) does not exist.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg

from benchmarks._common import BenchOutput, Context, percentile
from benchmarks._servers import DbServer, database
from benchmarks.bench_reports import TENANT, dataset, generate

__all__ = ["CANDIDATE_MODULES", "NAME", "run"]

NAME: Final = "budget"

#: Where the budget check is expected to live; the first importable one with ``budget_status`` is used.
CANDIDATE_MODULES: Final = ("tokenscale.api.budgets", "tokenscale.api.budget", "tokenscale.budget")
WINDOW_DAYS: Final = 30
DATA_DAYS: Final = 60
THREADS: Final = 4

_RAW_WINDOW: Final = (
    "SELECT coalesce(sum(input_tokens + cache_read_tokens + cache_write_tokens + output_tokens), 0) "
    "FROM tokenscale.usage_events WHERE tenant = %(tenant)s AND counted "
    "AND time >= now() - make_interval(days => %(days)s) AND time <= now()"
)


def _budget_module() -> Any | None:
    for name in CANDIDATE_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                continue
        except ModuleNotFoundError:  # the parent package is missing
            continue
        module = importlib.import_module(name)
        if hasattr(module, "budget_status") and hasattr(module, "set_budget"):
            return module
    return None


def _time_calls(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def run(ctx: Context, server: DbServer) -> BenchOutput:
    budgets = _budget_module()
    if budgets is None:
        return BenchOutput(
            skipped=f"the budget check is not there yet (none of {', '.join(CANDIDATE_MODULES)} "
            "has budget_status and set_budget)"
        )
    ds = replace(dataset(ctx), days=DATA_DAYS if not ctx.quick else 40)
    calls = 20 if ctx.quick else 300
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    out = BenchOutput()
    with database(server, "budget") as url:
        gen = generate(url, ds, today - timedelta(days=ds.days), ctx.log)
        ctx.log(f"[budget/{server.backend}] timing budget_status")
        with psycopg.connect(url, autocommit=True) as conn:
            budgets.set_budget(conn, TENANT, 10**15, WINDOW_DAYS)
            status = budgets.budget_status(conn, TENANT)  # warm-up, untimed
            raw = conn.execute(_RAW_WINDOW, {"tenant": TENANT, "days": WINDOW_DAYS}).fetchone()
            equal = raw is not None and int(raw[0]) == int(status.tokens_used)
            single = _time_calls(lambda: budgets.budget_status(conn, TENANT), calls)
            raw_ms = _time_calls(
                lambda: conn.execute(_RAW_WINDOW, {"tenant": TENANT, "days": WINDOW_DAYS}).fetchone(),
                max(5, calls // 10),
            )
        per_thread: list[list[float]] = [[] for _ in range(THREADS)]
        barrier = threading.Barrier(THREADS + 1)

        def worker(i: int) -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                budgets.budget_status(conn, TENANT)
                barrier.wait()
                per_thread[i] = _time_calls(lambda: budgets.budget_status(conn, TENANT), calls)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        barrier.wait()
        t0 = time.monotonic()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - t0
    concurrent = [x for values in per_thread for x in values]
    events = gen["sizes"]["usage_events"]["rows"]
    common = {"backend": server.backend, "events (60 days)": events}
    out.rows.append(
        {
            **common,
            "check": "budget_status, 1 connection",
            "p50 ms": percentile(single, 50),
            "p95 ms": percentile(single, 95),
            "p99 ms": percentile(single, 99),
            "checks/s": len(single) / (sum(single) / 1000),
            "answer equal to raw": equal,
        }
    )
    out.rows.append(
        {
            **common,
            "check": f"budget_status, {THREADS} threads",
            "p50 ms": percentile(concurrent, 50),
            "p95 ms": percentile(concurrent, 95),
            "p99 ms": percentile(concurrent, 99),
            "checks/s": len(concurrent) / elapsed,
            "answer equal to raw": equal,
        }
    )
    out.rows.append(
        {
            **common,
            "check": "same sum from raw usage_events",
            "p50 ms": percentile(raw_ms, 50),
            "p95 ms": percentile(raw_ms, 95),
            "p99 ms": percentile(raw_ms, 99),
            "checks/s": len(raw_ms) / (sum(raw_ms) / 1000),
            "answer equal to raw": equal,
        }
    )
    out.notes.append(
        f"{server.backend}: {budgets.__name__}.budget_status over a {WINDOW_DAYS}-day rolling window; "
        f"{ds.users} users x {ds.days} days, {events:,} events"
    )
    if not equal:
        out.notes.append(f"{server.backend}: budget_status and the raw sum disagree ({status} vs {raw})")
    out.data = {"single_ms": single, "concurrent_ms": concurrent, "raw_ms": raw_ms, "generation": gen}
    return out
