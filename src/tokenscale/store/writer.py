"""The batched usage writer: one binary COPY per export, straight into the tables.

Per export, in ONE transaction (so an export is acknowledged only once its rows are committed):

1. cumulative points are differenced against ``metric_series`` (rows locked in key order);
2. ``usage_streams`` learns each stream's best carrier rank (one upsert of the export's streams);
   rows of a stream whose rank just improved are retracted (``counted = false``) and subtracted
   from the rollups; each new row's ``counted`` is set in Python (its rank is its stream's best);
3. the rows are binary-COPYed straight into ``usage_events`` inside a savepoint. If any of them is
   already stored (a retried export), the COPY fails on the unique dedupe key: back to the
   savepoint, and the rows go through a temporary staging table and ``INSERT ... ON CONFLICT DO
   NOTHING``, so a retried export is never counted twice;
4. where tokenscale keeps the rollups itself (no continuous aggregates), the stored counted rows
   are summed in Python per day and key (``usage_daily``) and per tenant and hour
   (``usage_hourly``), and each rollup gets one sorted upsert.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from math import isfinite
from typing import Any, Final

import orjson
import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from tokenscale.errors import RetryableError
from tokenscale.mapping import (
    TOKEN_FIELDS,
    ActivityEvent,
    MappingResult,
    SeriesState,
    UsageEvent,
    resolve_cumulative,
)
from tokenscale.store.backend import Backend, recorded_backend
from tokenscale.store.refresh import CommitListener

__all__ = ["UsageWriter", "open_pool"]

log = logging.getLogger(__name__)

_NS_PER_DAY: Final = 86_400 * 10**9
_NS_PER_HOUR: Final = 3_600 * 10**9
_UNIX_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_PG_EPOCH_US: Final = 946_684_800 * 10**6  # 2000-01-01, the origin of binary timestamps
_COST_QUANTUM: Final = Decimal("1e-10")  # usage_events.cost_usd is numeric(20, 10)


def _wire_types(types: Iterable[str]) -> list[str]:
    """The types to encode COPY columns with. Binary COPY carries no type information, so values are
    sent in their columns' wire format with psycopg's C encoders: a timestamptz as its int8
    microseconds since 2000-01-01 (see :func:`_pg_time`), a jsonb as its version byte followed by
    the JSON text (bytes, see :func:`_event_rows`)."""
    return [{"timestamptz": "int8", "jsonb": "bytea"}.get(t, t) for t in types]


def _pg_time(time_ns: int) -> int:
    """A binary timestamptz (microseconds since 2000-01-01) of nanoseconds since the Unix epoch."""
    return time_ns // 1000 - _PG_EPOCH_US


#: usage_events columns, in COPY order, with their PostgreSQL types.
_EVENT_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("time", "timestamptz"),
    ("tenant", "text"),
    ("source", "text"),
    ("rank", "int2"),
    ("counted", "bool"),
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
    ("cost_usd", "numeric"),
    ("cost_source", "text"),
    ("duration_ms", "float8"),
    ("error_type", "text"),
    ("attributes", "jsonb"),
    ("dedupe_key", "bytea"),
)
_EVENT_TYPES: Final = _wire_types(t for _, t in _EVENT_COLUMNS)
_COST_AT: Final = [n for n, _ in _EVENT_COLUMNS].index("cost_usd")

_ACTIVITY_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("time", "timestamptz"),
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
_ACTIVITY_TYPES: Final = _wire_types(t for _, t in _ACTIVITY_COLUMNS)


def _copy_sql(table: sql.Composable, columns: Sequence[tuple[str, str]]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        table, sql.SQL(", ").join(sql.Identifier(n) for n, _ in columns)
    )


def _temp_table_sql(stage: str, columns: Sequence[tuple[str, str]]) -> tuple[sql.Composed, sql.Composed]:
    """CREATE and COPY statements of a temporary table emptied at every commit."""
    create = sql.SQL("CREATE TEMPORARY TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
        sql.Identifier(stage),
        sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in columns),
    )
    return create, _copy_sql(sql.Identifier(stage), columns)


def _stage_sql(
    stage: str, table: str, columns: tuple[tuple[str, str], ...], returning: str | None
) -> tuple[sql.Composed, sql.Composed, sql.Composed]:
    """CREATE, COPY and INSERT statements of a temporary staging table whose rows are inserted into
    ``tokenscale.<table>`` unless already there."""
    names = sql.SQL(", ").join(sql.Identifier(n) for n, _ in columns)
    insert = sql.SQL(
        "INSERT INTO {table} ({names}) SELECT {names} FROM {stage} ON CONFLICT (dedupe_key, time) DO NOTHING"
    ).format(table=sql.Identifier("tokenscale", table), names=names, stage=sql.Identifier(stage))
    if returning:
        insert = sql.SQL("{} RETURNING {}").format(insert, sql.SQL(returning))
    return (*_temp_table_sql(stage, columns), insert)


_COPY_EVENTS: Final = _copy_sql(sql.Identifier("tokenscale", "usage_events"), _EVENT_COLUMNS)
_CREATE_STAGE, _COPY_STAGE, _INSERT_NEW = _stage_sql(
    "tokenscale_stage", "usage_events", _EVENT_COLUMNS, "dedupe_key, time"
)
_COPY_ACTIVITY: Final = _copy_sql(sql.Identifier("tokenscale", "activity_events"), _ACTIVITY_COLUMNS)
_CREATE_ACTIVITY_STAGE, _COPY_ACTIVITY_STAGE, _INSERT_ACTIVITY = _stage_sql(
    "tokenscale_activity_stage", "activity_events", _ACTIVITY_COLUMNS, None
)

# The sums the rollups keep (tokenscale maintains them on back ends without continuous aggregates).
_SUMS: Final = ("requests", *TOKEN_FIELDS)
_UNPRICED: Final = (
    "cost_usd IS NULL AND cost_source IS NULL AND "
    "input_tokens + cache_read_tokens + cache_write_tokens + output_tokens > 0"
)


@dataclass(frozen=True, slots=True)
class _RollupStage:
    """The statements that add a rollup's increments through its temporary table."""

    create: sql.Composed
    copy: sql.Composed
    wire_types: list[str]
    upsert: sql.Composed


