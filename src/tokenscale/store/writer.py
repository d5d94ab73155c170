"""The batched usage writer: binary COPY into staging, then one set-based transaction.

Per export, in ONE transaction (so an export is acknowledged only once its rows are committed):

1. cumulative points are differenced against ``metric_series`` (rows locked in key order);
2. the rows are COPYed (binary) into a temporary staging table;
3. ``usage_streams`` learns each stream's best carrier rank; rows of a stream whose rank just
   improved are retracted (``counted = false``), and subtracted from the rollup;
4. staged rows are inserted with ``ON CONFLICT DO NOTHING`` on the dedupe key, so a retried export
   is never counted twice, ``counted`` set when the row's rank is its stream's best;
5. where tokenscale keeps ``usage_daily`` itself, the inserted counted rows are added to it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any, Final

import orjson
import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from tokenscale.errors import RetryableError
from tokenscale.mapping import ActivityEvent, MappingResult, SeriesState, UsageEvent, resolve_cumulative
from tokenscale.store.backend import Backend, recorded_backend

__all__ = ["UsageWriter", "open_pool"]

log = logging.getLogger(__name__)

_NS_PER_DAY: Final = 86_400 * 10**9

#: Staging columns, in COPY order, with their PostgreSQL types.
_STAGE_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("time_ns", "int8"),
    ("tenant", "text"),
    ("source", "text"),
    ("rank", "int2"),
    ("tool", "text"),
    ("stream", "text"),
    ("service_name", "text"),
    ("user_email", "text"),
    ("user_id", "text"),
    ("session_id", "text"),
    ("conversation_id", "text"),
    ("provider", "text"),
    ("model", "text"),
    ("operation", "text"),
    ("request_id", "text"),
    ("requests", "int4"),
    ("input_tokens", "int8"),
    ("cache_read_tokens", "int8"),
    ("cache_write_tokens", "int8"),
    ("output_tokens", "int8"),
    ("reasoning_tokens", "int8"),
    ("cost_usd", "float8"),
    ("cost_source", "text"),
    ("duration_ms", "float8"),
    ("error_type", "text"),
    ("attributes", "text"),
    ("dedupe_key", "bytea"),
)
_STAGE_TYPES: Final = [t for _, t in _STAGE_COLUMNS]

_ACTIVITY_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("time_ns", "int8"),
    ("tenant", "text"),
    ("tool", "text"),
    ("stream", "text"),
    ("service_name", "text"),
    ("user_email", "text"),
    ("user_id", "text"),
    ("session_id", "text"),
    ("metric", "text"),
    ("value", "float8"),
    ("dedupe_key", "bytea"),
)


def _stage_sql(table: str, columns: tuple[tuple[str, str], ...]) -> tuple[sql.Composed, sql.Composed]:
    """CREATE and COPY statements of a temporary staging table (emptied at every commit)."""
    create = sql.SQL("CREATE TEMPORARY TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
        sql.Identifier(table),
        sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in columns),
    )
    copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(n) for n, _ in columns)
    )
    return create, copy


_CREATE_ACTIVITY_STAGE, _COPY_ACTIVITY_STAGE = _stage_sql("tokenscale_activity_stage", _ACTIVITY_COLUMNS)
_TIME_FROM_NS: Final = (
    "to_timestamp(s.time_ns / 1000000000) + (s.time_ns % 1000000000 / 1000) * INTERVAL '1 microsecond'"
)
_INSERT_ACTIVITY: Final = sql.SQL(
    """INSERT INTO tokenscale.activity_events (time, {cols})
SELECT {time}, {scols} FROM tokenscale_activity_stage s
ON CONFLICT (dedupe_key, time) DO NOTHING"""
).format(
    cols=sql.SQL(", ").join(sql.Identifier(n) for n, _ in _ACTIVITY_COLUMNS[1:]),
    time=sql.SQL(_TIME_FROM_NS),
    scols=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(n)) for n, _ in _ACTIVITY_COLUMNS[1:]),
)

_CREATE_STAGE, _COPY_STAGE = _stage_sql("tokenscale_stage", _STAGE_COLUMNS)

# The columns usage_daily sums, and the expressions that sum a set of usage_events rows.
_DAILY_KEYS: Final = ("tenant", "tool", "user_email", "provider", "model")
_DAILY_SUMS: Final = (
    "requests",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)

#: What the rollup needs of an inserted or retracted row (not the wide attributes).
_ROLLUP_INPUT: Final = (
    "time, tenant, tool, user_email, provider, model, counted, requests, input_tokens, cache_read_tokens, "
    "cache_write_tokens, output_tokens, reasoning_tokens, cost_usd, cost_source"
)

_UPSERT_STREAMS: Final = """
INSERT INTO tokenscale.usage_streams AS u (tenant, tool, stream, best_rank)
SELECT tenant, tool, stream, min(rank) FROM tokenscale_stage
GROUP BY tenant, tool, stream ORDER BY tenant, tool, stream
ON CONFLICT (tenant, tool, stream) DO UPDATE SET best_rank = excluded.best_rank
    WHERE u.best_rank > excluded.best_rank
