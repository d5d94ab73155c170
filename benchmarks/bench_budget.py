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

The same is done for the scoped check (:func:`tokenscale.api.scoped_budgets.check_budgets`, behind
``GET /v1/budgets/check``) with **10,000 budgets defined** (:data:`SCOPED_BUDGETS`: a tenant
budget, one per tool and per model, and user budgets for every user of the data set and for users
without usage, each with a 5-hour token, a 7-day USD and a 30-day token window): each call checks a
user, one of the tools and one of the models (16 windows), rotating over the data set's users. Its
answers are compared with raw sums of ``usage_events`` per window.

This times the functions behind the endpoints on one database connection, not the HTTP layer.
It skips with a message while the budget module (:data:`CANDIDATE_MODULES`) does not exist.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
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
from benchmarks.bench_reports import MODELS, TENANT, TOOLS, dataset, generate

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

#: Budgets defined for the scoped check (all of the benchmark's tenant).
SCOPED_BUDGETS: Final = 10_000
_SCOPED_TOKENS: Final = "input_tokens + cache_read_tokens + cache_write_tokens + output_tokens"
_SCOPED_FILTERS: Final = {
    "tenant": "TRUE",
    "user": "coalesce(user_email, user_id) = %(v)s",
    "tool": "tool = %(v)s",
    "model": "model = %(v)s",
}

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


def define_scoped_budgets(url: str, count: int) -> int:
    """``count`` budgets of ``TENANT``, three windows each; how many were made."""
    from tokenscale.api.scoped_budgets import BudgetWindow, create_budget  # noqa: PLC0415

    windows = [
        BudgetWindow("tokens", Decimal(10**12), 5 * 3600),
        BudgetWindow("usd", Decimal(10**9), 7 * 86400),
        BudgetWindow("tokens", Decimal(10**12), 30 * 86400),
    ]
    specs: list[tuple[str, str | None]] = [("tenant", None)]
    specs += [("tool", t) for t in TOOLS] + [("model", m) for m in MODELS]
    specs += [("user", f"user{u}@example.com") for u in range(count - len(specs))]
    with psycopg.connect(url, autocommit=True) as conn:
        for scope, value in specs:
            create_budget(conn, TENANT, scope, value, windows)
        conn.execute("ANALYZE tokenscale.scoped_budgets; ANALYZE tokenscale.scoped_budget_windows")
    return len(specs)


def _identity(i: int, users: int) -> Any:
    from tokenscale.api.scoped_budgets import Identity  # noqa: PLC0415

    return Identity(
        user=f"user{i % users}@example.com", tool=TOOLS[i % len(TOOLS)], model=MODELS[i % len(MODELS)]
    )


def scoped_check(conn: psycopg.Connection[Any], i: int, users: int) -> dict[str, Any]:
    """One scoped check (the ``i``-th identity of the rotation)."""
    from tokenscale.api.scoped_budgets import check_budgets  # noqa: PLC0415

    return check_budgets(conn, TENANT, _identity(i, users))


def scoped_equal_to_raw(conn: psycopg.Connection[Any], i: int, users: int) -> bool:
    """Whether the ``i``-th check's every window equals the raw sum of usage_events (one snapshot)."""
    from tokenscale.api.scoped_budgets import check_budgets  # noqa: PLC0415

    identity = _identity(i, users)
    with conn.transaction():
        answer = check_budgets(conn, TENANT, identity)
        now = conn.execute("SELECT now()").fetchone()
        assert now is not None
        for w in answer["windows"]:
            row = conn.execute(
                f"SELECT coalesce(sum({_SCOPED_TOKENS}), 0), coalesce(sum(cost_usd), 0) "
                "FROM tokenscale.usage_events WHERE tenant = %(t)s AND counted "
                "AND time >= %(lo)s AND time <= %(hi)s AND " + _SCOPED_FILTERS[w["scope"]],
                {
                    "t": TENANT,
                    "v": w["scopeValue"],
                    "lo": now[0] - timedelta(seconds=w["windowSeconds"]),
                    "hi": now[0],
                },
            ).fetchone()
            assert row is not None
            raw = int(row[0]) if w["unit"] == "tokens" else float(Decimal(row[1]))
            if w["used"] != raw:
                return False
    return len(answer["windows"]) == 13


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


def under_load(
    ctx: Context, server: DbServer, url: str, budgets: Any, today: datetime, users: int
) -> dict[str, Any]:
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
        scoped_latencies: list[float] = []
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
            scoped_equal = scoped_equal_to_raw(conn, 7, users)
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
                t_call = time.perf_counter()
                scoped_check(conn, len(scoped_latencies), users)
                scoped_latencies.append((time.perf_counter() - t_call) * 1000)
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
        "scoped_latencies_ms": scoped_latencies,
        "scoped_equal_to_raw": scoped_equal,
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
        defined = define_scoped_budgets(url, 500 if ctx.quick else SCOPED_BUDGETS)
        with psycopg.connect(url, autocommit=True) as conn:
            scoped_check(conn, 0, ds.users)  # warm-up, untimed
            scoped_equal = scoped_equal_to_raw(conn, 3, ds.users)
            rotation = itertools.count(1)
            scoped_single = _time_calls(lambda: scoped_check(conn, next(rotation), ds.users), calls)
        load = under_load(ctx, server, url, budgets, today, ds.users)
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
    scoped_lat = load["scoped_latencies_ms"]
    for label, values, same in (
        (f"check_budgets, {defined:,} budgets, 1 connection", scoped_single, scoped_equal),
        (
            f"check_budgets, {defined:,} budgets, {CHECKS_PER_S:.0f}/s, ingest at {LOAD_SHARE:.0%} of full",
            scoped_lat,
            load["scoped_equal_to_raw"],
        ),
    ):
        out.rows.append(
            {
                **common,
                "check": label,
                "p50 ms": percentile(values, 50),
                "p95 ms": percentile(values, 95),
                "p99 ms": percentile(values, 99),
                "checks/s": len(values) / (sum(values) / 1000),
                "answer equal to raw": same,
            }
        )
    out.notes.append(
        f"{server.backend}: check_budgets answers 13 windows per call (tenant, a user, a tool and a model, "
        f"3 windows each, plus the company budget's 30 days) with {defined:,} budgets defined, "
        "each answer equal to the raw sums of usage_events"
    )
    out.notes.append(
        f"{server.backend}: {budgets.__name__}.budget_status over a {WINDOW_DAYS}-day rolling window; "
        f"{ds.users} users x {ds.days} days, {events:,} events"
    )
    if not equal:
        out.notes.append(f"{server.backend}: budget_status and the raw sum disagree ({status} vs {raw})")
    full, loaded = load["full"], load["loaded"]
    load_errors = load["warm_up_errors"][:3] + full["error_samples"] + loaded["error_samples"]
    answers_ok = load["answer_equal_to_raw"] and load["scoped_equal_to_raw"] and scoped_equal
    if ctx.quick and not (load["rows_ok"] and answers_ok):  # the smoke test checks answers
        raise RuntimeError(
            f"budget under load: {load['rows_stored']} rows stored of {load['rows_expected']} sent, "
            f"answers equal to raw: {load['answer_equal_to_raw']}, {scoped_equal}, "
            f"{load['scoped_equal_to_raw']}, errors: "
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
