"""Report speed: the rollup (``usage_daily``) against the same answer computed from raw events.

A year of usage for 2,000 users x 5 tools x 4 models (~19 M events at full scale) is generated with
SQL ``generate_series`` straight into ``tokenscale.usage_events`` (ingest speed is not the point
here), and ``usage_daily`` is built from it with the same sums the writer keeps. Then, interleaved,
with a different window each time:

* ``30-day by user and tool``: the per-user, per-tool totals of 30 days (what a chargeback or
  leaderboard page shows);
* ``90-day daily series``: the org's daily totals over 90 days (the dashboard chart).

Each is timed from ``usage_daily`` and from raw ``usage_events``; p50/p95 and the raw/rollup ratio
are reported, and the two answers are checked to be identical.

Then, on the same data, :func:`listing_benchmarks` times the listing APIs through their own
functions (SQL and response items, no HTTP):

* the AI-metrics listing (``tokenscale.api.ai_metrics``) of the last 30 days, page 1 against page
  500 (20 rows a page; keyset paging should make the ratio ~1), each page checked against the same
  OFFSET query in plain SQL, with the count and the page query timed and EXPLAINed apart;
* a cursor walk over every page of one user's last 30 days of usage records
  (``tokenscale.api.usage_records``), checked to return each row exactly once.

The partitions (chunks) of those 30 days are VACUUMed first, so that index-only scans find their
pages all-visible as they would be on days-old data in production.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

import psycopg
from psycopg import sql

from benchmarks._common import BenchOutput, Context, Row, percentile
from benchmarks._servers import DbServer, database

__all__ = ["NAME", "TENANT", "DataSet", "dataset", "generate", "listing_benchmarks", "run"]

NAME: Final = "reports"

TOOLS: Final = ("claude_code", "codex", "gemini_cli", "copilot", "cursor")
SOURCES: Final = (
    "claude_code.api_request",
    "codex.sse_event",
    "gemini_cli.api_response",
    "gen_ai.span",
    "gen_ai.span",
)
MODELS: Final = ("claude-sonnet-4-5", "gpt-4.1", "gemini-2.5-pro", "claude-haiku-4-5")
PROVIDERS: Final = ("anthropic", "openai", "gcp.gemini", "anthropic")
TENANT: Final = "default"


@dataclass(frozen=True)
class DataSet:
    users: int
    days: int
    #: Events per active weekday per user are 0..max_per_day-1 (weekends a quarter of that).
    max_per_day: int
    queries: int

    @property
    def expected_events(self) -> int:
        weekday_mean = (self.max_per_day - 1) / 2
        return round(self.users * self.days * (5 * weekday_mean + 2 * weekday_mean / 4) / 7)


def dataset(ctx: Context) -> DataSet:
    if ctx.quick:
        return DataSet(users=20, days=100, max_per_day=9, queries=3)
    return DataSet(users=max(10, round(2000 * ctx.report_scale)), days=365, max_per_day=67, queries=10)


# One year ending yesterday (UTC); day d of the data set is START + d days.
_INSERT: Final = """
INSERT INTO tokenscale.usage_events (
    time, tenant, source, rank, counted, tool, stream, service_name, user_email, user_id, session_id,
    provider, model, operation, request_id, requests, input_tokens, cache_read_tokens,
    cache_write_tokens, output_tokens, reasoning_tokens, cost_usd, cost_source, duration_ms,
    attributes, dedupe_key)
SELECT
    %(start)s::timestamptz + d * INTERVAL '1 day' + ((k * 7919 + u * 104729) %% 86400) * INTERVAL '1 second',
    %(tenant)s, (%(sources)s::text[])[t + 1], 1, true, (%(tools)s::text[])[t + 1],
    'sess-' || u || '-' || d, (%(tools)s::text[])[t + 1], 'user' || u || '@example.com', 'u' || u,
    'sess-' || u || '-' || d, (%(providers)s::text[])[m + 1], (%(models)s::text[])[m + 1], 'chat',
    'req_' || d || '_' || u || '_' || k, 1, inp, cread, cwrite, outp, outp / 5 * (m %% 2),
    ((inp * 3 + outp * 15 + cread * 0.3 + cwrite * 3.75) / 1000000.0)::numeric(20, 10), 'reported',
    (k * 37 %% 30000)::float8,
    '{"service.version": "2.1.197", "terminal.type": "vscode", "os.type": "linux", "effort": "high"}',
    int8send((d::bigint * 5000 + u) * 256 + k)
FROM generate_series(%(day_from)s, %(day_to)s - 1) AS d
CROSS JOIN generate_series(0, %(users)s - 1) AS u
CROSS JOIN LATERAL generate_series(
    0, CASE WHEN extract(isodow FROM %(start)s::date + d) > 5
            THEN ((u * 37 + d * 11) %% %(max_per_day)s) / 4
            ELSE (u * 37 + d * 11) %% %(max_per_day)s END - 1) AS k