RETURNING tenant, tool, stream, best_rank, xmax <> 0 AS improved
"""

_RETRACT: Final = """
UPDATE tokenscale.usage_events e SET counted = false
FROM (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::int2[])
      AS i(tenant, tool, stream, best_rank)) i
WHERE e.counted AND e.rank > 1 AND e.tenant = i.tenant AND e.tool = i.tool AND e.stream = i.stream
  AND e.rank > i.best_rank
RETURNING e.time, e.tenant, e.tool, e.user_email, e.provider, e.model, e.counted, e.requests,
    e.input_tokens, e.cache_read_tokens, e.cache_write_tokens, e.output_tokens, e.reasoning_tokens,
    e.cost_usd, e.cost_source
"""

_INSERT_COLUMNS: Final = [n for n, _ in _STAGE_COLUMNS if n != "time_ns"]
_INSERT: Final = sql.SQL(
    """INSERT INTO tokenscale.usage_events (time, counted, {cols})
SELECT {time}, s.rank <= u.best_rank, {scols}
FROM tokenscale_stage s
JOIN tokenscale.usage_streams u USING (tenant, tool, stream)
ON CONFLICT (dedupe_key, time) DO NOTHING
RETURNING {returning}"""
).format(
    returning=sql.SQL(_ROLLUP_INPUT),
    cols=sql.SQL(", ").join(sql.Identifier(c) for c in _INSERT_COLUMNS),
    time=sql.SQL(_TIME_FROM_NS),
    scols=sql.SQL(", ").join(
        sql.SQL("s.{}::jsonb").format(sql.Identifier(c))
        if c == "attributes"
        else sql.SQL("s.{}::numeric").format(sql.Identifier(c))
        if c == "cost_usd"
        else sql.SQL("s.{}").format(sql.Identifier(c))
        for c in _INSERT_COLUMNS
    ),
)


def _rollup_sql(sign: int, source: str, where: str) -> sql.Composed:
    """Add (sign 1) or subtract (sign -1) the rows of CTE ``source`` matching ``where`` to
    ``usage_daily``."""
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in _DAILY_KEYS)
    sums = [sql.SQL("{} * sum({})::bigint").format(sql.Literal(sign), sql.Identifier(c)) for c in _DAILY_SUMS]
    sums.append(sql.SQL("{} * sum(cost_usd)").format(sql.Literal(sign)))
    sums.append(
        sql.SQL(
            "{} * count(*) FILTER (WHERE cost_usd IS NULL AND cost_source IS NULL AND "
            "input_tokens + cache_read_tokens + cache_write_tokens + output_tokens > 0)"
        ).format(sql.Literal(sign))
    )
    sums.append(sql.SQL("{} * count(*)").format(sql.Literal(sign)))
    updates: list[sql.Composable] = [
        sql.SQL("{c} = d.{c} + excluded.{c}").format(c=sql.Identifier(c)) for c in _DAILY_SUMS
    ]
    updates.append(
        sql.SQL(
            "cost_usd = CASE WHEN d.cost_usd IS NULL AND excluded.cost_usd IS NULL THEN NULL "
            "ELSE coalesce(d.cost_usd, 0) + coalesce(excluded.cost_usd, 0) END"
        )
    )
    updates.append(sql.SQL("unpriced_events = d.unpriced_events + excluded.unpriced_events"))
    updates.append(sql.SQL("events = d.events + excluded.events"))
    return sql.SQL(
        """INSERT INTO tokenscale.usage_daily AS d (day, {keys}, {cols}, cost_usd, unpriced_events, events)
