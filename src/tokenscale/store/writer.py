"""The batched usage writer: one binary COPY per export, straight into the tables.

Per export, in ONE transaction (so an export is acknowledged only once its rows are committed):

1. cumulative points are differenced against ``metric_series`` (rows locked in key order);
2. each request's best carrier in the export is its record: the export's requests
   (``tokenscale.requests``, by the request's identity) and its rows are binary-COPYed straight
   in inside a savepoint. If a request or a row is already stored (another carrier of a request,
   a retried export), a COPY fails on a unique key: back to the savepoint, the requests are
   resolved against the stored ones through a staging table (a better carrier amends its
   request's record, ``_amend``), and the rows that are new go in (``INSERT ... ON CONFLICT DO
   NOTHING`` if some are stored), so nothing is counted twice;
3. aggregate carriers (views) and the records of streams that have views go into the streams'
   ledgers (``ledger_views``, ``ledger_records``; streams locked with transaction advisory locks in
   key order), and each touched stream's residual rows are moved to what its ledger now computes
   (``mapping.ledger``; docs/mapping.md, "The counting model");
4. where tokenscale keeps the rollups itself (no continuous aggregates), the new counted rows and
   the changes of amended records and residuals are summed in Python per bucket and key
   (``usage_daily``, ``usage_scope_hourly``, ``usage_hourly``), and each rollup gets one sorted
   upsert from a COPYed staging table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import partial
from hashlib import blake2b
from math import isfinite
from typing import Any, Final, Protocol

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
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
from tokenscale.mapping.ledger import SubKey, Target, Vec, add, compatible, reconcile, targets, zero
from tokenscale.mapping.pricebook import PriceBook
from tokenscale.mapping.pricing import price_event
from tokenscale.mapping.rules import AGENT_SPAN, UNIT_USAGE_KEYS
from tokenscale.store.attributes import is_kept, kept_attributes, stored_columns
from tokenscale.store.backend import Backend, recorded_backend
from tokenscale.store.refresh import CommitListener

__all__ = ["UsageWriter", "open_pool"]

log = logging.getLogger(__name__)

_NS_PER_DAY: Final = 86_400 * 10**9
_NS_PER_HOUR: Final = 3_600 * 10**9
_UNIX_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_PG_EPOCH_US: Final = 946_684_800 * 10**6  # 2000-01-01, the origin of binary timestamps
_COST_QUANTUM: Final = Decimal("1e-10")  # usage_events.cost_usd is numeric(20, 10)
#: Listed rows (spans of agents and tools): stored uncounted, never a request or a view.
LISTED_CARRIER: Final = AGENT_SPAN.carrier


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
    ("requests", "int8"),
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
    ("trace_id", "bytea"),  # migration 0081: see tokenscale.store.attributes.stored_columns
    ("environment", "text"),
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


def _rendered(statement: sql.Composable) -> bytes:
    """A statement composed once, at import: psycopg would compose it again at every execution."""
    return statement.as_bytes(None)


def _copy_sql(table: sql.Composable, columns: Sequence[tuple[str, str]]) -> bytes:
    return _rendered(
        sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            table, sql.SQL(", ").join(sql.Identifier(n) for n, _ in columns)
        )
    )


def _temp_table_sql(stage: str, columns: Sequence[tuple[str, str]]) -> tuple[bytes, bytes]:
    """CREATE and COPY statements of a temporary table emptied at every commit."""
    create = sql.SQL("CREATE TEMPORARY TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
        sql.Identifier(stage),
        sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in columns),
    )
    return _rendered(create), _copy_sql(sql.Identifier(stage), columns)


def _stage_sql(
    stage: str, table: str, columns: tuple[tuple[str, str], ...], returning: str | None
) -> tuple[bytes, bytes, bytes]:
    """CREATE, COPY and INSERT statements of a temporary staging table whose rows are inserted into
    ``tokenscale.<table>`` unless already there."""
    names = sql.SQL(", ").join(sql.Identifier(n) for n, _ in columns)
    insert = sql.SQL(
        "INSERT INTO {table} ({names}) SELECT {names} FROM {stage} ON CONFLICT (dedupe_key, time) DO NOTHING"
    ).format(table=sql.Identifier("tokenscale", table), names=names, stage=sql.Identifier(stage))
    if returning:
        insert = sql.SQL("{} RETURNING {}").format(insert, sql.SQL(returning))
    return (*_temp_table_sql(stage, columns), _rendered(insert))


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


@dataclass(frozen=True, slots=True)
class _RollupStage:
    """The statements that add a rollup's increments through its temporary table."""

    create: bytes
    copy: bytes
    wire_types: list[str]
    upsert: bytes


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
                # an amendment took the last priced row out: no cost, as sum() of the raw rows says
                "WHEN coalesce(d.cost_usd, 0) + coalesce(excluded.cost_usd, 0) = 0 "
                "AND d.unpriced_events + excluded.unpriced_events >= d.events + excluded.events THEN NULL "
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
        return _RollupStage(create, copy, _wire_types(t for _, t in self.columns), _rendered(upsert))

    def drop_empty_sql(self) -> sql.Composed:
        return sql.SQL("DELETE FROM {} WHERE events = 0 AND tenant = ANY(%b::text[])").format(
            sql.Identifier("tokenscale", self.table)
        )


_DAILY: Final = _Rollup("usage_daily", "day", ("tenant", "tool", "user_email", "provider", "model"))
_HOURLY: Final = _Rollup("usage_hourly", "hour", ("tenant",))
#: Per hour and tool, model or user (email, else id): the budget check's whole hours.
_SCOPED: Final = _Rollup("usage_scope_hourly", "hour", ("tenant", "scope", "scope_value"))
#: usage_hourly last: its few rows are shared by every export of a tenant (see _add_to_rollups).
_ROLLUP_STAGES: Final = (_DAILY.stage(), _SCOPED.stage(), _HOURLY.stage())
#: Both rollup staging tables, in one round trip (they persist for the session once created).
_CREATE_ROLLUP_STAGES: Final = b"; ".join([stage.create for stage in _ROLLUP_STAGES])

_LOCK_SERIES: Final = """
INSERT INTO tokenscale.metric_series (series_key, start_ns, time_ns, value, count)
SELECT k, -1, -1, 0, 0 FROM unnest(%b::bytea[]) AS k ORDER BY k
ON CONFLICT (series_key) DO NOTHING
"""
_SELECT_SERIES: Final = """
SELECT series_key, start_ns, time_ns, value, count FROM tokenscale.metric_series
WHERE series_key = ANY(%b::bytea[]) ORDER BY series_key FOR UPDATE
"""
_UPDATE_SERIES: Final = """
UPDATE tokenscale.metric_series m
SET start_ns = v.start_ns, time_ns = v.time_ns, value = v.value, count = v.count, updated_at = now()
FROM unnest(%b::bytea[], %b::int8[], %b::int8[], %b::float8[], %b::int8[])
     AS v(series_key, start_ns, time_ns, value, count)
WHERE m.series_key = v.series_key
"""


def open_pool(
    conninfo: str, *, min_size: int = 1, max_size: int = 4, connect_timeout: float = 5
) -> ConnectionPool:
    """A connection pool whose connections speak UTC and fail fast when the server is gone
    (``connect_timeout``: seconds, at least 2, libpq's minimum)."""

    def configure(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SET TIME ZONE 'UTC'")
        conn.commit()

    pool = ConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        configure=configure,
        kwargs={"connect_timeout": max(2, round(connect_timeout))},
        open=False,
        name="tokenscale",
    )
    pool.open(wait=False)
    return pool


class PriceBookSource(Protocol):
    """Where the writer gets the price book (:class:`tokenscale.store.prices.PriceBookCache`)."""

    def current(self) -> PriceBook: ...