CROSS JOIN LATERAL (SELECT (u + d / 91 + CASE WHEN k %% 5 = 4 THEN 1 + u %% 3 ELSE 0 END) %% 5 AS t,
                           (u + d / 30 + CASE WHEN k %% 4 = 3 THEN 1 ELSE 0 END) %% 4 AS m,
                           500 + (k * 7919 + u * 13 + d * 7) %% 20000 AS inp,
                           (k * 104729 + u * 7) %% 60000 AS cread,
                           (k * 31 + d) %% 9000 AS cwrite,
                           50 + (k * 613 + u * 3 + d) %% 3000 AS outp) AS v
"""


def _build_rollup(table: str, bucket: str, keys: str) -> str:
    """Fills ``table`` with exactly the sums the writer keeps (store/writer.py), in one pass."""
    n_keys = keys.count(",") + 1
    return f"""
INSERT INTO tokenscale.{table} ({bucket}, {keys}, requests, input_tokens, cache_read_tokens,
    cache_write_tokens, output_tokens, reasoning_tokens, cost_usd, unpriced_events, events)
SELECT date_trunc('{bucket}', time, 'UTC'), {keys},
       sum(requests), sum(input_tokens), sum(cache_read_tokens), sum(cache_write_tokens),
       sum(output_tokens), sum(reasoning_tokens), sum(cost_usd),
       coalesce(sum(greatest(requests, 1)) FILTER (WHERE cost_usd IS NULL AND cost_source IS NULL
                        AND input_tokens + cache_read_tokens + cache_write_tokens + output_tokens > 0), 0),
       count(*)
FROM tokenscale.usage_events
WHERE counted AND time >= %(from)s AND time < %(to)s
GROUP BY {", ".join(str(i) for i in range(1, n_keys + 2))}
"""


_BUILD_DAILY: Final = _build_rollup("usage_daily", "day", "tenant, tool, user_email, provider, model")
_BUILD_HOURLY: Final = _build_rollup("usage_hourly", "hour", "tenant")


def _build_scoped(table: str, bucket: str, scopes: str) -> str:
    """The INSERT of one of the budget check's scoped rollups (the writer's sums per scope)."""
    return f"""
INSERT INTO tokenscale.{table}
SELECT {bucket}, tenant, k.scope, k.value,
       sum(requests), sum(input_tokens), sum(cache_read_tokens), sum(cache_write_tokens),
       sum(output_tokens), sum(reasoning_tokens), sum(cost_usd),
       coalesce(sum(greatest(requests, 1)) FILTER (WHERE cost_usd IS NULL AND cost_source IS NULL
                        AND input_tokens + cache_read_tokens + cache_write_tokens + output_tokens > 0), 0),
       count(*)