SELECT date_trunc('day', time, 'UTC'), {keys}, {sums} FROM {source} WHERE {where}
GROUP BY 1, {keys} ORDER BY 1, {keys}
ON CONFLICT (tenant, day, tool, user_email, provider, model) DO UPDATE SET {updates}"""
    ).format(
        keys=keys,
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in _DAILY_SUMS),
        sums=sql.SQL(", ").join(sums),
        source=sql.Identifier(source),
        where=sql.SQL(where),
        updates=sql.SQL(", ").join(updates),
    )


_ADD_INSERTED: Final = sql.SQL("WITH ins AS ({insert}) {rollup}").format(
    insert=_INSERT, rollup=_rollup_sql(1, "ins", "counted")
)
_RETRACT_AND_SUBTRACT: Final = sql.SQL("WITH ret AS ({retract}) {rollup}").format(
    retract=sql.SQL(_RETRACT),
    # RETURNING shows the updated (now uncounted) rows, so every returned row is subtracted.
    rollup=_rollup_sql(-1, "ret", "true"),
)

_DROP_EMPTY_DAYS: Final = "DELETE FROM tokenscale.usage_daily WHERE events = 0 AND tenant = ANY(%s::text[])"

_LOCK_SERIES: Final = """
INSERT INTO tokenscale.metric_series (series_key, start_ns, time_ns, value, count)
SELECT k, -1, -1, 0, 0 FROM unnest(%s::bytea[]) AS k ORDER BY k
ON CONFLICT (series_key) DO NOTHING
"""
_SELECT_SERIES: Final = """
SELECT series_key, start_ns, time_ns, value, count FROM tokenscale.metric_series
WHERE series_key = ANY(%s::bytea[]) ORDER BY series_key FOR UPDATE
"""
_UPDATE_SERIES: Final = """
UPDATE tokenscale.metric_series m
SET start_ns = v.start_ns, time_ns = v.time_ns, value = v.value, count = v.count, updated_at = now()
FROM unnest(%s::bytea[], %s::int8[], %s::int8[], %s::float8[], %s::int8[])
     AS v(series_key, start_ns, time_ns, value, count)