class UsageWriter:
    """Commits mapping results to ``usage_events`` (and, where needed, the rollups)."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        timeout: float = 10.0,
        prices: PriceBookSource | None = None,
        on_commit: CommitListener | None = None,
        keep_attributes: bool = False,
    ) -> None:
        """``on_commit(first_ns, last_ns)``, where the rollups are continuous aggregates, is told the
        time span of each committed export's rows (a :class:`tokenscale.store.refresh.Refresher`).

        ``keep_attributes``: store every attribute of a usage event, not only those something reads
        back (:mod:`tokenscale.store.attributes`)."""
        self._pool = pool
        self._timeout = timeout
        #: The operator's price book (``tokenscale prices``), applied to each export's usage events.
        self._prices = prices
        #: The price book of the last export written (what ``carried`` reads without any I/O).
        self._book: PriceBook | None = None
        self._on_commit = on_commit
        self._keep_attributes = keep_attributes
        self._backend: Backend | None = None
        self._partitions: set[date] = set()

    def carried(self) -> Callable[[str], bool] | None:
        """Which attributes a usage event must bring to this writer besides those the mapping reads
        (:attr:`tokenscale.mapping.MappingOptions.carried`): what it stores, and what the price book
        prices by; None (every attribute) with ``keep_attributes``. The price book is the one the
        last export was written with (read once at first), so that mapping never waits for the
        database: a price's new qualifying attribute is carried from the next export on."""
        return None if self._keep_attributes else self._carries

    def _carries(self, key: str) -> bool:
        if is_kept(key):
            return True
        if self._prices is None:
            return False
        book = self._book
        if book is None:
            book = self._book = self._prices.current()
        return key in book.attribute_keys

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
        for attempt in (1, 2):
            try:
                with self._pool.connection(timeout=self._timeout) as conn:
                    if backend.partitioned:
                        # In a transaction of its own: creating a partition locks the parent table, which
                        # inside the export's transaction (holding series row locks and stream locks) could
                        # deadlock with another receiver's export.
                        times = {e.time_ns for e in (*result.events, *result.listed)}
                        times |= {p.time_ns for p in result.cumulative}
                        with conn.transaction():
                            self._ensure_partitions(conn, times)
                    with conn.transaction():
                        touched = self._write(conn, backend, result)
                break
            except psycopg.errors.CheckViolation:
                # "no partition found for row": retention dropped a day this process had created;
                # forget what it knows of partitions and try once more.
                if attempt == 2 or not backend.partitioned or not self._partitions:
                    raise
                log.info("a known partition is gone (dropped by retention?): creating it again")
                self._partitions.clear()
            except (psycopg.OperationalError, PoolTimeout) as exc:
                raise RetryableError(f"database unavailable: {exc}") from exc
        if self._on_commit is not None and not backend.keeps_rollups:
            # The rows the export stored, and the stored rows it changed (amended records, residuals).
            span = [e.time_ns for e in result.events] + [p.time_ns for p in result.cumulative] + touched
            if span:
                self._on_commit(min(span), max(span))

    def _write(self, conn: psycopg.Connection[Any], backend: Backend, result: MappingResult) -> list[int]:
        """Write ``result``; the times of stored rows it changed besides its own (see _write_events)."""
        touched: list[int] = []
        events = list(result.events)
        activity = list(result.activity)
        if result.cumulative:
            for resolved in self._resolve_cumulative(conn, result):
                if isinstance(resolved, ActivityEvent):
                    activity.append(resolved)
                else:
                    events.append(resolved)
        book = None if self._prices is None else self._prices.current()
        self._book = book
        if events and book is not None:
            book.apply(events)
        events += result.listed  # stored uncounted and unpriced: what the span reports
        if events:
            touched = self._write_events(conn, events, keeps_rollups=backend.keeps_rollups, book=book)
        if activity:
            self._write_activity(conn, activity)
        return touched

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
        self,
        conn: psycopg.Connection[Any],
        events: list[UsageEvent],
        *,
        keeps_rollups: bool,
        book: PriceBook | None = None,
    ) -> list[int]:
        events = _unique(events)
        best = _best_carriers([e for e in events if not e.aggregate and e.carrier != LISTED_CARRIER])
        counted = {id(e) for e in best.values()}
        flags = [id(e) in counted for e in events]
        rows = _event_rows(events, flags, keep_attributes=self._keep_attributes)
        amendments: list[_Amendment] = []
        try:
            # The common case: the export's requests are all new and none of its rows is stored
            # yet, so the requests and the rows go straight into their tables with one COPY each
            # (batched heap and WAL writes, no staging copy, no conflict checks), every request's
            # best carrier its record.
            with conn.transaction():
                if best:  # none in a metrics export
                    _copy(conn, _COPY_REQUESTS, _REQUEST_TYPES, _request_rows(best))
                _copy(conn, _COPY_EVENTS, _EVENT_TYPES, rows)
            new = [True] * len(events)
        except psycopg.errors.UniqueViolation:
            # A request seen before (another carrier of it, a retried export): back to the
            # savepoint; the records are resolved against the stored requests, and the rows that
            # are new go in (through a staging table with ON CONFLICT DO NOTHING if some are stored).
            log.debug("%d rows, some requests or rows already stored: resolving through staging", len(rows))
            counted, amendments = _resolve_requests(conn, best)
            flags = [id(e) in counted for e in events]
            rows = _event_rows(events, flags, keep_attributes=self._keep_attributes)
            try:
                with conn.transaction():
                    _copy(conn, _COPY_EVENTS, _EVENT_TYPES, rows)
                new = [True] * len(events)
            except psycopg.errors.UniqueViolation:
                new = _insert_new(conn, events, rows)
        removed, amended = _amend(conn, amendments, keep_attributes=self._keep_attributes)
        # The export's new counted rows, with their cost as stored.
        records = [
            (e, row[_COST_AT]) for e, row, n, c in zip(events, rows, new, flags, strict=True) if n and c
        ]
        views = [e for e, n in zip(events, new, strict=True) if n and e.aggregate]
        residuals = _reconcile(conn, views, records, amended, removed, book)
        if keeps_rollups:
            entries = [r.entry(1) for r in amended]
            entries += [r.entry(-1) for r in removed]
            entries += residuals
            _add_to_rollups(conn, records, entries)
        # The stored rows this export changed: amended records and residual rows.
        return [r.time_ns for r in removed] + [e.time_ns for e in residuals]

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
        conn.execute("SELECT tokenscale.ensure_partitions(%b::date[])", ([_day(d) for d in missing],))
        self._partitions.update(_day(d) for d in missing)


def _day(day_number: int) -> date:
    return datetime.fromtimestamp(day_number * 86_400, UTC).date()