FROM tokenscale.usage_events
CROSS JOIN LATERAL (VALUES {scopes}) AS k (scope, value)
WHERE counted AND k.value IS NOT NULL AND time >= %(from)s AND time < %(to)s
GROUP BY 1, 2, 3, 4
"""


#: usage_scope_hourly (the budget check's tool, model and user hours).
_BUILD_SCOPED: Final = (
    _build_scoped(
        "usage_scope_hourly",
        "date_trunc('hour', time, 'UTC')",
        "('tool', tool), ('model', model), ('user', coalesce(user_email, user_id))",
    ),
)

_SUMS: Final = (
    "sum(requests)::bigint, sum(input_tokens)::bigint, sum(cache_read_tokens)::bigint, "
    "sum(cache_write_tokens)::bigint, sum(output_tokens)::bigint, sum(reasoning_tokens)::bigint, "
    "sum(cost_usd)"
)

_RAW_SERIES: Final = (
    f"SELECT date_trunc('day', time, 'UTC') AS day, {_SUMS} FROM tokenscale.usage_events "
    "WHERE counted AND tenant = %(tenant)s AND time >= %(start)s AND time < %(end)s "
    "GROUP BY 1 ORDER BY 1"
)

#: name -> (rollup table, rollup SQL, raw SQL, window days). The SQL takes %(tenant)s, %(start)s,
#: %(end)s. The daily series is what the usage-series API reads (from usage_hourly); it is timed
#: from usage_daily too, for comparison.
QUERIES: Final[dict[str, tuple[str, str, str, int]]] = {
    "30-day by user and tool": (
        "usage_daily",
        f"SELECT user_email, tool, {_SUMS} FROM tokenscale.usage_daily "
        "WHERE tenant = %(tenant)s AND day >= %(start)s AND day < %(end)s "
        "GROUP BY user_email, tool ORDER BY user_email, tool",
        f"SELECT user_email, tool, {_SUMS} FROM tokenscale.usage_events "
        "WHERE counted AND tenant = %(tenant)s AND time >= %(start)s AND time < %(end)s "
        "GROUP BY user_email, tool ORDER BY user_email, tool",
        30,
    ),
    "90-day daily series": (
        "usage_hourly",
        f"SELECT date_trunc('day', hour, 'UTC') AS day, {_SUMS} FROM tokenscale.usage_hourly "
        "WHERE tenant = %(tenant)s AND hour >= %(start)s AND hour < %(end)s GROUP BY 1 ORDER BY 1",
        _RAW_SERIES,
        90,
    ),
    "90-day daily series, from usage_daily": (
        "usage_daily",
        f"SELECT day, {_SUMS} FROM tokenscale.usage_daily "
        "WHERE tenant = %(tenant)s AND day >= %(start)s AND day < %(end)s GROUP BY day ORDER BY day",
        _RAW_SERIES,
        90,
    ),
}


def _parallel(jobs: list[Callable[[], None]]) -> None:
    """Run ``jobs`` on threads (each with its own connection), re-raising the first failure."""
    errors: list[BaseException] = []

    def wrap(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def generate(url: str, ds: DataSet, start: datetime, log: Callable[[str], None]) -> dict[str, Any]:
    """Fill ``usage_events`` and ``usage_daily``; returns sizes and how long each step took."""
    timings: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        backend = conn.execute(
            "SELECT backend FROM tokenscale.schema_migrations ORDER BY version LIMIT 1"
        ).fetchone()
        partitioned = conn.execute("SELECT to_regproc('tokenscale.ensure_partitions') IS NOT NULL").fetchone()
        if partitioned and partitioned[0]:
            days = [(start + timedelta(days=d)).date() for d in range(ds.days)]
            conn.execute("SELECT tokenscale.ensure_partitions(%s::date[])", (days,))
    params = {
        "start": start,
        "tenant": TENANT,
        "tools": list(TOOLS),
        "sources": list(SOURCES),
        "models": list(MODELS),
        "providers": list(PROVIDERS),
        "users": ds.users,
        "max_per_day": ds.max_per_day,
    }
    half = ds.days // 2

    # Loading without the secondary indexes and building them afterwards is several times faster;
    # the definitions are read back from the catalog, so the schema ends up exactly as migrated.
    with psycopg.connect(url, autocommit=True) as conn:
        indexes = [
            (str(name), str(definition).replace(" ON ONLY ", " ON "))
            for name, definition in conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE schemaname = 'tokenscale' AND tablename = 'usage_events' ORDER BY indexname"
            )
        ]
        for name, _ in indexes:
            conn.execute(sql.SQL("DROP INDEX tokenscale.{}").format(sql.Identifier(name)))

    def insert(day_from: int, day_to: int) -> Callable[[], None]:
        def job() -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(_INSERT, {**params, "day_from": day_from, "day_to": day_to})

        return job

    log(f"[reports] generating ~{ds.expected_events:,} events ({ds.users} users x {ds.days} days)")
    t0 = time.monotonic()
    _parallel([insert(0, half), insert(half, ds.days)])
    timings["generate_events_s"] = time.monotonic() - t0

    def create_indexes(definitions: list[str]) -> Callable[[], None]:
        def job() -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SET maintenance_work_mem = '1GB'")
                for definition in definitions:
                    conn.execute(definition.encode())

        return job

    log(f"[reports] building the {len(indexes)} indexes of usage_events")
    t0 = time.monotonic()
    definitions = [d for _, d in indexes]
    _parallel([create_indexes(definitions[0::2]), create_indexes(definitions[1::2])])
    timings["build_indexes_s"] = time.monotonic() - t0

    def rollup(statement: str, day_from: int, day_to: int) -> Callable[[], None]:
        def job() -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(
                    statement,
                    {"from": start + timedelta(days=day_from), "to": start + timedelta(days=day_to)},
                )

        return job

    with psycopg.connect(url, autocommit=True) as conn:
        hourly = conn.execute(
            "SELECT relkind FROM pg_class WHERE oid = to_regclass('tokenscale.usage_hourly')"
        ).fetchone()
    log("[reports] building usage_daily" + (" and usage_hourly" if hourly else ""))
    t0 = time.monotonic()
    if backend and backend[0] == "timescaledb-community":
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CALL refresh_continuous_aggregate('tokenscale.usage_daily', NULL, NULL)")
    else:
        _parallel([rollup(_BUILD_DAILY, 0, half), rollup(_BUILD_DAILY, half, ds.days)])
    if hourly and str(hourly[0]) == "v":  # a continuous aggregate
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CALL refresh_continuous_aggregate('tokenscale.usage_hourly', NULL, NULL)")
    elif hourly:
        _parallel([rollup(_BUILD_HOURLY, 0, half), rollup(_BUILD_HOURLY, half, ds.days)])
    with psycopg.connect(url, autocommit=True) as conn:
        scoped = conn.execute("SELECT to_regclass('tokenscale.usage_scope_hourly')").fetchone()
    if scoped is not None and scoped[0] is not None:
        for build in _BUILD_SCOPED:
            _parallel([rollup(build, 0, half), rollup(build, half, ds.days)])
    timings["build_daily_s"] = time.monotonic() - t0

    # Statistics for the planner, and hint bits set by one untimed full read, so that no timed raw
    # query pays for first-touching pages. usage_events is not VACUUMed (that rewrites every page and
    # takes longer than everything else together): no query here can use an index-only scan on it.
    log("[reports] ANALYZE, VACUUM the rollups, one read of usage_events")
    t0 = time.monotonic()

    def analyze_events() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE tokenscale.usage_events")
            conn.execute("SELECT count(*) FROM tokenscale.usage_events WHERE counted").fetchone()

    def vacuum_daily() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE tokenscale.usage_daily")
            if hourly and str(hourly[0]) == "r":
                conn.execute("VACUUM ANALYZE tokenscale.usage_hourly")
            if scoped is not None and scoped[0] is not None:
                conn.execute("VACUUM ANALYZE tokenscale.usage_scope_hourly")

    _parallel([analyze_events, vacuum_daily])
    timings["analyze_s"] = time.monotonic() - t0
    sizes: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("usage_events", "usage_daily"):
            count = conn.execute(f"SELECT count(*) FROM tokenscale.{table}").fetchone()
            size = conn.execute(
                "SELECT pg_size_pretty(coalesce(sum(pg_total_relation_size(c.oid)), 0)) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p') AND ((n.nspname = 'tokenscale' AND c.relname LIKE %s) "
                "OR (n.nspname = '_timescaledb_internal' AND %s))",
                (f"{table}%", table == "usage_events"),
            ).fetchone()
            sizes[table] = {"rows": int(count[0]) if count else 0, "size": size[0] if size else "?"}
    return {"timings": timings, "sizes": sizes}


@dataclass
class QueryTiming:
    query: str
    source: str
    runs: int
    p50_ms: float
    p95_ms: float
    result_rows: int


def _windows(ds: DataSet, length: int, start: datetime, n: int) -> list[tuple[datetime, datetime]]:
    """``n`` windows of ``length`` days spread over the data set's last ~2/3."""
    last_start = ds.days - length
    first_start = max(0, min(last_start, ds.days // 3))
    out = []
    for i in range(n):
        offset = first_start + (last_start - first_start) * i // max(1, n - 1)
        out.append((start + timedelta(days=offset), start + timedelta(days=offset + length)))
    return out


def time_queries(url: str, ds: DataSet, start: datetime) -> tuple[list[QueryTiming], list[str]]:
    """p50/p95 of each report from the rollup and from raw events, interleaved; answers compared."""
    timings: list[QueryTiming] = []
    mismatches: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for name, (_, rollup_sql, raw_sql, length) in QUERIES.items():
            windows = _windows(ds, length, start, ds.queries)
            samples: dict[str, list[float]] = {"rollup": [], "raw": []}
            result_rows = 0
            first = {"tenant": TENANT, "start": windows[0][0], "end": windows[0][1]}
            conn.execute(rollup_sql, first).fetchall()  # warm the caches once, untimed
            conn.execute(raw_sql, first).fetchall()
            for w_start, w_end in windows:
                params = {"tenant": TENANT, "start": w_start, "end": w_end}
                answers = {}
                for source, query in (("rollup", rollup_sql), ("raw", raw_sql)):
                    t0 = time.perf_counter()
                    answers[source] = conn.execute(query, params).fetchall()
                    samples[source].append((time.perf_counter() - t0) * 1000)
                result_rows = len(answers["rollup"])
                if answers["rollup"] != answers["raw"]:
                    mismatches.append(f"{name} {w_start:%Y-%m-%d}: rollup and raw answers differ")
            for source, values in samples.items():
                timings.append(
                    QueryTiming(
                        name, source, len(values), percentile(values, 50), percentile(values, 95), result_rows
                    )
                )
    return timings, mismatches


# -- listings through the API layer -----------------------------------------------------------------

#: The AI-metrics page compared with page 1 (the deepest page there is when the data set is smaller).
DEEP_PAGE: Final = 500
LISTING_DAYS: Final = 30


class _Recorder:
    """A connection that remembers each statement it executed, its parameters and its time.

    Handed to the API functions in place of their ``psycopg.Connection`` (everything else is
    forwarded), so the count and the page of one listing call can be timed and EXPLAINed separately.
    ``execute`` returns once the server has sent every row, so a statement's time is planning +
    execution + transfer; turning the rows into Python objects comes after.
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.statements: list[tuple[Any, Any, float]] = []

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        cursor = self.conn.execute(query, params, **kwargs)
        snapshot = dict(params) if isinstance(params, dict) else params
        self.statements.append((query, snapshot, (time.perf_counter() - t0) * 1000))
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def take(self) -> list[tuple[Any, Any, float]]:
        """The statements since the last call, ``SET`` statements left out."""
        found = [s for s in self.statements if not _sql_text(self.conn, s[0]).lstrip().startswith("SET")]
        self.statements = []
        return found


def _sql_text(conn: psycopg.Connection[Any], query: Any) -> str:
    if isinstance(query, sql.Composable):
        return query.as_string(conn)
    return query.decode() if isinstance(query, bytes) else str(query)


def _explain(conn: psycopg.Connection[Any], query: Any, params: Any) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of one recorded statement, summed over its plan nodes."""
    prefix = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ")
    statement = prefix + (query if isinstance(query, sql.Composable) else sql.SQL(_sql_text(conn, query)))
    row = conn.execute(statement, params).fetchone()
    doc = row[0] if row else None
    if isinstance(doc, str):
        doc = json.loads(doc)
    top = doc[0] if isinstance(doc, list) and doc else {}
    totals = {"heap_fetches": 0, "rows_removed": 0, "index_only_scans": 0, "index_scans": 0, "relations": 0}
    seq_scans = 0

    def walk(node: dict[str, Any]) -> None:
        nonlocal seq_scans
        if "Relation Name" in node:
            totals["relations"] += 1  # scans in the plan, executed or not (partitions after pruning)
        if node.get("Actual Loops", 0) == 0:  # never executed
            for child in node.get("Plans", ()):
                walk(child)
            return
        totals["heap_fetches"] += int(node.get("Heap Fetches", 0))
        totals["rows_removed"] += int(node.get("Rows Removed by Filter", 0))
        totals["rows_removed"] += int(node.get("Rows Removed by Join Filter", 0))
        kind = node.get("Node Type", "")
        if kind == "Index Only Scan":
            totals["index_only_scans"] += 1
        elif kind in ("Index Scan", "Bitmap Heap Scan"):
            totals["index_scans"] += 1
        elif kind == "Seq Scan":
            seq_scans += 1
        for child in node.get("Plans", ()):
            walk(child)

    plan = top.get("Plan", {})
    walk(plan)
    return {
        **totals,
        "seq_scans": seq_scans,
        "planning_ms": round(float(top.get("Planning Time", math.nan)), 2),
        "execution_ms": round(float(top.get("Execution Time", math.nan)), 2),
        "buffers": int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0)),
        "top_node": plan.get("Node Type"),
    }


