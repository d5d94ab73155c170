"""Budget-check latency: ``tokenscale.api.budgets.budget_status`` on realistic data.

The check a client or proxy makes before an AI request ("how much of its rolling token budget has
this company used?"). The last 60 days of the reports data set (2,000 users x 5 tools x 4 models at
full scale, see :mod:`benchmarks.bench_reports`) are generated, a 30-day budget is set, and:

* ``budget_status`` is timed one call at a time (p50/p95/p99), and by 4 threads with a connection
  each (checks/s, p95 under concurrency);
* the same number is computed from raw ``usage_events`` alone (one range scan over 30 days) for
  comparison, and the two answers are checked to be equal;
* **under load**: a receiver process (as in :mod:`benchmarks.bench_ingest`) ingests GenAI spans over
  gRPC into the same database, first flat out for a few seconds (its full rate), then throttled to
  half of that rate; meanwhile ``budget_status`` is called 20 times a second on one connection
  (p50/p95/p99), and the ingest rate achieved is reported beside it. The spans are dated
  ``WINDOW_DAYS + 5`` days ago, outside the budget's window, so they add contention (CPU, I/O, WAL,
  locks) but neither change the answer nor the rows a check reads.

This times the function behind the endpoint on one database connection, not the HTTP layer.
It skips with a message while the budget module (:data:`CANDIDATE_MODULES`) does not exist.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg

from benchmarks._common import (
    RESULTS_DIR,
    BenchOutput,
    Context,
    cpu_seconds,
    percentile,
    postgres_cpu_seconds,
)
from benchmarks._servers import DbServer, database
from benchmarks.bench_ingest import GenArgs, load_generator, serving, sizes_for
from benchmarks.bench_reports import TENANT, dataset, generate

__all__ = ["CANDIDATE_MODULES", "NAME", "run"]

NAME: Final = "budget"

#: Where the budget check is expected to live; the first importable one with ``budget_status`` is used.
CANDIDATE_MODULES: Final = ("tokenscale.api.budgets", "tokenscale.api.budget", "tokenscale.budget")
WINDOW_DAYS: Final = 30
DATA_DAYS: Final = 60
THREADS: Final = 4
#: Under load: the receiver's rate is throttled to this share of its full rate.
LOAD_SHARE: Final = 0.5
#: Under load: budget checks per second (one connection, paced).
CHECKS_PER_S: Final = 20.0

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


@dataclass(frozen=True)
class LoadPlan:
    full_seconds: float  # how long the receiver's full rate is measured
    load_seconds: float  # how long it runs throttled while the checks are timed
    settle_seconds: float  # throttled ingest before the first timed check


def load_plan(ctx: Context) -> LoadPlan:
    if ctx.quick:
        return LoadPlan(full_seconds=1.0, load_seconds=2.0, settle_seconds=0.3)
    return LoadPlan(full_seconds=12.0, load_seconds=30.0, settle_seconds=2.0)


def _ingest_summary(gen: dict[str, Any]) -> dict[str, Any]:
    seconds = gen["t_end"] - gen["t_start"]
    return {
        "seconds": seconds,
        "exports": gen["requests"],
        "rows": gen["rows"],
        "exports_per_s": gen["requests"] / seconds,
        "rows_per_s": gen["rows"] / seconds,
        "errors": gen["errors"],
        "error_samples": gen["error_samples"],
        "latency_p50_ms": percentile(gen["latencies_ms"], 50),
        "latency_p95_ms": percentile(gen["latencies_ms"], 95),
    }


def _count_day(url: str, day: datetime) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM tokenscale.usage_events WHERE time >= %s AND time < %s",
            (day, day + timedelta(days=1)),
        ).fetchone()
    return int(row[0]) if row else 0


def under_load(ctx: Context, server: DbServer, url: str, budgets: Any, today: datetime) -> dict[str, Any]:
    """``budget_status`` latency while a receiver ingests spans at ``LOAD_SHARE`` of its full rate.

    The receiver and the load generator are bench_ingest's (``serving``, ``load_generator``): GenAI
    spans over gRPC, ``sizes_for(ctx).streams`` streams. First the generator sends flat out for
    ``full_seconds`` (the full rate, in exports/s), then a fresh generator is throttled to
    ``LOAD_SHARE`` of that rate; after ``settle_seconds`` the checks are timed, paced at
    ``CHECKS_PER_S``, until shortly before the throttled run ends.
    """
    plan = load_plan(ctx)
    sizes = sizes_for(ctx)
    day = today - timedelta(days=WINDOW_DAYS + 5)  # outside the budget's window
    base_ns = int((day + timedelta(hours=10)).timestamp()) * 1_000_000_000
    rows_before = _count_day(url, day)
    log_dir = RESULTS_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"receiver-budget-{server.backend}.log"
    log_file.unlink(missing_ok=True)
    tag = f"[budget/{server.backend}]"
    warm_rows = 0
    warm_errors: list[str] = []
    with serving(url, log_file) as (receiver_pid, grpc_port, _http_port):
        args = GenArgs(
            signal="traces",
            transport="grpc",
            port=grpc_port,
            streams=sizes.streams,
            requests=0,
            warmup=sizes.warmup,
            quick=ctx.quick,
            base_ns=base_ns,
            duration=plan.full_seconds,
        )
        ctx.log(f"{tag} receiver at full rate for {plan.full_seconds:.0f} s")
        with load_generator(args) as gen:
            warm_rows += gen.warm_rows
            warm_errors += gen.warm_errors
            gen.go()
            full = _ingest_summary(gen.result(plan.full_seconds + 120))
        target = full["exports_per_s"] * LOAD_SHARE
        ctx.log(
            f"{tag} full rate {full['rows_per_s']:,.0f} spans/s ({full['exports_per_s']:.2f} exports/s); "
            f"budget_status under ingest throttled to {target:.2f} exports/s for {plan.load_seconds:.0f} s"
        )
        # Counters of their own: the full-rate run's records again would be dropped as duplicates.
        throttled = replace(args, duration=plan.load_seconds, rate=target, first_counter=0x0100_0000)
        latencies: list[float] = []
        with psycopg.connect(url, autocommit=True) as conn, load_generator(throttled) as gen:
            warm_rows += gen.warm_rows
            warm_errors += gen.warm_errors
            budgets.budget_status(conn, TENANT)  # warm-up, untimed
            gen.go()
            t_go = time.monotonic()
            time.sleep(plan.settle_seconds)
            # One answer under load, checked against the raw sum in the same transaction (same now()).
            with conn.transaction():
                status = budgets.budget_status(conn, TENANT)
                raw = conn.execute(_RAW_WINDOW, {"tenant": TENANT, "days": WINDOW_DAYS}).fetchone()
            equal = raw is not None and int(raw[0]) == int(status.tokens_used)
            cpu_r0, cpu_p0 = cpu_seconds(receiver_pid), postgres_cpu_seconds(server.postmaster_pid)
            t0 = time.monotonic()
            stop_at = t_go + plan.load_seconds - 0.5  # every timed check falls inside the throttled run
            next_at = t0
            while (now := time.monotonic()) < stop_at:
                if now < next_at:
                    time.sleep(next_at - now)
                t_call = time.perf_counter()
                budgets.budget_status(conn, TENANT)
                latencies.append((time.perf_counter() - t_call) * 1000)
                next_at += 1 / CHECKS_PER_S
            window = time.monotonic() - t0
            cpu_r1, cpu_p1 = cpu_seconds(receiver_pid), postgres_cpu_seconds(server.postmaster_pid)
            loaded = _ingest_summary(gen.result(plan.load_seconds + 120))
    stored = _count_day(url, day) - rows_before
    expected = warm_rows + full["rows"] + loaded["rows"]
    return {
        "plan": {
            "full_seconds": plan.full_seconds,
            "load_seconds": plan.load_seconds,
            "settle_seconds": plan.settle_seconds,
            "streams": sizes.streams,
            "load_share": LOAD_SHARE,
            "checks_per_s_target": CHECKS_PER_S,
            "spans_dated": day.date().isoformat(),
        },
        "full": full,
        "target_exports_per_s": target,
        "loaded": loaded,
        "latencies_ms": latencies,
        "checks_per_s": len(latencies) / window if window > 0 else float("nan"),
        "receiver_cores": (cpu_r1 - cpu_r0) / window if window > 0 else float("nan"),
        "postgres_cores": (cpu_p1 - cpu_p0) / window if window > 0 else float("nan"),
        "answer_equal_to_raw": equal,
        "rows_stored": stored,
        "rows_expected": expected,
        "warm_up_errors": warm_errors,
        "rows_ok": stored == expected and not warm_errors and full["errors"] == 0 and loaded["errors"] == 0,
    }


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
            budgets.set_budget(conn, TENANT, budgets.MAX_TOKEN_LIMIT, WINDOW_DAYS)
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
        ctx.log(f"[budget/{server.backend}] budget_status under ingest")
        load = under_load(ctx, server, url, budgets, today)
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
    lat = load["latencies_ms"]
    out.rows.append(
        {
            **common,
            "check": f"budget_status, 1 connection, {CHECKS_PER_S:.0f}/s, ingest at {LOAD_SHARE:.0%} of full",
            "p50 ms": percentile(lat, 50),
            "p95 ms": percentile(lat, 95),
            "p99 ms": percentile(lat, 99),
            "checks/s": load["checks_per_s"],
            "answer equal to raw": load["answer_equal_to_raw"],
            "ingest spans/s": load["loaded"]["rows_per_s"],
            "of full rate": load["loaded"]["rows_per_s"] / load["full"]["rows_per_s"],
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
    full, loaded = load["full"], load["loaded"]
    load_errors = load["warm_up_errors"][:3] + full["error_samples"] + loaded["error_samples"]
    if ctx.quick and not (load["rows_ok"] and load["answer_equal_to_raw"]):  # the smoke test checks answers
        raise RuntimeError(
            f"budget under load: {load['rows_stored']} rows stored of {load['rows_expected']} sent, "
            f"answer equal to raw: {load['answer_equal_to_raw']}, errors: "
            f"{load_errors}"
        )
    out.notes.append(
        f"{server.backend} under load: receiver full rate {full['rows_per_s']:,.0f} spans/s "
        f"({full['exports_per_s']:.2f} exports/s over {load['plan']['streams']} gRPC streams, "
        f"{full['seconds']:.0f} s), then throttled to {load['target_exports_per_s']:.2f} exports/s: achieved "
        f"{loaded['rows_per_s']:,.0f} spans/s ({loaded['exports_per_s']:.2f} exports/s, export p50/p95 "
        f"{loaded['latency_p50_ms']:.0f}/{loaded['latency_p95_ms']:.0f} ms) for {loaded['seconds']:.0f} s; "
        f"during the {len(load['latencies_ms'])} checks the receiver used {load['receiver_cores']:.2f} "
        f"cores and PostgreSQL {load['postgres_cores']:.2f}; spans dated {load['plan']['spans_dated']} "
        f"(outside the window); rows stored {load['rows_stored']:,} of {load['rows_expected']:,} sent"
        + ("" if load["rows_ok"] else f" -- NOT OK: errors {load_errors}")
    )
    out.data = {
        "single_ms": single,
        "concurrent_ms": concurrent,
        "raw_ms": raw_ms,
        "under_load": load,
        "generation": gen,
    }
    return out