@dataclass(frozen=True, slots=True)
class _Rollup:
    """A rollup table: its time bucket column and width, and the keys it groups by."""

    table: str
    bucket: str  # column name, also the date_trunc unit's noun ("day", "hour")
    keys: tuple[str, ...]

    @property
    def columns(self) -> tuple[tuple[str, str], ...]:
        """(name, type) of every column: the bucket, the keys, then the sums."""
        return (
            (self.bucket, "timestamptz"),
            *((k, "text") for k in self.keys),
            *((c, "int8") for c in _SUMS),
            ("cost_usd", "numeric"),
            ("unpriced_events", "int8"),
            ("events", "int8"),
        )

    @property
    def unique_key(self) -> sql.Composed:
        """The columns of the rollup's unique index, in its order (also the upserts' row order)."""
        return sql.SQL(", ").join(sql.Identifier(c) for c in ("tenant", self.bucket, *self.keys[1:]))

    def _conflict(self) -> sql.Composed:
        updates: list[sql.Composable] = [
            sql.SQL("{c} = d.{c} + excluded.{c}").format(c=sql.Identifier(c)) for c in _SUMS
        ]
        updates.append(
            sql.SQL(
                "cost_usd = CASE WHEN d.cost_usd IS NULL AND excluded.cost_usd IS NULL THEN NULL "
                "ELSE coalesce(d.cost_usd, 0) + coalesce(excluded.cost_usd, 0) END"
            )
        )
        updates.append(sql.SQL("unpriced_events = d.unpriced_events + excluded.unpriced_events"))
        updates.append(sql.SQL("events = d.events + excluded.events"))
        return sql.SQL("ON CONFLICT ({key}) DO UPDATE SET {updates}").format(
            key=self.unique_key, updates=sql.SQL(", ").join(updates)
        )

    def stage(self) -> _RollupStage:
        """A temporary table of increments computed in Python (one row per group, emptied at every
        commit), and the upsert that adds them in key order."""
        stage = f"tokenscale_{self.table}_stage"
        create, copy = _temp_table_sql(stage, self.columns)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c, _ in self.columns)
        upsert = sql.SQL(
            "INSERT INTO {table} AS d ({cols}) SELECT {cols} FROM {stage} ORDER BY {order} {conflict}"
        ).format(
            table=sql.Identifier("tokenscale", self.table),
            cols=cols,
            stage=sql.Identifier(stage),
            order=self.unique_key,
            conflict=self._conflict(),
        )
        return _RollupStage(create, copy, _wire_types(t for _, t in self.columns), upsert)

    def subtract_sql(self, source: str) -> sql.Composed:
        """Subtracts the rows of CTE ``source``."""
        keys = sql.SQL(", ").join(sql.Identifier(k) for k in self.keys)
        sums: list[sql.Composable] = [sql.SQL("-sum({})::bigint").format(sql.Identifier(c)) for c in _SUMS]
        sums.append(sql.SQL("-sum(cost_usd)"))
        sums.append(sql.SQL("-count(*) FILTER (WHERE {})").format(sql.SQL(_UNPRICED)))
        sums.append(sql.SQL("-count(*)"))
        return sql.SQL(
            """INSERT INTO {table} AS d ({cols})
SELECT date_trunc({unit}, time, 'UTC'), {keys}, {sums} FROM {source}
GROUP BY 1, {keys} ORDER BY {keys}, 1
{conflict}"""
        ).format(
            table=sql.Identifier("tokenscale", self.table),
            cols=sql.SQL(", ").join(sql.Identifier(c) for c, _ in self.columns),
            unit=sql.Literal(self.bucket),
            keys=keys,
            sums=sql.SQL(", ").join(sums),
            source=sql.Identifier(source),
            conflict=self._conflict(),
        )

    def drop_empty_sql(self) -> sql.Composed:
        return sql.SQL("DELETE FROM {} WHERE events = 0 AND tenant = ANY(%s::text[])").format(
            sql.Identifier("tokenscale", self.table)
        )