def _copy(
    conn: psycopg.Connection[Any],
    statement: bytes,
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


def _cost(value: float | None) -> Decimal | None:
    """A cost as ``usage_events.cost_usd`` stores it: PostgreSQL's float8 -> numeric conversion
    (15 significant digits), rounded half away from zero to 10 decimals. Sums of these equal the
    database's sums of the stored column exactly."""
    if value is None or not isfinite(value):
        return None
    return Decimal(f"{value:.15g}").quantize(_COST_QUANTUM, ROUND_HALF_UP)


def _event_rows(
    events: Iterable[UsageEvent], counted: Iterable[bool], *, keep_attributes: bool = False
) -> list[tuple[Any, ...]]:
    """COPY rows of ``events`` (in ``_EVENT_COLUMNS`` order); their attributes are those stored by
    default (:func:`tokenscale.store.attributes.kept_attributes`) unless ``keep_attributes``."""
    # orjson: ~10x faster than json here, and NaN/Infinity (which jsonb rejects) become null.
    dumps = orjson.dumps
    kept = _all_attributes if keep_attributes else _KeptBySequence().kept
    return [
        (
            e.time_ns // 1000 - _PG_EPOCH_US,  # _pg_time, inlined
            e.tenant,
            e.carrier,
            e.rank,
            c,
            e.tool,
            e.stream,
            # NULL where it is the stream's first part (migration 0082: readers take it from there)
            None if e.service_name == e.stream.partition("\x1f")[0] else e.service_name,
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
            b"\x01" + dumps(attrs, default=str),
            e.dedupe_key,
            trace_id,
            environment,
        )
        for e, c in zip(events, counted, strict=True)
        for attrs, trace_id, environment in (stored_columns(kept(e.attributes)),)
    ]


def _all_attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    return attrs


class _KeptBySequence:
    """:func:`kept_attributes` (which depends on the keys alone) with the keys kept worked out once
    per sequence of keys: the events of one export mostly share theirs."""

    __slots__ = ("_plans",)

    def __init__(self) -> None:
        self._plans: dict[tuple[str, ...], tuple[str, ...]] = {}

    def kept(self, attrs: dict[str, Any]) -> dict[str, Any]:
        sequence = tuple(attrs)
        keys = self._plans.get(sequence)
        if keys is None:
            keys = self._plans[sequence] = tuple(kept_attributes(dict.fromkeys(sequence)))
        return {key: attrs[key] for key in keys}


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
    conn: psycopg.Connection[Any], events: list[UsageEvent], rows: list[tuple[Any, ...]]
) -> list[bool]:
    """Insert the rows not stored yet (through the staging table); which of ``events`` were new."""
    conn.execute(_CREATE_STAGE)
    _copy(conn, _COPY_STAGE, _EVENT_TYPES, rows)
    one_us = timedelta(microseconds=1)
    new = {(bytes(key), (time - _UNIX_EPOCH) // one_us) for key, time in conn.execute(_INSERT_NEW)}
    return [(e.dedupe_key, e.time_ns // 1000) in new for e in events]


# --- per-request records -------------------------------------------------------------------------

_REQUEST_COLUMNS: Final = (
    ("tenant", "text"),
    ("request_key", "bytea"),
    ("rank", "int2"),
    ("row_time", "timestamptz"),
    ("row_key", "bytea"),
)
_REQUEST_TYPES: Final = ("text", "bytea", "int2", "int8", "bytea")
_COPY_REQUESTS: Final = _copy_sql(sql.Identifier("tokenscale", "requests"), _REQUEST_COLUMNS)
_CREATE_REQUEST_STAGE, _COPY_REQUEST_STAGE = _temp_table_sql("tokenscale_request_stage", _REQUEST_COLUMNS)
#: A new request's record is its best carrier of the export. Returns the requests inserted.
_INSERT_REQUESTS: Final = """
INSERT INTO tokenscale.requests (tenant, request_key, rank, row_time, row_key)
SELECT tenant, request_key, rank, row_time, row_key FROM tokenscale_request_stage ORDER BY tenant, request_key
ON CONFLICT (tenant, request_key) DO NOTHING RETURNING request_key
"""
_LOCK_REQUESTS: Final = """
SELECT tenant, request_key, rank, row_key, row_time FROM tokenscale.requests
WHERE (tenant, request_key) IN (SELECT * FROM unnest(%b::text[], %b::bytea[]))
ORDER BY tenant, request_key FOR UPDATE
"""
_UPDATE_REQUESTS: Final = """
UPDATE tokenscale.requests r
SET rank = v.rank, row_time = v.row_time, row_key = v.row_key, updated_at = now()
FROM unnest(%b::text[], %b::bytea[], %b::int2[], %b::timestamptz[], %b::bytea[])
     AS v(tenant, request_key, rank, row_time, row_key)
WHERE r.tenant = v.tenant AND r.request_key = v.request_key
"""
_ROW_COLUMNS: Final = (
    "time, tenant, tool, stream, user_email, user_id, session_id, provider, model, requests, input_tokens, "
    "cache_read_tokens, cache_write_tokens, output_tokens, reasoning_tokens, cost_usd, cost_source"
)
#: Whether a stored row counts billable units (:attr:`_Row.units`).
_HAS_UNITS: Final = "e.attributes ?| ARRAY[{}]".format(", ".join(f"'{k}'" for k in sorted(UNIT_USAGE_KEYS)))
_LOCK_RECORDS: Final = f"""
SELECT {", ".join("e." + c.strip() for c in _ROW_COLUMNS.split(","))}, {_HAS_UNITS}, e.dedupe_key
FROM tokenscale.usage_events e
JOIN unnest(%b::bytea[], %b::timestamptz[]) AS v(dedupe_key, time) USING (dedupe_key, time)
WHERE e.counted ORDER BY e.dedupe_key FOR UPDATE
"""
#: A no-op update of the records, to move them out of compressed batches (see _amend).
_DECOMPRESS_RECORDS: Final = """
UPDATE tokenscale.usage_events e SET amended_at = e.amended_at
FROM unnest(%b::bytea[], %b::timestamptz[]) AS v(dedupe_key, time)
WHERE e.dedupe_key = v.dedupe_key AND e.time = v.time AND e.counted
"""
#: The columns an amendment takes from the better carrier (not the record's time or identity).
_AMENDED: Final = (
    "source",
    "rank",
    "user_email",
    "user_id",
    "session_id",
    "conversation_id",
    "provider",
    "model",
    "operation",
    "request_id",
    "requests",
    *TOKEN_FIELDS,
    "cost_usd",
    "cost_source",
    "duration_ms",
    "error_type",
    "attributes",
    "trace_id",
    "environment",
)
_AMEND: Final = _rendered(
    sql.SQL(
        "UPDATE tokenscale.usage_events SET {sets}, amended_at = now() WHERE dedupe_key = %s AND time = %s"
    ).format(sets=sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in _AMENDED))
)


def _request_key(e: UsageEvent) -> bytes:
    """The request a record belongs to: its identity, else its own row (a request of its own)."""
    return e.identity if e.identity is not None else b"row:" + e.dedupe_key


def _best_carriers(records: list[UsageEvent]) -> dict[tuple[str, bytes], UsageEvent]:
    """Each request's best carrier among ``records`` (the first of the best rank), by
    (tenant, request key), in key order."""
    best: dict[tuple[str, bytes], UsageEvent] = {}
    for e in records:
        request = (e.tenant, _request_key(e))
        found = best.get(request)
        if found is None or e.rank < found.rank:
            best[request] = e
    return dict(sorted(best.items(), key=lambda item: item[0]))


def _request_rows(best: dict[tuple[str, bytes], UsageEvent]) -> Iterator[tuple[Any, ...]]:
    return ((t, k, e.rank, _pg_time(e.time_ns), e.dedupe_key) for (t, k), e in best.items())


def _resolve_requests(
    conn: psycopg.Connection[Any], best: dict[tuple[str, bytes], UsageEvent]
) -> tuple[set[int], list[_Amendment]]:
    """Which of the export's records are their request's counted record (by ``id()``), given
    each request's best carrier in the export, and the stored records that take the values of a
    better carrier of their request that just arrived (the carrier itself is stored uncounted:
    the record keeps its identity, listed once, amended).

    Idempotent: a retried export finds its rows already recorded and changes nothing."""
    if not best:
        return set(), []
    conn.execute(_CREATE_REQUEST_STAGE)
    _copy(conn, _COPY_REQUEST_STAGE, _REQUEST_TYPES, _request_rows(best))
    new = {bytes(k) for (k,) in conn.execute(_INSERT_REQUESTS)}
    # A new request: its best carrier is its record.
    counted: set[int] = {id(e) for (_, k), e in best.items() if k in new}
    amendments: list[_Amendment] = []
    updates: dict[tuple[str, bytes], tuple[int, datetime, bytes]] = {}
    known_requests = [r for r in best if r[1] not in new]
    if known_requests:
        columns = ([r[0] for r in known_requests], [r[1] for r in known_requests])
        for t, k, rank, row_key, row_time in conn.execute(_LOCK_REQUESTS, columns):
            request = (t, bytes(k))
            carrier = best[request]
            stored_key = bytes(row_key)
            if carrier.dedupe_key == stored_key:  # a retry: still its record
                counted.add(id(carrier))
            if carrier.rank < rank and carrier.dedupe_key != stored_key:
                # A better carrier: the record keeps its identity and takes the carrier's values.
                amendments.append(_Amendment(stored_key, row_time, carrier))
                updates[request] = (carrier.rank, row_time, stored_key)
    if updates:
        items = sorted(updates.items())
        conn.execute(
            _UPDATE_REQUESTS,
            (
                [k[0] for k, _ in items],
                [k[1] for k, _ in items],
                [u[0] for _, u in items],
                [u[1] for _, u in items],
                [u[2] for _, u in items],
            ),
        )
    return counted, amendments


@dataclass(frozen=True, slots=True)
class _Amendment:
    """A stored record to take the values of a better carrier of its request."""

    row_key: bytes
    row_time: datetime
    carrier: UsageEvent


@dataclass(frozen=True, slots=True)
class _Row:
    """A counted usage_events row as the ledger and the rollups see it."""

    time_ns: int
    tenant: str
    tool: str
    stream: str
    user_email: str | None
    user_id: str | None
    session_id: str | None
    provider: str | None
    model: str | None
    vec: tuple[int, int, int, int, int, int]  # requests, input, cache read, cache write, output, reasoning
    cost: Decimal | None
    cost_source: str | None
    #: It counts billable units (``UNIT_USAGE_KEYS``): without a cost it is unpriced, tokens or not.
    units: bool = False

    @property
    def subkey(self) -> SubKey:
        return (self.model, self.user_email or self.user_id, self.session_id)

    def entry(self, sign: int) -> _Entry:
        """Its contribution to the rollups (``sign`` -1: its removal)."""
        unpriced = _unpriced_requests(
            self.vec[0], sum(self.vec[1:5]), self.cost, self.cost_source, lambda: self.units
        )
        return _Entry(
            self.time_ns,
            self.tenant,
            self.tool,
            self.user_email,
            self.provider,
            self.model,
            tuple(sign * v for v in self.vec),
            None if self.cost is None else sign * self.cost,
            sign * unpriced,
            sign,
            self.user_id,
        )


def _has_units(attributes: dict[str, Any]) -> bool:
    """Whether a usage event counts billable units (``UNIT_USAGE_KEYS``: images, audio seconds, ...)."""
    return any(k in attributes for k in UNIT_USAGE_KEYS)


def _unpriced_requests(
    requests: int, tokens: int, cost: Decimal | None, cost_source: str | None, units: Callable[[], bool]
) -> int:
    """A counted row's share of ``unpriced_events``: its requests (at least one: a residual may not
    know its count) when it has tokens (input, cache, output) or billable units (``units()``, asked
    only for a row without tokens) and no cost."""
    if cost is not None or cost_source is not None or (tokens == 0 and not units()):
        return 0
    return max(requests, 1)


@dataclass(frozen=True, slots=True)
class _Entry:
    """An increment of the rollups."""

    time_ns: int
    tenant: str
    tool: str
    user_email: str | None
    provider: str | None
    model: str | None
    vec: tuple[int, ...]
    cost: Decimal | None
    unpriced: int
    events: int
    user_id: str | None = None


def _row_of(e: UsageEvent, cost: Decimal | None) -> _Row:
    return _Row(
        e.time_ns,
        e.tenant,
        e.tool,
        e.stream,
        e.user_email,
        e.user_id,
        e.session_id,
        e.provider,
        e.model,
        (
            e.requests,
            e.input_tokens,
            e.cache_read_tokens,
            e.cache_write_tokens,
            e.output_tokens,
            e.reasoning_tokens,
        ),
        cost,
        e.cost_source,
        _has_units(e.attributes),
    )


def _ns(value: datetime) -> int:
    return (value - _UNIX_EPOCH) // timedelta(microseconds=1) * 1000


def _stored_row(r: Sequence[Any], units: bool = False) -> _Row:
    """A ``_Row`` of a row selected as ``_ROW_COLUMNS`` (``units``: see :attr:`_Row.units`)."""
    return _Row(
        _ns(r[0]),
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        r[8],
        (r[9], r[10], r[11], r[12], r[13], r[14]),
        r[15],
        r[16],
        units,
    )


def _amend(
    conn: psycopg.Connection[Any], amendments: list[_Amendment], *, keep_attributes: bool
) -> tuple[list[_Row], list[_Row]]:
    """Give each stored record the values of its better carrier; the records before and after."""
    if not amendments:
        return [], []
    keys = ([a.row_key for a in amendments], [a.row_time for a in amendments])
    try:
        with conn.transaction():
            locked = conn.execute(_LOCK_RECORDS, keys).fetchall()
    except psycopg.errors.FeatureNotSupported:
        # Rows in a compressed chunk (TimescaleDB columnstore) cannot be locked as they are; an
        # UPDATE moves the batches it touches out of the columnstore first, then they can be.
        conn.execute(_DECOMPRESS_RECORDS, keys)
        locked = conn.execute(_LOCK_RECORDS, keys).fetchall()
    before = {bytes(r[-1]): _stored_row(r, r[-2]) for r in locked}
    after: list[_Row] = []
    params = []
    for a in amendments:
        old = before.get(a.row_key)
        if old is None:  # not a counted record any more (nothing else un-counts one): leave it
            continue
        e = a.carrier
        cost = _cost(e.cost_usd)
        attrs, trace_id, environment = stored_columns(
            e.attributes if keep_attributes else kept_attributes(e.attributes)
        )
        params.append(
            (
                e.carrier,
                e.rank,
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
                cost,
                e.cost_source,
                e.duration_ms,
                e.error_type,
                Jsonb(attrs),
                trace_id,
                environment,
                a.row_key,
                a.row_time,
            )
        )
        after.append(replace(_row_of(e, cost), time_ns=old.time_ns))
    with conn.cursor() as cur:
        cur.executemany(_AMEND, params)
    return list(before.values()), after


# --- reconciliation of aggregate carriers ----------------------------------------------------------

#: ``usage_events.source`` of the rows holding reconciled residuals.
RECONCILED: Final = "tokenscale.reconciled"
_SUMS_SQL: Final = (
    "requests, input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, reasoning_tokens, cost_usd"
)
_INSERT_STREAMS: Final = """
INSERT INTO tokenscale.ledger_streams (tenant, tool, stream)
SELECT * FROM unnest(%b::text[], %b::text[], %b::text[]) AS s(tenant, tool, stream) ORDER BY 1, 2, 3
ON CONFLICT (tenant, tool, stream) DO NOTHING
"""
_STREAM_WHERE: Final = "tenant = %s AND tool = %s AND stream = %s"


def _cols(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{c}" for c in columns.split(", "))


_BACKFILL_RECORDS: Final = f"""
INSERT INTO tokenscale.ledger_records (tenant, tool, stream, model, who, session, {_SUMS_SQL})
SELECT tenant, tool, stream, coalesce(model, ''), coalesce(user_email, user_id, ''), coalesce(session_id, ''),
       sum(requests), sum(input_tokens), sum(cache_read_tokens), sum(cache_write_tokens), sum(output_tokens),
       sum(reasoning_tokens), coalesce(sum(cost_usd), 0)
FROM tokenscale.usage_events
WHERE tenant = %s AND tool = %s AND stream = %s AND counted AND source <> '{RECONCILED}'
GROUP BY 1, 2, 3, 4, 5, 6
"""
#: Which of the given streams have views, and which of those have records in their ledger.
_PROBE_STREAMS: Final = """
SELECT s.tenant, s.tool, s.stream, s.has_views, s.has_views AND EXISTS (
    SELECT 1 FROM tokenscale.ledger_records r
    WHERE r.tenant = s.tenant AND r.tool = s.tool AND r.stream = s.stream)
FROM tokenscale.ledger_streams s
WHERE (s.tenant, s.tool, s.stream) IN (SELECT * FROM unnest(%b::text[], %b::text[], %b::text[]))
"""
_LOCK_STREAMS: Final = """
SELECT count(*) FROM (SELECT k, x FROM unnest(%b::int8[], %b::bool[]) AS u(k, x) ORDER BY k OFFSET 0) s,
LATERAL (SELECT CASE WHEN s.x THEN pg_advisory_xact_lock(s.k) ELSE pg_advisory_xact_lock_shared(s.k) END) l
"""
_MARK_VIEWS: Final = """
UPDATE tokenscale.ledger_streams SET has_views = true
WHERE (tenant, tool, stream) IN (SELECT * FROM unnest(%b::text[], %b::text[], %b::text[])) AND NOT has_views
"""
_KEY_ARRAYS: Final = "%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[]"
_SUM_ARRAYS: Final = "%b::int8[], %b::int8[], %b::int8[], %b::int8[], %b::int8[], %b::int8[], %b::numeric[]"
_ADD_RECORDS: Final = f"""
INSERT INTO tokenscale.ledger_records AS l (tenant, tool, stream, model, who, session, {_SUMS_SQL})
SELECT * FROM unnest({_KEY_ARRAYS}, {_SUM_ARRAYS}) ORDER BY 1, 2, 3, 4, 5, 6
ON CONFLICT (tenant, tool, stream, model, who, session) DO UPDATE SET
{", ".join(f"{c} = l.{c} + excluded.{c}" for c in _SUMS_SQL.split(", "))}
"""
_VIEW_STAGE_COLUMNS: Final = (
    *((c, "text") for c in ("tenant", "tool", "stream", "model", "who", "session", "view")),
    *((c, "int8") for c in _SUMS_SQL.split(", ")[:6]),
    ("cost_usd", "numeric"),
    ("reported", "bool"),
    ("template", "jsonb"),
)
_VIEW_STAGE_TYPES: Final = _wire_types(t for _, t in _VIEW_STAGE_COLUMNS)
_CREATE_VIEW_STAGE, _COPY_VIEW_STAGE = _temp_table_sql("tokenscale_view_stage", _VIEW_STAGE_COLUMNS)
_ADD_VIEWS: Final = f"""
INSERT INTO tokenscale.ledger_views AS l (tenant, tool, stream, model, who, session, view, {_SUMS_SQL},
    reported, template)
SELECT * FROM tokenscale_view_stage ORDER BY 1, 2, 3, 4, 5, 6, 7
ON CONFLICT (tenant, tool, stream, model, who, session, view) DO UPDATE SET
{", ".join(f"{c} = l.{c} + excluded.{c}" for c in _SUMS_SQL.split(", "))},
reported = l.reported OR excluded.reported, template = excluded.template
"""
#: The subkeys compatible with any of the given ones ('' matches anything on either side): the
#: general form, a scan of the stream's rows, used only for keys open in their model or user.
_COMPATIBLE: Final = """EXISTS (SELECT 1 FROM unnest(%b::text[], %b::text[], %b::text[]) AS k(m, w, s)
    WHERE (l.model = k.m OR l.model = '' OR k.m = '') AND (l.who = k.w OR l.who = '' OR k.w = '')
      AND (l.session = k.s OR l.session = '' OR k.s = ''))"""
#: Rows of the given subkeys (the keys come first in the text), probed per key through the primary
#: key (a lateral subquery the planner does not flatten: it would rather scan the stream's rows).
#: Exact: each part equal.
_EXACT: Final = (
    " FROM unnest(%b::text[], %b::text[], %b::text[]) AS k(m, w, s) CROSS JOIN LATERAL (SELECT * FROM {table}"
    " WHERE tenant = %s AND tool = %s AND stream = %s AND model = k.m AND who = k.w AND session = k.s"
    " {hour} OFFSET 0) l"
)
#: Exact keys with their open variants (each part equal or ''), made here, not sent: rows of any.
_VARIANTS: Final = (
    " FROM (SELECT DISTINCT v.m, v.w, v.s FROM unnest(%b::text[], %b::text[], %b::text[]) AS k(m, w, s)"
    " CROSS JOIN LATERAL (VALUES (k.m, k.w, k.s), (k.m, k.w, ''), (k.m, '', k.s), (k.m, '', ''),"
    " ('', k.w, k.s), ('', k.w, ''), ('', '', k.s), ('', '', '')) AS v(m, w, s)) k"
    " CROSS JOIN LATERAL (SELECT * FROM {table}"
    " WHERE tenant = %s AND tool = %s AND stream = %s AND model = k.m AND who = k.w AND session = k.s"
    " OFFSET 0) l"
)
#: (model, user) pairs: rows of the pair, any session.
_PREFIX: Final = (
    " FROM unnest(%b::text[], %b::text[]) AS k(m, w) CROSS JOIN LATERAL (SELECT * FROM {table}"
    " WHERE tenant = %s AND tool = %s AND stream = %s AND model = k.m AND who = k.w OFFSET 0) l"
)
_VIEW_COLUMNS: Final = (
    f"l.model, l.who, l.session, l.view, {_cols('l', _SUMS_SQL)}, l.reported, l.template::text"
)
_RECORD_COLUMNS: Final = f"l.model, l.who, l.session, {_cols('l', _SUMS_SQL)}"
_SELECT_VIEWS: Final = {
    "exact": "SELECT " + _VIEW_COLUMNS + _VARIANTS.format(table="tokenscale.ledger_views"),
    "prefix": "SELECT " + _VIEW_COLUMNS + _PREFIX.format(table="tokenscale.ledger_views"),
    "open": f"SELECT {_VIEW_COLUMNS} FROM tokenscale.ledger_views l WHERE {_STREAM_WHERE} AND {_COMPATIBLE}",
}
_SELECT_RECORDS: Final = {
    "exact": "SELECT " + _RECORD_COLUMNS + _VARIANTS.format(table="tokenscale.ledger_records"),
    "prefix": "SELECT " + _RECORD_COLUMNS + _PREFIX.format(table="tokenscale.ledger_records"),
    "open": (
        f"SELECT {_RECORD_COLUMNS} FROM tokenscale.ledger_records l WHERE {_STREAM_WHERE} AND {_COMPATIBLE}"
    ),
}
#: The residual rows of the given subkeys: each recent row (hour at or after the cutoff) and, with
#: hour NULL, the sum of the final rows (before it), in one statement.
_SELECT_RESIDUALS: Final = (
    "WITH k AS MATERIALIZED (SELECT * FROM unnest(%b::text[], %b::text[], %b::text[]) AS k(m, w, s)) "
    f"SELECT l.model, l.who, l.session, l.hour, {_cols('l', _SUMS_SQL)}"
    + _EXACT.replace(" FROM unnest(%b::text[], %b::text[], %b::text[]) AS k(m, w, s)", " FROM k").format(
        table="tokenscale.ledger_residuals", hour="AND hour >= %s"
    )
    + " UNION ALL SELECT l.model, l.who, l.session, NULL, "
    + ", ".join(f"sum(l.{c})::int8" for c in _SUMS_SQL.split(", ")[:6])
    + ", sum(l.cost_usd)"
    + _EXACT.replace(" FROM unnest(%b::text[], %b::text[], %b::text[]) AS k(m, w, s)", " FROM k").format(
        table="tokenscale.ledger_residuals", hour="AND hour < %s"
    )
    + " GROUP BY 1, 2, 3"
)
_RESIDUAL_STAGE_COLUMNS: Final = (
    *((c, "text") for c in ("tenant", "tool", "stream", "model", "who", "session")),
    ("hour", "timestamptz"),
    *((c, "int8") for c in _SUMS_SQL.split(", ")[:6]),
    ("cost_usd", "numeric"),
)
_CREATE_LEDGER_RESIDUAL_STAGE, _COPY_LEDGER_RESIDUAL_STAGE = _temp_table_sql(
    "tokenscale_ledger_residual_stage", _RESIDUAL_STAGE_COLUMNS
)
_SET_RESIDUALS: Final = f"""
INSERT INTO tokenscale.ledger_residuals AS l (tenant, tool, stream, model, who, session, hour, {_SUMS_SQL})
SELECT * FROM tokenscale_ledger_residual_stage ORDER BY 1, 2, 3, 4, 5, 6, 7
ON CONFLICT (tenant, tool, stream, model, who, session, hour) DO UPDATE SET
{", ".join(f"{c} = excluded.{c}" for c in _SUMS_SQL.split(", "))}
"""
#: The stored residual rows a move replaces, as they were (the statement's snapshot is taken
#: before its upsert changes them).
_SELECT_RESIDUAL_ROWS: Final = f"""
SELECT e.dedupe_key, {", ".join("e." + c.strip() for c in _ROW_COLUMNS.split(","))}, e.counted
FROM tokenscale.usage_events e JOIN tokenscale_residual_stage v USING (dedupe_key, time)
"""
_CREATE_RESIDUAL_STAGE, _COPY_RESIDUAL_STAGE = _temp_table_sql("tokenscale_residual_stage", _EVENT_COLUMNS)
#: The residuals moved, in the ledger (ledger_residuals) and as usage_events rows, in one
#: statement that returns the rows as they were.
_MOVE_RESIDUALS: Final = _rendered(
    sql.SQL(
        "WITH old AS ({old}), kept AS ({kept}), moved AS ("
        "INSERT INTO tokenscale.usage_events ({cols}) SELECT {cols} FROM tokenscale_residual_stage "
        "ON CONFLICT (dedupe_key, time) DO UPDATE SET {sets}) SELECT * FROM old"
    ).format(
        old=sql.SQL(_SELECT_RESIDUAL_ROWS),
        kept=sql.SQL(_SET_RESIDUALS),
        cols=sql.SQL(", ").join(sql.Identifier(n) for n, _ in _EVENT_COLUMNS),
        sets=sql.SQL(", ").join(
            sql.SQL("{c} = excluded.{c}").format(c=sql.Identifier(c))
            # Every column but the row's identity: a residual's best view (and so its provider, user,
            # ...) may change, and the rollups take the row's old values out and its new ones in.
            for c in (
                "counted",
                "service_name",
                "user_email",
                "user_id",
                "session_id",
                "conversation_id",
                "provider",
                "model",
                "operation",
                "requests",
                *TOKEN_FIELDS,
                "cost_usd",
                "cost_source",
                "attributes",
            )
        ),
    )
)
_RECENT_HOURS: Final = 48
#: The reconciliation's temporary tables, in one round trip (they persist for the session).
_CREATE_RECONCILE_STAGES: Final = b"; ".join(
    [_CREATE_VIEW_STAGE, _CREATE_LEDGER_RESIDUAL_STAGE, _CREATE_RESIDUAL_STAGE]
)


def _part(value: str | None) -> str:
    return value or ""


def _unpart(value: str) -> str | None:
    return value or None


def _template(e: UsageEvent) -> dict[str, Any]:
    return {
        "service_name": e.service_name,
        "user_email": e.user_email,
        "user_id": e.user_id,
        "session_id": e.session_id,
        "conversation_id": e.conversation_id,
        "provider": e.provider,
        "model": e.model,
        "operation": e.operation,
    }


def _reconcile(
    conn: psycopg.Connection[Any],
    views: list[UsageEvent],
    records: list[tuple[UsageEvent, Decimal | None]],
    amended: list[_Row],
    removed: list[_Row],
    book: PriceBook | None = None,
) -> list[_Entry]:
    """Record the export's new aggregate increments and record changes (new counted ``records``
    with their stored cost, ``amended`` records as they are now, as they were before in
    ``removed``) in the ledger of their streams, move each stream's residual rows to what the
    ledger now computes, and return the rollup increments of those moves. Streams are locked in
    key order."""
    streams = sorted(
        {(e.tenant, e.tool, e.stream) for e in views}
        | {(e.tenant, e.tool, e.stream) for e, _ in records}
        | {(r.tenant, r.tool, r.stream) for r in (*amended, *removed)}
    )
    if not streams:
        return []
    columns = ([s[0] for s in streams], [s[1] for s in streams], [s[2] for s in streams])
    viewed = {(e.tenant, e.tool, e.stream) for e in views}
    has_views, has_records = _lock_streams(conn, streams, columns, viewed)
    new_streams = sorted(viewed - has_views.keys())
    if new_streams:
        # A stream is kept in ledger_streams from its first view on (records alone need no row);
        # under its exclusive lock.
        conn.execute(
            _INSERT_STREAMS,
            ([v[0] for v in new_streams], [v[1] for v in new_streams], [v[2] for v in new_streams]),
        )
    # A stream's records are kept in the ledger from its first view on: then the records stored so
    # far (this export's included) are summed once from usage_events; before, nothing is kept.
    first = sorted(s for s in viewed if not has_views.get(s))
    for stream in first:
        conn.execute(_BACKFILL_RECORDS, stream)

    # Records touch the ledger only in streams that have views (or get their first now), and
    # are added to it only where it was kept before (a first view's backfill has this export's).
    ledgered = {s for s in streams if has_views.get(s) or s in viewed}
    added = [_row_of(e, cost) for e, cost in records if (e.tenant, e.tool, e.stream) in ledgered]
    added += [r for r in amended if (r.tenant, r.tool, r.stream) in ledgered]
    taken = [r for r in removed if (r.tenant, r.tool, r.stream) in ledgered]
    sums: dict[tuple[str, ...], Vec] = {}
    touched: dict[tuple[str, str, str], set[tuple[SubKey, int]]] = {}
    for rows, sign in ((added, 1), (taken, -1)):
        for r in rows:
            stream_key = (r.tenant, r.tool, r.stream)
            sk = r.subkey
            touched.setdefault(stream_key, set()).add((sk, r.time_ns // _NS_PER_HOUR))
            if has_views.get(stream_key):
                vec = sums.setdefault((r.tenant, r.tool, r.stream, *map(_part, sk)), zero())
                add(vec, (*r.vec, r.cost or Decimal(0)), sign)
    if sums:
        items = sorted(sums.items())
        conn.execute(
            _ADD_RECORDS,
            [[k[i] for k, _ in items] for i in range(6)] + [[v[i] for _, v in items] for i in range(7)],
        )

    # Per view key: its increment, whether it reports cost, and its last event (the template).
    increments: dict[tuple[str, ...], tuple[Vec, list[bool], list[UsageEvent]]] = {}
    for e in views:
        sk = (e.model, e.user_email or e.user_id, e.session_id)
        key = (e.tenant, e.tool, e.stream, sk[0] or "", sk[1] or "", sk[2] or "", e.carrier)
        found = increments.get(key)
        if found is None:
            found = increments[key] = (zero(), [False], [e])
        vec, reported, last = found
        vec[0] += e.requests
        vec[1] += e.input_tokens
        vec[2] += e.cache_read_tokens
        vec[3] += e.cache_write_tokens
        vec[4] += e.output_tokens
        vec[5] += e.reasoning_tokens
        if e.cost_source == "reported":
            vec[6] += _cost(e.cost_usd) or Decimal(0)
            reported[0] = True
        last[0] = e
        touched.setdefault((e.tenant, e.tool, e.stream), set()).add((sk, e.time_ns // _NS_PER_HOUR))
    if increments:
        conn.execute(_CREATE_RECONCILE_STAGES)
        dumps = orjson.dumps
        _copy(
            conn,
            _COPY_VIEW_STAGE,
            _VIEW_STAGE_TYPES,
            ((*k, *v[0], v[1][0], b"\x01" + dumps(_template(v[2][0]))) for k, v in increments.items()),
        )
        conn.execute(_ADD_VIEWS)
        if first:
            conn.execute(_MARK_VIEWS, ([m[0] for m in first], [m[1] for m in first], [m[2] for m in first]))
            for m in first:
                has_views[m] = True
    # Streams whose ledger may hold records: those probed with records, and those given records now.
    recorded = has_records | set(first) | {k[:3] for k in sums}
    entries: list[_Entry] = []
    residual_rows: list[tuple[Any, ...]] = []
    ledger_rows: list[tuple[Any, ...]] = []
    for stream in streams:
        if has_views.get(stream):
            entries += _reconcile_stream(
                conn, stream, touched.get(stream, set()), ledger_rows, residual_rows, book, stream in recorded
            )
    if ledger_rows:  # each moved residual has its ledger row and its usage_events row
        if not increments:
            conn.execute(_CREATE_RECONCILE_STAGES)
        # The residuals as the ledger keeps them and their usage_events rows, new or moved (streams
        # are disjoint: one upsert each), and the rows as they were: the old ones out of the rollups
        # (the new ones are in entries).
        _copy(
            conn, _COPY_LEDGER_RESIDUAL_STAGE, _wire_types(t for _, t in _RESIDUAL_STAGE_COLUMNS), ledger_rows
        )
        _copy(conn, _COPY_RESIDUAL_STAGE, _EVENT_TYPES, residual_rows)
        for r in conn.execute(_MOVE_RESIDUALS).fetchall():
            if r[-1]:  # counted
                entries.append(_stored_row(r[1:]).entry(-1))
    return entries


def _stream_lock_key(stream: tuple[str, str, str]) -> int:
    """The advisory lock of a stream's ledger (a signed 64-bit hash of its key)."""
    digest = blake2b("\x1f".join(stream).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _lock_streams(
    conn: psycopg.Connection[Any],
    streams: list[tuple[str, str, str]],
    columns: tuple[list[str], list[str], list[str]],
    viewed: set[tuple[str, str, str]],
) -> tuple[dict[tuple[str, str, str], bool], set[tuple[str, str, str]]]:
    """Lock the streams (transaction-scoped advisory locks, taken in one statement in lock-key
    order): exclusively those whose ledger this export reconciles (they have views), shared the
    others, so that exports adding only records to a stream without views do not wait for each
    other, while a first view waits for them (and sees their records). Which streams have views,
    and which of those have records in their ledger, as seen under the locks."""

    def probe() -> tuple[dict[tuple[str, str, str], bool], set[tuple[str, str, str]]]:
        found = conn.execute(_PROBE_STREAMS, columns).fetchall()
        views = {(t, tool, st): hv for t, tool, st, hv, _ in found}
        return views, {(t, tool, st) for t, tool, st, _, r in found if r}

    if viewed.issuperset(streams):
        # Views in every stream (a metrics export): every lock is exclusive whatever the streams
        # have, so none is ever taken again, and the streams are probed once, under the locks.
        keys = sorted(_stream_lock_key(s) for s in streams)
        conn.execute(_LOCK_STREAMS, (keys, [True] * len(keys)))
        return probe()
    has_views, _ = probe()
    while True:
        modes = {s: s in viewed or has_views.get(s, False) for s in streams}
        keys_modes = sorted((_stream_lock_key(s), modes[s]) for s in streams)
        with conn.transaction():
            conn.execute(_LOCK_STREAMS, ([k for k, _ in keys_modes], [x for _, x in keys_modes]))
            # Under the locks: a first view may have committed since the probe. Then this export
            # holds a shared lock where it needs an exclusive one: it lets go of its locks (back to
            # the savepoint) and takes them again, all in key order (upgrading a shared lock in
            # place could deadlock with another export doing the same); views never go away, so
            # this ends.
            has_views, has_records = probe()
            if not any(has_views.get(s) and not modes[s] for s in streams):
                return has_views, has_records
            raise psycopg.Rollback  # leaves the block at the savepoint; the loop locks again


def _reconcile_stream(
    conn: psycopg.Connection[Any],
    stream: tuple[str, str, str],
    touched: set[tuple[SubKey, int]],
    ledger_rows: list[tuple[Any, ...]],
    residual_rows: list[tuple[Any, ...]],
    book: PriceBook | None = None,
    with_records: bool = True,
) -> list[_Entry]:
    """Move the stream's residuals to what its ledger now computes: the rollup increments of the
    new residual rows (the old ones come back from their upsert); the moved residuals are appended
    to ``ledger_rows`` (ledger_residuals) and their usage_events rows to ``residual_rows``.
    ``with_records``: whether the stream's ledger may hold records (else they are not looked for)."""
    tenant, tool, name = stream
    views: dict[SubKey, dict[str, Vec]] = {}
    reported: set[str] = set()
    templates: dict[tuple[SubKey, str], str] = {}  # JSON, decoded only for the residuals that move
    # The views the export's carriers may change, and (to a fixpoint) the views those depend on.
    queried: set[SubKey] = set()
    keys = {sk for sk, _ in touched}
    while keys:
        queried |= keys
        for row in _select_compatible(conn, _SELECT_VIEWS, stream, keys, 4):
            sk = (_unpart(row[0]), _unpart(row[1]), _unpart(row[2]))
            views.setdefault(sk, {})[row[3]] = list(row[4:11])
            if row[11]:
                reported.add(row[3])
            templates[(sk, row[3])] = row[12]
        keys = {sk for sk in views if None in sk} - queried
    if not views:
        return []
    records = (
        {
            (_unpart(r[0]), _unpart(r[1]), _unpart(r[2])): list(r[3:10])
            for r in _select_compatible(conn, _SELECT_RECORDS, stream, views, 3)
        }
        if with_records
        else {}
    )
    found = targets(views, reported, records)
    latest = max((h for _, h in touched), default=None)
    if latest is None:
        return []
    cutoff = min(h for _, h in touched) - _RECENT_HOURS
    cutoff_time = _UNIX_EPOCH + timedelta(hours=cutoff)
    recent: dict[SubKey, dict[int, Vec]] = {}
    final: dict[SubKey, Vec] = {}
    stored = (*_subkey_arrays(views), *stream, cutoff_time, *stream, cutoff_time)
    for r in conn.execute(_SELECT_RESIDUALS, stored, prepare=False):
        sk = (_unpart(r[0]), _unpart(r[1]), _unpart(r[2]))
        if r[3] is None:  # the sum of the final rows
            final[sk] = list(r[4:11])
        else:
            recent.setdefault(sk, {})[_ns(r[3]) // _NS_PER_HOUR] = list(r[4:11])
    # The latest hour the export touched per subkey; keys that leave a part open may match others.
    latest_by_key: dict[SubKey, int] = {}
    for k, h in touched:
        latest_by_key[k] = max(latest_by_key.get(k, h), h)
    open_keys = [(k, h) for k, h in latest_by_key.items() if None in k]
    changes: list[tuple[SubKey, int, Vec, Target]] = []
    for sk, target in found.items():
        if None in sk:
            hours = [h for k, h in latest_by_key.items() if compatible(k, sk)]
        else:
            hours = [h for k, h in open_keys if compatible(k, sk)]
            if sk in latest_by_key:
                hours.append(latest_by_key[sk])
        trigger = max(hours) if hours else max(recent.get(sk, {}), default=latest)
        for hour, vec in reconcile(target.vec, recent.get(sk, {}), final.get(sk, zero()), trigger).items():
            changes.append((sk, hour, vec, target))
    if not changes:
        return []
    ledger_rows.extend(
        (*stream, *map(_part, sk), _pg_time(hour * _NS_PER_HOUR), *(int(v) for v in vec[:6]), vec[6])
        for sk, hour, vec, _ in changes
    )
    # The usage_events rows mirroring the residuals: the new ones into the rollups.
    row_keys = [_residual_key(stream, c[0], c[1]) for c in changes]
    entries: list[_Entry] = []
    events: list[UsageEvent] = []
    flags: list[bool] = []
    loads = orjson.loads
    for (sk, hour, vec, target), key in zip(changes, row_keys, strict=True):
        template = loads(templates[(sk, target.view)])
        event = UsageEvent(
            hour * _NS_PER_HOUR,
            tenant,
            RECONCILED,
            100,
            tool,
            name,
            template.get("service_name") or "",
            key,
            user_email=template.get("user_email"),
            user_id=template.get("user_id"),
            session_id=template.get("session_id"),
            conversation_id=template.get("conversation_id"),
            provider=template.get("provider"),
            model=template.get("model"),
            operation=template.get("operation"),
            requests=int(vec[0]),
            input_tokens=int(vec[1]),
            cache_read_tokens=int(vec[2]),
            cache_write_tokens=int(vec[3]),
            output_tokens=int(vec[4]),
            reasoning_tokens=int(vec[5]),
            attributes={"reconciled.view": target.view},
        )
        if target.reported:
            event.cost_usd = float(vec[6])
            event.cost_source = "reported"
        else:
            price_event(event, per_request=False)
            if book is not None:
                book.apply([event])
        events.append(event)
        flags.append(any(vec[:6]) or (target.reported and vec[6] != 0))
    rows = _event_rows(events, flags)
    for event, row, is_counted in zip(events, rows, flags, strict=True):
        if is_counted:
            entries.append(_row_of(event, row[_COST_AT]).entry(1))
    residual_rows.extend(rows)
    return entries


def _select_compatible(
    conn: psycopg.Connection[Any],
    queries: dict[str, str],
    stream: tuple[str, str, str],
    keys: Iterable[SubKey],
    width: int,
) -> list[tuple[Any, ...]]:
    """The stream's ledger rows whose subkey is compatible with one of ``keys`` (a part left open,
    None in a key and '' in a row, matches anything), each once (rows are told apart by their
    first ``width`` columns). A key open in no part matches the rows with each of its parts either
    equal or open (8 exact index probes, the variants made by the statement); one open only in its
    session, the rows of its model and user, each either equal or open (4 index ranges); others go
    through the general scan."""
    exact: set[tuple[str, str, str]] = set()
    prefix: set[tuple[str, str]] = set()
    other: list[SubKey] = []
    for m, w, s in keys:
        if m is None or w is None:
            other.append((m, w, s))
        elif s is None:
            for pm in (m, ""):
                for pw in (w, ""):
                    prefix.add((pm, pw))
        else:
            exact.add((m, w, s))
    rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    if exact:
        ordered = sorted(exact)
        params = ([k[0] for k in ordered], [k[1] for k in ordered], [k[2] for k in ordered], *stream)
        rows.update((r[:width], r) for r in conn.execute(queries["exact"], params, prepare=False))
    if prefix:
        pairs = sorted(prefix)
        rows.update(
            (r[:width], r)
            for r in conn.execute(
                queries["prefix"], ([p[0] for p in pairs], [p[1] for p in pairs], *stream), prepare=False
            )
        )
    if other:
        rows.update(
            (r[:width], r)
            for r in conn.execute(queries["open"], (*stream, *_subkey_arrays(other)), prepare=False)
        )
    return list(rows.values())


def _subkey_arrays(keys: Iterable[SubKey]) -> tuple[list[str], list[str], list[str]]:
    ordered = sorted(tuple(map(_part, k)) for k in keys)
    return [k[0] for k in ordered], [k[1] for k in ordered], [k[2] for k in ordered]


def _residual_key(stream: tuple[str, str, str], sk: SubKey, hour: int) -> bytes:
    h = blake2b(digest_size=16)
    h.update("\x1f".join((RECONCILED, *stream, *map(_part, sk), str(hour))).encode())
    return h.digest()


# --- rollups -------------------------------------------------------------------------------------


def _add_to_rollups(
    conn: psycopg.Connection[Any],
    records: list[tuple[UsageEvent, Decimal | None]],
    entries: list[_Entry],
) -> None:
    """Add new counted ``records`` (with their stored cost) and ``entries`` to ``usage_daily``,
    ``usage_scope_hourly`` and ``usage_hourly``: summed here per bucket and key, COPYed into staging
    tables, then one upsert per rollup in key order (``usage_hourly``, whose few rows every export
    of a tenant shares, last: its row locks are then held only until the commit). Rows whose events
    drop to zero are deleted."""
    if not entries and not records:
        return
    daily: dict[tuple[Any, ...], list[Any]] = {}
    hourly: dict[tuple[Any, ...], list[Any]] = {}
    scoped: dict[tuple[Any, ...], list[Any]] = {}

    def add_to(
        day: int, hour: int, tenant: str, tool: str, user_email: str | None, user: str | None,
        provider: str | None, model: str | None, vec: tuple[int, ...], cost: Decimal | None,
        unpriced: int, events: int,
    ) -> None:  # fmt: skip
        for groups, key in (
            (daily, (day, tenant, tool, user_email, provider, model)),
            (scoped, (hour, tenant, "tool", tool)),
            (scoped, (hour, tenant, "model", model)),
            (scoped, (hour, tenant, "user", user)),
            (hourly, (hour, tenant)),
        ):
            if groups is scoped and key[-1] is None:  # no model or no user: nothing for that scope
                continue
            g = groups.get(key)
            if g is None:
                groups[key] = [*vec, cost, unpriced, events]
                continue
            for i in range(6):
                g[i] += vec[i]
            if cost is not None:
                g[6] = cost if g[6] is None else g[6] + cost
            g[7] += unpriced
            g[8] += events

    for r, cost in records:
        t = r.time_ns
        vec = (
            r.requests, r.input_tokens, r.cache_read_tokens, r.cache_write_tokens, r.output_tokens,
            r.reasoning_tokens,
        )  # fmt: skip
        unpriced = _unpriced_requests(
            vec[0], vec[1] + vec[2] + vec[3] + vec[4], cost, r.cost_source, partial(_has_units, r.attributes)
        )
        add_to(
            t // _NS_PER_DAY * _NS_PER_DAY, t // _NS_PER_HOUR * _NS_PER_HOUR, r.tenant, r.tool,
            r.user_email, r.user_email or r.user_id, r.provider, r.model, vec, cost, unpriced, 1,
        )  # fmt: skip
    for e in entries:
        t = e.time_ns
        add_to(
            t // _NS_PER_DAY * _NS_PER_DAY, t // _NS_PER_HOUR * _NS_PER_HOUR, e.tenant, e.tool,
            e.user_email, e.user_email or e.user_id, e.provider, e.model, e.vec, e.cost, e.unpriced,
            e.events,
        )  # fmt: skip
    conn.execute(_CREATE_ROLLUP_STAGES)
    for stage, groups in zip(_ROLLUP_STAGES, (daily, scoped, hourly), strict=True):
        _copy(conn, stage.copy, stage.wire_types, [(_pg_time(k[0]), *k[1:], *g) for k, g in groups.items()])
    for stage in _ROLLUP_STAGES:
        conn.execute(stage.upsert)
    # Only a group whose events this export lowers can drop to zero (a residual that moves within
    # its hour takes one event out and puts one back: nothing to delete).
    for rollup, groups in ((_DAILY, daily), (_SCOPED, scoped), (_HOURLY, hourly)):
        tenants = sorted({k[1] for k, g in groups.items() if g[8] < 0})
        if tenants:
            conn.execute(rollup.drop_empty_sql(), (tenants,))