def _plan_text(p: dict[str, Any]) -> str:
    scans = (
        f"{p['relations']} table scans planned, {p['index_only_scans']} index-only / {p['index_scans']} "
        "index scans executed"
    )
    if p["seq_scans"]:
        scans += f" / {p['seq_scans']} seq scans"
    return (
        f"plan {p['planning_ms']:.1f} ms + run {p['execution_ms']:.1f} ms, {p['buffers']:,} buffers, "
        f"{p['heap_fetches']:,} heap fetches, {p['rows_removed']:,} rows filtered out, {scans}"
    )


def _ai_metrics_params(page: int, start: datetime, end: datetime) -> Any:
    from tokenscale.api._values import Params  # noqa: PLC0415

    return Params.from_pairs(
        [
            ("teamId", TENANT),
            # Every tool of the data set is a coding assistant: the default (false) would list nothing.
            ("includeCodingAssistants", "true"),
            ("startDate", start.isoformat()),
            ("endDate", end.isoformat()),
            ("page", str(page)),
        ]
    )


def _ai_metrics_listing(
    ctx: Context, conn: psycopg.Connection[Any], ds: DataSet, today: datetime
) -> tuple[list[Row], list[str], dict[str, Any]]:
    """Page 1 and page 500 of the AI-metrics listing, through ``parse_ai_metrics_query`` +
    ``list_ai_metrics`` (the functions behind ``UsageApiService.list_ai_metrics``)."""
    from tokenscale.api.ai_metrics import (  # noqa: PLC0415
        DEFAULT_PAGE_SIZE,
        list_ai_metrics,
        parse_ai_metrics_query,
    )

    recorder = _Recorder(conn)
    api_conn = cast("psycopg.Connection[Any]", recorder)
    start, end = today - timedelta(days=LISTING_DAYS), today

    def call(page: int) -> Any:
        query = parse_ai_metrics_query(_ai_metrics_params(page, start, end), "all")
        return list_ai_metrics(api_conn, TENANT, query)

    first = call(0)  # warm-up, untimed; also tells how deep the listing goes
    recorder.take()
    deep = min(DEEP_PAGE - 1, max(0, first.total_pages - 1))  # the API's pages count from 0
    runs = 3 if ctx.quick else 15
    samples: dict[int, list[float]] = {0: [], deep: []}
    split: dict[int, dict[str, list[float]]] = {0: {"count": [], "page": []}, deep: {"count": [], "page": []}}
    last_statements: dict[int, list[tuple[Any, Any, float]]] = {}
    pages: dict[int, Any] = {}
    call(deep)
    recorder.take()
    for _ in range(runs):
        for page in (0, deep):  # interleaved
            t0 = time.perf_counter()
            pages[page] = call(page)
            samples[page].append((time.perf_counter() - t0) * 1000)
            statements = recorder.take()
            for query, _params, ms in statements:
                kind = "count" if "count(*)" in _sql_text(conn, query) else "page"
                split[page][kind].append(ms)
            last_statements[page] = statements

    # What the pages must hold: the same filter in plain SQL, OFFSET and all.
    expect_total_row = conn.execute(
        "SELECT count(*) FROM tokenscale.usage_events "
        "WHERE tenant = %s AND counted AND time >= %s AND time <= %s",
        (TENANT, start, end),
    ).fetchone()
    expect_total = int(expect_total_row[0]) if expect_total_row else -1
    size = DEFAULT_PAGE_SIZE
    correct: dict[int, bool] = {}
    for page in (0, deep):
        ids = [
            bytes(r[0]).hex()
            for r in conn.execute(
                "SELECT dedupe_key FROM tokenscale.usage_events WHERE tenant = %s AND counted "
                "AND time >= %s AND time <= %s ORDER BY time DESC, dedupe_key DESC OFFSET %s LIMIT %s",
                (TENANT, start, end, page * size, size),
            )
        ]
        got = [item["id"] for item in pages[page].items]
        correct[page] = bool(got) and got == ids and pages[page].total_elements == expect_total

    plans = {page: [_explain(conn, q, p) for q, p, _ms in last_statements[page]] for page in (0, deep)}
    rows: list[Row] = []
    p50 = {page: percentile(samples[page], 50) for page in (0, deep)}
    label = f"AI metrics list, {size}/page, {LISTING_DAYS} days"
    for page in (0, deep):
        rows.append(
            {
                "report": f"{label}: page {page + 1:,}",
                "p50 ms": p50[page],
                "p95 ms": percentile(samples[page], 95),
                "vs page 1 (p50)": p50[page] / p50[0] if p50[0] else math.nan,
                "result rows": len(pages[page].items),
                "answers equal": correct[page],
            }
        )
    notes = []
    if deep + 1 != DEEP_PAGE:
        notes.append(
            f"AI metrics: the {LISTING_DAYS}-day listing has {first.total_pages:,} pages of {size}, so its "
            f"last page ({deep + 1:,}) stands in for page {DEEP_PAGE} (the API has no depth limit)"
        )
    for page in (0, deep):
        count_plan = next((p for p in plans[page] if p["top_node"] == "Aggregate"), None)
        page_plans = [p for p in plans[page] if p is not count_plan]
        notes.append(
            f"AI metrics page {page + 1:,} ({pages[page].total_elements:,} rows match): SQL p50 "
            f"count(*) {percentile(split[page]['count'], 50):.1f} ms + page "
            f"{percentile(split[page]['page'], 50):.1f} ms of {p50[page]:.1f} ms; "
            "EXPLAIN ANALYZE of the page query: "
            + ("; ".join(_plan_text(p) for p in page_plans) or "(not run: past the end)")
            + (f"; of the count: {_plan_text(count_plan)}" if count_plan else "")
        )
    data = {
        "window": [start.isoformat(), end.isoformat()],
        "page_size": size,
        "total_elements": first.total_elements,
        "total_pages": first.total_pages,
        "deep_page": deep + 1,
        "samples_ms": {str(page + 1): samples[page] for page in (0, deep)},
        "sql_ms": {str(page + 1): split[page] for page in (0, deep)},
        "explain": {str(page + 1): plans[page] for page in (0, deep)},
        "correct": {str(page + 1): correct[page] for page in (0, deep)},
    }

    # The API's defaults (no includeCodingAssistants, no dates): a coding-assistant-only tenant lists
    # nothing, yet the count still visits every one of its rows. One call, for the record.
    from tokenscale.api._values import Params  # noqa: PLC0415

    t0 = time.perf_counter()
    default_page = list_ai_metrics(
        api_conn, TENANT, parse_ai_metrics_query(Params.from_pairs([("teamId", TENANT)]), "all")
    )
    default_ms = (time.perf_counter() - t0) * 1000
    recorder.take()
    notes.append(
        f"AI metrics with the API's default filters (coding assistants excluded, no dates): "
        f"{default_page.total_elements:,} rows (all {len(TOOLS)} tools of the data set are coding "
        f"assistants), one call {default_ms:,.0f} ms: the count(*) still walks every row of the tenant"
    )
    data["default_filters"] = {"total_elements": default_page.total_elements, "ms": default_ms}
    return rows, notes, data