_DAILY: Final = _Rollup("usage_daily", "day", ("tenant", "tool", "user_email", "provider", "model"))
_HOURLY: Final = _Rollup("usage_hourly", "hour", ("tenant",))
#: usage_hourly last: its few rows are shared by every export of a tenant (see _add_to_rollups).
_ROLLUP_STAGES: Final = (_DAILY.stage(), _HOURLY.stage())
#: Both rollup staging tables, in one round trip (they persist for the session once created).
_CREATE_ROLLUP_STAGES: Final = sql.SQL("; ").join([stage.create for stage in _ROLLUP_STAGES])

_UPSERT_STREAMS: Final = """
INSERT INTO tokenscale.usage_streams AS u (tenant, tool, stream, best_rank)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::int2[])
ON CONFLICT (tenant, tool, stream) DO UPDATE SET best_rank = excluded.best_rank
    WHERE u.best_rank > excluded.best_rank
RETURNING tenant, tool, stream, best_rank, xmax <> 0 AS improved
"""
# The streams the upsert did not return (already known with a rank at least as good): read in a
# statement of their own, so that a stream another export has just committed is seen.
_SELECT_STREAMS: Final = """
SELECT tenant, tool, stream, best_rank FROM tokenscale.usage_streams
JOIN unnest(%s::text[], %s::text[], %s::text[]) AS k(tenant, tool, stream) USING (tenant, tool, stream)
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


# RETURNING shows the updated (now uncounted) rows, so every returned row is subtracted.
_RETRACT_AND_SUBTRACT: Final = sql.SQL("WITH ret AS ({retract}), daily AS ({daily}) {hourly}").format(
    retract=sql.SQL(_RETRACT), daily=_DAILY.subtract_sql("ret"), hourly=_HOURLY.subtract_sql("ret")
)

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
    """Commits mapping results to ``usage_events`` (and, where needed, the rollups)."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        timeout: float = 10.0,
        on_commit: CommitListener | None = None,
    ) -> None:
        """``on_commit(first_ns, last_ns)``, where the rollups are continuous aggregates, is told the
        time span of each committed export's rows (a :class:`tokenscale.store.refresh.Refresher`)."""
        self._pool = pool
        self._timeout = timeout
        self._on_commit = on_commit
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
        if self._on_commit is not None and not backend.keeps_rollups:
            span = [e.time_ns for e in result.events] + [p.time_ns for p in result.cumulative]
            if span:
                self._on_commit(min(span), max(span))

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
        events = _unique(events)
        best = _best_ranks(conn, events, keeps_rollups=keeps_rollups)
        counted = [e.rank <= best[(e.tenant, e.tool, e.stream)] for e in events]
        rows = _event_rows(events, counted)
        try:
            # The common case: none of the rows is stored yet, so they go straight into the table
            # with one COPY (batched heap and WAL writes, no second copy of each row).
            with conn.transaction():
                _copy(conn, _COPY_EVENTS, _EVENT_TYPES, rows)
            stored = counted
        except psycopg.errors.UniqueViolation:
            # A retried export (or a record sent twice): back to the savepoint, and insert the rows
            # that are new through a staging table with ON CONFLICT DO NOTHING.
            log.debug("%d rows, some already stored: inserting the new ones through staging", len(rows))
            stored = _insert_new(conn, events, rows, counted)
        if keeps_rollups:
            _add_to_rollups(
                conn, [(e, row[_COST_AT]) for e, row, s in zip(events, rows, stored, strict=True) if s]
            )

    def _write_activity(self, conn: psycopg.Connection[Any], activity: list[ActivityEvent]) -> None:
        rows = _activity_rows(activity)
        try:
            with conn.transaction():
                _copy(conn, _COPY_ACTIVITY, _ACTIVITY_TYPES, rows)
        except psycopg.errors.UniqueViolation:
            log.debug("%d activity rows, some already stored: inserting the new ones via staging", len(rows))
            conn.execute(_CREATE_ACTIVITY_STAGE)
            _copy(conn, _COPY_ACTIVITY_STAGE, _ACTIVITY_TYPES, rows)
            conn.execute(_INSERT_ACTIVITY)

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