WHERE m.series_key = v.series_key
"""


def open_pool(conninfo: str, *, min_size: int = 1, max_size: int = 4) -> ConnectionPool:
    """A connection pool whose connections speak UTC and fail fast when the server is gone."""

    def configure(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SET TIME ZONE 'UTC'")
        conn.commit()

    pool = ConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        configure=configure,
        kwargs={"connect_timeout": 5},
        open=False,
        name="tokenscale",
    )
    pool.open(wait=False)
    return pool


class UsageWriter:
    """Commits mapping results to ``usage_events`` (and, where needed, ``usage_daily``)."""

    def __init__(self, pool: ConnectionPool, *, timeout: float = 10.0) -> None:
        self._pool = pool
        self._timeout = timeout
        self._backend: Backend | None = None
        self._partitions: set[date] = set()

    def backend(self) -> Backend:
        """The back end the schema was created for (read once)."""
        if self._backend is None:
            try:
                with self._pool.connection(timeout=self._timeout) as conn:
                    found = recorded_backend(conn)
            except (psycopg.OperationalError, PoolTimeout) as exc:
                raise RetryableError(f"database unavailable: {exc}") from exc
            if found is None:
                raise RetryableError("the tokenscale schema is missing: run `tokenscale migrate`")
            self._backend = found
        return self._backend

    def write(self, result: MappingResult) -> None:
        """Commit ``result`` in one transaction; raises RetryableError if the database is unusable."""
        backend = self.backend()
        try:
            with self._pool.connection(timeout=self._timeout) as conn:
                if backend.partitioned:
                    # In a transaction of its own: creating a partition locks the parent table, which
                    # inside the export's transaction (holding series and stream row locks) could
                    # deadlock with another receiver's export.
                    times = {e.time_ns for e in result.events} | {p.time_ns for p in result.cumulative}
                    with conn.transaction():
                        self._ensure_partitions(conn, times)
                with conn.transaction():
                    self._write(conn, backend, result)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise RetryableError(f"database unavailable: {exc}") from exc

    def _write(self, conn: psycopg.Connection[Any], backend: Backend, result: MappingResult) -> None:
        events = list(result.events)
        activity = list(result.activity)
        if result.cumulative:
            for resolved in self._resolve_cumulative(conn, result):
                if isinstance(resolved, ActivityEvent):
                    activity.append(resolved)
                else:
                    events.append(resolved)
        if events:
            self._write_events(conn, events, keeps_rollups=backend.keeps_rollups)
        if activity:
            self._write_activity(conn, activity)

    def _resolve_cumulative(
        self, conn: psycopg.Connection[Any], result: MappingResult
    ) -> list[UsageEvent | ActivityEvent]:
        keys = sorted({p.series_key for p in result.cumulative})
        conn.execute(_LOCK_SERIES, (keys,))
        states = {
            row[0]: SeriesState(row[1], row[2], row[3], row[4])
            for row in conn.execute(_SELECT_SERIES, (keys,))
            if row[1] >= 0
        }
        events, changed = resolve_cumulative(result.cumulative, states)
        if changed:
            items = sorted(changed.items())
            conn.execute(
                _UPDATE_SERIES,
                (
                    [k for k, _ in items],
                    [s.start_ns for _, s in items],
                    [s.time_ns for _, s in items],
                    [s.value for _, s in items],
                    [s.count for _, s in items],
                ),
            )
        return events

    def _write_events(
        self, conn: psycopg.Connection[Any], events: list[UsageEvent], *, keeps_rollups: bool
    ) -> None:
        conn.execute(_CREATE_STAGE)
        with conn.cursor() as cur:
            with cur.copy(_COPY_STAGE) as copy:
                copy.set_types(_STAGE_TYPES)
                for row in _rows(events):
                    copy.write_row(row)
            improved = [r for r in cur.execute(_UPSERT_STREAMS).fetchall() if r[4]]
            if improved:
                params = (
                    [r[0] for r in improved],
                    [r[1] for r in improved],
                    [r[2] for r in improved],
                    [r[3] for r in improved],
                )
                if keeps_rollups:
                    cur.execute(_RETRACT_AND_SUBTRACT, params)
                    cur.execute(_DROP_EMPTY_DAYS, (params[0],))
                else:
                    cur.execute(_RETRACT, params)
            cur.execute(_ADD_INSERTED if keeps_rollups else _INSERT)

    def _write_activity(self, conn: psycopg.Connection[Any], activity: list[ActivityEvent]) -> None:
        conn.execute(_CREATE_ACTIVITY_STAGE)
        with conn.cursor() as cur:
            with cur.copy(_COPY_ACTIVITY_STAGE) as copy:
                copy.set_types([t for _, t in _ACTIVITY_COLUMNS])
                for a in activity:
                    copy.write_row(
                        (
                            a.time_ns,
                            a.tenant,
                            a.tool,
                            a.stream,
                            a.service_name,
                            a.user_email,
                            a.user_id,
                            a.session_id,
                            a.metric,
                            a.value,
                            a.dedupe_key,
                        )
                    )
            cur.execute(_INSERT_ACTIVITY)

    def _ensure_partitions(self, conn: psycopg.Connection[Any], times_ns: Iterable[int]) -> None:
        """Create the daily partitions the given times fall in, unless known to exist."""
        days = {t // _NS_PER_DAY for t in times_ns}
        missing = sorted(d for d in days if _day(d) not in self._partitions)
        if not missing:
            return
        conn.execute("SELECT tokenscale.ensure_partitions(%s::date[])", ([_day(d) for d in missing],))
        self._partitions.update(_day(d) for d in missing)


def _day(day_number: int) -> date:
    return datetime.fromtimestamp(day_number * 86_400, UTC).date()


def _rows(events: Iterable[UsageEvent]) -> Iterable[tuple[Any, ...]]:
    # orjson: ~10x faster than json here, and NaN/Infinity (which jsonb rejects) become null.
    dumps = orjson.dumps
    for e in events:
        yield (
            e.time_ns,
            e.tenant,
            e.carrier,
            e.rank,
            e.tool,
            e.stream,
            e.service_name,
            e.user_email,
            e.user_id,
            e.session_id,
            e.conversation_id,
            e.provider,
            e.model,
            e.operation,
            e.request_id,
            e.requests,
            e.input_tokens,
            e.cache_read_tokens,
            e.cache_write_tokens,
            e.output_tokens,
            e.reasoning_tokens,
            e.cost_usd,
            e.cost_source,
            e.duration_ms,
            e.error_type,
            dumps(e.attributes, default=str).decode(),
            e.dedupe_key,
        )