def _usage_records_walk(
    ctx: Context, conn: psycopg.Connection[Any], ds: DataSet, today: datetime
) -> tuple[list[Row], list[str], dict[str, Any]]:
    """Every cursor page of one user's last 30 days, newest first, through ``list_usage_records``
    (the function behind ``UsageApiService.list_usage_records``); each row must come exactly once."""
    from tokenscale.api._values import Params  # noqa: PLC0415
    from tokenscale.api.usage_records import DEFAULT_TAKE, list_usage_records  # noqa: PLC0415

    recorder = _Recorder(conn)
    api_conn = cast("psycopg.Connection[Any]", recorder)
    user = f"u{ds.users // 2}"  # user_id of the generated data (contactId filter)
    start = today - timedelta(days=LISTING_DAYS)
    start_ms = int(start.timestamp() * 1000)
    expected = {
        bytes(r[0]).hex()
        for r in conn.execute(
            "SELECT dedupe_key FROM tokenscale.usage_events WHERE tenant = %s AND counted AND user_id = %s "
            "AND time >= %s",
            (TENANT, user, start),
        )
    }

    def walk() -> tuple[list[float], list[str], float]:
        """(ms per page, ids within the window in walk order, total ms)."""
        cursor: str | None = None
        page_ms: list[float] = []
        ids: list[str] = []
        t_walk = time.perf_counter()
        while True:
            pairs: list[tuple[str, object]] = [("contactId", user)]
            if cursor is not None:
                pairs.append(("cursor", cursor))
            t0 = time.perf_counter()
            result = list_usage_records(api_conn, TENANT, Params.from_pairs(pairs))
            page_ms.append((time.perf_counter() - t0) * 1000)
            items = result["items"]
            ids += [item["id"] for item in items if item["createdAt"] >= start_ms]
            # Newest first: the walk is over once a page reaches past the window's start.
            if not items or items[-1]["createdAt"] < start_ms or "cursor" not in result:
                break
            cursor = result["cursor"]
        return page_ms, ids, (time.perf_counter() - t_walk) * 1000

    list_usage_records(api_conn, TENANT, Params.from_pairs([("contactId", user)]))  # warm-up
    recorder.take()
    walks = [walk() for _ in range(1 if ctx.quick else 3)]
    page_ms = [ms for w in walks for ms in w[0]]
    totals = sorted(w[2] for w in walks)
    pages = len(walks[0][0])
    rows_walked = len(walks[0][1])
    exactly_once = all(len(w[1]) == len(set(w[1])) and set(w[1]) == expected for w in walks)
    statements = recorder.take()
    # A page from the middle of the first walk (one with a cursor): where its time goes.
    probe = statements[min(len(statements) - 1, pages // 2)] if statements else None
    plan = _explain(conn, probe[0], probe[1]) if probe else None
    partitions_row = conn.execute(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'tokenscale.usage_events'::regclass"
    ).fetchone()
    partitions = int(partitions_row[0]) if partitions_row else 0
    row: Row = {
        "report": f"usage records: cursor walk, 1 user, {LISTING_DAYS} days, {DEFAULT_TAKE}/page (per page)",
        "p50 ms": percentile(page_ms, 50),
        "p95 ms": percentile(page_ms, 95),
        "pages": pages,
        "total ms": totals[len(totals) // 2],
        "result rows": rows_walked,
        "answers equal": exactly_once,
    }
    notes = [
        f"usage records walk (contactId={user}, newest first, until the {LISTING_DAYS}-day boundary): "
        f"{pages} pages, {rows_walked:,} rows ({len(expected):,} by SQL count; every row exactly once: "
        f"{'yes' if exactly_once else 'NO'}), {totals[len(totals) // 2]:,.0f} ms in all = "
        f"{totals[len(totals) // 2] / max(pages, 1):.1f} ms per page (median of {len(walks)} walks)"
        + (f"; EXPLAIN ANALYZE of a mid-walk page: {_plan_text(plan)}" if plan else "")
        + f" (usage_events has {partitions} partitions/chunks)"
    ]
    data = {
        "user": user,
        "pages": pages,
        "rows": rows_walked,
        "expected_rows": len(expected),
        "exactly_once": exactly_once,
        "walk_total_ms": [w[2] for w in walks],
        "page_ms": page_ms,
        "explain_mid_page": plan,
        "partitions": partitions,
    }
    return [row], notes, data


def _vacuum_window(conn: psycopg.Connection[Any], start: datetime, end: datetime) -> dict[str, Any]:
    """VACUUM the partitions (chunks) of usage_events holding rows of [start, end].

    The listings' boundary walks are index-only scans, which read the heap for every page not yet
    marked all-visible; in production autovacuum has long done so for days-old data, here it may or
    may not have got round to it since the load. Vacuuming the window makes that state certain."""
    children = [
        str(r[0])
        for r in conn.execute(
            "SELECT i.inhrelid::regclass FROM pg_inherits i "
            "WHERE i.inhparent = 'tokenscale.usage_events'::regclass ORDER BY 1"
        )
    ]
    inside = []
    for child in children:
        found = conn.execute(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE time >= %s AND time <= %s)").format(
                sql.SQL(child)  # a regclass rendered by the server: already quoted as needed
            ),
            (start, end),
        ).fetchone()
        if found and found[0]:
            inside.append(child)
    t0 = time.monotonic()
    for child in inside:
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.SQL(child)))
    seconds = time.monotonic() - t0
    row = conn.execute(
        "SELECT coalesce(sum(relpages), 0), coalesce(sum(relallvisible), 0) FROM pg_class "
        "WHERE oid = ANY(%s::regclass[])",
        (inside,),
    ).fetchone()
    pages, visible = (int(row[0]), int(row[1])) if row else (0, 0)
    return {
        "relations": len(inside),
        "of": len(children),
        "seconds": seconds,
        "all_visible": visible / pages if pages else math.nan,
    }