def _copy(
    conn: psycopg.Connection[Any],
    statement: sql.Composed,
    types: Sequence[str],
    rows: Iterable[Sequence[Any]],
) -> None:
    """Binary COPY of ``rows``, encoded as ``types`` (wire types: see :func:`_wire_types`)."""
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def _unique(events: list[UsageEvent]) -> list[UsageEvent]:
    """``events`` without repeats of a stored row's identity (dedupe key and microsecond)."""
    seen: set[tuple[bytes, int]] = set()
    out = []
    for e in events:
        key = (e.dedupe_key, e.time_ns // 1000)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def _best_ranks(
    conn: psycopg.Connection[Any], events: list[UsageEvent], *, keeps_rollups: bool
) -> dict[tuple[str, str, str], int]:
    """Every stream's best carrier rank, after recording this export's ranks (and retracting the
    stored rows of streams whose rank just improved)."""
    ranks: dict[tuple[str, str, str], int] = {}
    for e in events:
        key = (e.tenant, e.tool, e.stream)
        rank = ranks.get(key)
        if rank is None or e.rank < rank:
            ranks[key] = e.rank
    keys = sorted(ranks)  # one lock order for every writer
    columns = ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
    returned = conn.execute(_UPSERT_STREAMS, (*columns, [ranks[k] for k in keys])).fetchall()
    best = {(r[0], r[1], r[2]): r[3] for r in returned}
    improved = [r for r in returned if r[4]]
    if improved:
        params = (
            [r[0] for r in improved],
            [r[1] for r in improved],
            [r[2] for r in improved],
            [r[3] for r in improved],
        )
        if keeps_rollups:
            conn.execute(_RETRACT_AND_SUBTRACT, params)
            conn.execute(_DAILY.drop_empty_sql(), (params[0],))
            conn.execute(_HOURLY.drop_empty_sql(), (params[0],))
        else:
            conn.execute(_RETRACT, params)
    if len(best) < len(keys):
        known = [k for k in keys if k not in best]
        known_columns = ([k[0] for k in known], [k[1] for k in known], [k[2] for k in known])
        for tenant, tool, stream, rank in conn.execute(_SELECT_STREAMS, known_columns):
            best[(tenant, tool, stream)] = rank
    return best


def _cost(value: float | None) -> Decimal | None:
    """A cost as ``usage_events.cost_usd`` stores it: PostgreSQL's float8 -> numeric conversion
    (15 significant digits), rounded half away from zero to 10 decimals. Sums of these equal the
    database's sums of the stored column exactly."""
    if value is None or not isfinite(value):
        return None
    return Decimal(f"{value:.15g}").quantize(_COST_QUANTUM, ROUND_HALF_UP)


def _event_rows(events: Iterable[UsageEvent], counted: Iterable[bool]) -> list[tuple[Any, ...]]:
    """COPY rows of ``events`` (in ``_EVENT_COLUMNS`` order)."""
    # orjson: ~10x faster than json here, and NaN/Infinity (which jsonb rejects) become null.
    dumps = orjson.dumps
    return [
        (
            e.time_ns // 1000 - _PG_EPOCH_US,  # _pg_time, inlined
            e.tenant,
            e.carrier,
            e.rank,
            c,
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
            _cost(e.cost_usd),
            e.cost_source,
            e.duration_ms,
            e.error_type,
            b"\x01" + dumps(e.attributes, default=str),
            e.dedupe_key,
        )
        for e, c in zip(events, counted, strict=True)
    ]


def _activity_rows(activity: Iterable[ActivityEvent]) -> list[tuple[Any, ...]]:
    """COPY rows of ``activity`` (in ``_ACTIVITY_COLUMNS`` order)."""
    return [
        (
            _pg_time(a.time_ns),
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
        for a in activity
    ]


def _insert_new(
    conn: psycopg.Connection[Any], events: list[UsageEvent], rows: list[tuple[Any, ...]], counted: list[bool]
) -> list[bool]:
    """Insert the rows not stored yet (through the staging table); which events are now stored
    and counted."""
    conn.execute(_CREATE_STAGE)
    _copy(conn, _COPY_STAGE, _EVENT_TYPES, rows)
    one_us = timedelta(microseconds=1)
    new = {(bytes(key), (time - _UNIX_EPOCH) // one_us) for key, time in conn.execute(_INSERT_NEW)}
    return [c and (e.dedupe_key, e.time_ns // 1000) in new for e, c in zip(events, counted, strict=True)]


def _add_to_rollups(conn: psycopg.Connection[Any], events: list[tuple[UsageEvent, Decimal | None]]) -> None:
    """Add the (stored, counted) ``events`` (with their stored costs) to ``usage_daily`` and
    ``usage_hourly``: summed here per bucket and key, COPYed into staging tables, then one upsert
    per rollup in key order (``usage_hourly``, whose few rows every export of a tenant shares, last:
    its row locks are then held only until the commit)."""
    if not events:
        return
    daily: dict[tuple[Any, ...], list[Any]] = {}
    hourly: dict[tuple[Any, ...], list[Any]] = {}
    for e, cost in events:
        inp, cr, cw, out = e.input_tokens, e.cache_read_tokens, e.cache_write_tokens, e.output_tokens
        unpriced = 1 if cost is None and e.cost_source is None and inp + cr + cw + out > 0 else 0
        day = e.time_ns // _NS_PER_DAY * _NS_PER_DAY
        for groups, key in (
            (daily, (day, e.tenant, e.tool, e.user_email, e.provider, e.model)),
            (hourly, (e.time_ns // _NS_PER_HOUR * _NS_PER_HOUR, e.tenant)),
        ):
            g = groups.get(key)
            if g is None:
                groups[key] = [e.requests, inp, cr, cw, out, e.reasoning_tokens, cost, unpriced, 1]
                continue
            g[0] += e.requests
            g[1] += inp
            g[2] += cr
            g[3] += cw
            g[4] += out
            g[5] += e.reasoning_tokens
            if cost is not None:
                g[6] = cost if g[6] is None else g[6] + cost
            g[7] += unpriced
            g[8] += 1
    conn.execute(_CREATE_ROLLUP_STAGES)
    for stage, groups in zip(_ROLLUP_STAGES, (daily, hourly), strict=True):
        _copy(conn, stage.copy, stage.wire_types, [(_pg_time(k[0]), *k[1:], *g) for k, g in groups.items()])
    for stage in _ROLLUP_STAGES:
        conn.execute(stage.upsert)