def listing_benchmarks(
    ctx: Context, url: str, ds: DataSet, today: datetime, backend: str
) -> tuple[list[Row], list[str], dict[str, Any]]:
    """AI-metrics listing page 1 vs page 500, and a cursor walk of one user's 30 days of usage records.

    Timed through the API's own functions on one psycopg connection (the SQL and the building of
    each response item included; the HTTP layer, auth and the pool checkout are not): the functions
    :class:`tokenscale.api.service.UsageApiService` calls after checking the caller.
    Returns table rows shaped like the report rows, notes, and raw data for the JSON.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        vacuum = _vacuum_window(conn, today - timedelta(days=LISTING_DAYS), today)
        metric_rows, metric_notes, metric_data = _ai_metrics_listing(ctx, conn, ds, today)
        walk_rows, walk_notes, walk_data = _usage_records_walk(ctx, conn, ds, today)
    rows = [{"backend": backend, **r} for r in metric_rows + walk_rows]
    wrong = [str(r["report"]) for r in rows if not r["answers equal"]]
    if ctx.quick and wrong:  # the smoke test checks answers, never timings
        raise RuntimeError(f"listings returned wrong rows: {wrong}; {metric_notes + walk_notes}")
    notes = [f"{backend}: {n}" for n in metric_notes + walk_notes]
    notes.append(
        f"{backend}: before the listings, VACUUM (ANALYZE) of the {vacuum['relations']} of "
        f"{vacuum['of']} partitions/chunks of usage_events holding the last {LISTING_DAYS} days "
        f"({vacuum['seconds']:.0f} s; {vacuum['all_visible']:.0%} of their pages all-visible after)"
    )
    notes.append(
        f"{backend}: listings timed through tokenscale.api.ai_metrics.parse_ai_metrics_query + "
        "list_ai_metrics and tokenscale.api.usage_records.list_usage_records on one connection "
        "(SQL + response items; no HTTP, auth or pool)"
    )
    return rows, notes, {"vacuum": vacuum, "ai_metrics": metric_data, "usage_records": walk_data}


def run(ctx: Context, server: DbServer) -> BenchOutput:
    ds = dataset(ctx)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=ds.days)
    out = BenchOutput()
    with database(server, "reports") as url:
        gen = generate(url, ds, start, ctx.log)
        ctx.log(f"[reports/{server.backend}] timing queries")
        timings, mismatches = time_queries(url, ds, start)
        ctx.log(f"[reports/{server.backend}] timing the listings")
        listing_rows, listing_notes, listing_data = listing_benchmarks(ctx, url, ds, today, server.backend)
    by_query: dict[str, dict[str, QueryTiming]] = {}
    for t in timings:
        by_query.setdefault(t.query, {})[t.source] = t
    events = gen["sizes"]["usage_events"]
    daily = gen["sizes"]["usage_daily"]
    for name, pair in by_query.items():
        rollup, raw = pair["rollup"], pair["raw"]
        out.rows.append(
            {
                "backend": server.backend,
                "report": name,
                "rollup": QUERIES[name][0],
                "events": events["rows"],
                "daily rows": daily["rows"],
                "rollup p50 ms": rollup.p50_ms,
                "rollup p95 ms": rollup.p95_ms,
                "raw p50 ms": raw.p50_ms,
                "raw p95 ms": raw.p95_ms,
                "raw/rollup (p50)": raw.p50_ms / rollup.p50_ms if rollup.p50_ms else float("nan"),
                "result rows": rollup.result_rows,
                "answers equal": not any(m.startswith(name) for m in mismatches),
            }
        )
    out.rows.extend({**r, "events": events["rows"]} for r in listing_rows)
    t = gen["timings"]
    out.notes.append(
        f"{server.backend}: usage_events {events['rows']:,} rows ({events['size']}), usage_daily "
        f"{daily['rows']:,} rows ({daily['size']}); generated in {t['generate_events_s']:.0f} s, "
        f"indexes {t['build_indexes_s']:.0f} s, rollup {t['build_daily_s']:.0f} s, "
        f"ANALYZE + first read {t['analyze_s']:.0f} s"
    )
    out.notes.extend(mismatches)
    out.notes.extend(listing_notes)
    out.data = {
        "dataset": asdict(ds),
        "generation": gen,
        "timings": [asdict(t) for t in timings],
        "listings": listing_data,
    }
    return out
