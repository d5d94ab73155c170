"""The price book in the database (``tokenscale.prices``), re-pricing stored usage, unpriced usage.

:func:`load_price_book` reads the book for the pure pricing (:mod:`tokenscale.mapping.pricebook`);
:class:`PriceBookCache` keeps it for the writer, re-read every few seconds so that ``tokenscale
prices set`` applies to a running service. :func:`reprice` recomputes the cost of stored usage
events with today's price book and genai-prices, keeping the cost as first recorded beside it, and
keeps the rollups exact.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from math import isfinite
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from tokenscale.mapping.model import UsageEvent
from tokenscale.mapping.pricebook import ALWAYS, CustomPrice, PriceBook, parse_unit_key
from tokenscale.mapping.pricing import price_event
from tokenscale.mapping.rules import AGENT_SPAN, UNIT_USAGE_KEYS
from tokenscale.store.backend import recorded_backend

__all__ = [
    "PriceBookCache",
    "RepriceReport",
    "UnpricedUsage",
    "delete_price",
    "import_prices",
    "list_prices",
    "load_price_book",
    "parse_prices",
    "reprice",
    "set_price",
    "unpriced_usage",
]

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]

_COLUMNS: Final = (
    "tenant, provider, model, effective_from, input_usd_mtok, cache_read_usd_mtok, cache_write_usd_mtok, "
    "output_usd_mtok, reasoning_usd_mtok, unit_prices, override_reported"
)
_UNIX_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_QUANTUM: Final = Decimal("1e-10")
_NS_PER_DAY: Final = 86_400 * 10**9
_NS_PER_HOUR: Final = 3_600 * 10**9
#: Rows from the metric rules (ranks 10 and up) aggregate many requests: priced at the base tier.
_METRIC_RANK: Final = 10


def _ns(value: datetime) -> int:
    return (value - _UNIX_EPOCH) // timedelta(microseconds=1) * 1000


def _time(ns: int) -> datetime:
    return _UNIX_EPOCH + timedelta(microseconds=ns // 1000)


def _price_from_row(row: Sequence[Any]) -> CustomPrice:
    tenant, provider, model, start, inp, cr, cw, out, reasoning, units, override = row
    start_ns = ALWAYS if start is None else _ns(start)
    return CustomPrice(
        model=model,
        input=inp,
        output=out,
        cache_read=cr,
        cache_write=cw,
        reasoning=reasoning,
        units={str(k): Decimal(str(v)) for k, v in (units or {}).items()},
        tenant=tenant,
        provider=provider,
        effective_from_ns=start_ns,
        override_reported=bool(override),
    )


# '-infinity' (a price that always applied) is read as NULL: psycopg cannot load it as a datetime.
def _select_prices(tenant: str | None) -> tuple[sql.SQL, dict[str, Any]]:
    query = sql.SQL(
        "SELECT tenant, provider, model, "
        "CASE WHEN effective_from = '-infinity' THEN NULL ELSE effective_from END, "
        "input_usd_mtok, cache_read_usd_mtok, cache_write_usd_mtok, output_usd_mtok, reasoning_usd_mtok, "
        "unit_prices, override_reported FROM tokenscale.prices "
        "WHERE %(tenant)s::text IS NULL OR tenant IS NULL OR tenant = %(tenant)s "
        "ORDER BY model, tenant NULLS FIRST, provider NULLS FIRST, effective_from"
    )
    return query, {"tenant": tenant}


def list_prices(conn: Connection, tenant: str | None = None) -> list[CustomPrice]:
    """Every price of the book (only those applying to ``tenant``), by model, scope and time."""
    query, params = _select_prices(tenant)
    return [_price_from_row(row) for row in conn.execute(query, params)]


def load_price_book(conn: Connection) -> PriceBook:
    """The whole price book."""
    return PriceBook(list_prices(conn))


def set_price(conn: Connection, price: CustomPrice, note: str = "") -> None:
    """Add ``price`` to the book, replacing the one of the same model, tenant, provider and time."""
    start: datetime | str = (
        "-infinity" if price.effective_from_ns == ALWAYS else _time(price.effective_from_ns)
    )
    conn.execute(
        "DELETE FROM tokenscale.prices WHERE model = %s AND tenant IS NOT DISTINCT FROM %s "
        "AND provider IS NOT DISTINCT FROM %s AND effective_from = %s",
        (price.model, price.tenant, price.provider, start),
    )
    conn.execute(
        f"INSERT INTO tokenscale.prices ({_COLUMNS}, note) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            price.tenant,
            price.provider,
            price.model,
            start,
            price.input,
            price.cache_read,
            price.cache_write,
            price.output,
            price.reasoning,
            json.dumps({k: str(v) for k, v in price.units.items()}),
            price.override_reported,
            note,
        ),
    )


def delete_price(conn: Connection, model: str, tenant: str | None = None, provider: str | None = None) -> int:
    """Delete every price of ``model`` for exactly this tenant and provider scope; how many."""
    return conn.execute(
        "DELETE FROM tokenscale.prices WHERE model = %s AND tenant IS NOT DISTINCT FROM %s "
        "AND provider IS NOT DISTINCT FROM %s",
        (model, tenant, provider),
    ).rowcount


# --- importing ---------------------------------------------------------------------------------

_PARTS: Final = ("input", "cache_read", "cache_write", "output", "reasoning")


def _decimal(name: str, value: Any, *, required: bool = False) -> Decimal | None:
    if value is None or value == "":
        if required:
            raise ValueError(f"{name}: a price is required")
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{name}: {value!r} is not a number") from None
    if not number.is_finite() or number < 0:
        raise ValueError(f"{name}: {value!r} is not a price (a number >= 0)")
    return number


def _effective(value: Any) -> int:
    if value is None or value == "":
        return ALWAYS
    text = str(value).strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"effective_from: {text!r} is not an ISO date or time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _ns(moment)


def price_from_mapping(entry: dict[str, Any]) -> CustomPrice:
    """A price from a JSON object or CSV row: ``model``, ``input``, ``output`` (USD per million
    tokens), optional ``cache_read``, ``cache_write``, ``reasoning``, ``tenant``, ``provider``,
    ``effective_from`` (ISO date or time, UTC when no offset), ``units`` (object, or in CSV
    ``unit:NAME`` columns; ``NAME[param=value,...]`` for a price that depends on request
    parameters, see :mod:`tokenscale.mapping.pricebook`) and ``override_reported``. With unit prices,
    ``input`` and ``output`` default to 0 (a model billed per unit only)."""
    model = str(entry.get("model") or "").strip()
    if not model:
        raise ValueError("model: required")
    units: dict[str, Decimal] = {}
    raw_units = entry.get("units") or {}
    if not isinstance(raw_units, dict):
        raise ValueError("units: an object of unit -> USD per unit")
    for key, value in [*raw_units.items(), *((k[5:], v) for k, v in entry.items() if k.startswith("unit:"))]:
        found = _decimal(f"units.{key}", value)
        if found is not None:
            parse_unit_key(str(key))  # a clear error for a malformed key
            units[str(key).strip()] = found
    # A model billed per unit only (speech, whisper, images) needs no token prices: they default to 0.
    prices = {
        part: _decimal(part, entry.get(part), required=part in ("input", "output") and not units)
        for part in _PARTS
    }
    for part in ("input", "output"):
        if prices[part] is None:
            prices[part] = Decimal(0)
    override = entry.get("override_reported", False)
    if isinstance(override, str):
        override = override.strip().lower() in ("1", "true", "yes")
    inp, out = prices["input"], prices["output"]
    assert inp is not None and out is not None
    return CustomPrice(
        model=model,
        input=inp,
        output=out,
        cache_read=prices["cache_read"],
        cache_write=prices["cache_write"],
        reasoning=prices["reasoning"],
        units=units,
        tenant=(str(entry["tenant"]).strip() or None) if entry.get("tenant") else None,
        provider=(str(entry["provider"]).strip() or None) if entry.get("provider") else None,
        effective_from_ns=_effective(entry.get("effective_from")),
        override_reported=bool(override),
    )


def parse_prices(text: str) -> list[CustomPrice]:
    """Prices from a JSON array of objects or a CSV file with a header (see :func:`price_from_mapping`).
    A bad entry raises ValueError naming it."""
    stripped = text.lstrip()
    if stripped.startswith("[") or stripped.startswith("{"):
        data = json.loads(text)
        entries = data if isinstance(data, list) else data.get("prices", [])
    else:
        entries = list(csv.DictReader(io.StringIO(text)))
    found = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise ValueError(f"entry {number}: not an object")
        try:
            found.append(price_from_mapping(entry))
        except ValueError as exc:
            raise ValueError(f"entry {number}: {exc}") from None
    return found


def import_prices(conn: Connection, prices: Iterable[CustomPrice]) -> int:
    """Set every price (in one transaction); how many."""
    count = 0
    with conn.transaction():
        for price in prices:
            set_price(conn, price, note="imported")
            count += 1
    return count


class PriceBookCache:
    """The price book for a running service: read at most every ``ttl`` seconds (a missing table, or
    a failed read, keeps the book read before)."""

    def __init__(self, pool: ConnectionPool, ttl: float = 10.0) -> None:
        self._pool = pool
        self._ttl = ttl
        self._book = PriceBook()
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def current(self) -> PriceBook:
        """The book, re-read when older than the TTL."""
        now = time.monotonic()
        if now - self._read_at < self._ttl:
            return self._book
        with self._lock:
            if now - self._read_at >= self._ttl:
                try:
                    with self._pool.connection(timeout=5) as conn:
                        self._book = load_price_book(conn)
                except (psycopg.Error, OSError) as exc:
                    log.warning("price book not read (%s); using the one read before", exc)
                self._read_at = now
        return self._book


# --- re-pricing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RepriceReport:
    """What :func:`reprice` did: rows read and changed, costs before and after (changed rows only),
    and rows still unpriced."""

    rows: int
    changed: int
    cost_before: Decimal
    cost_after: Decimal
    unpriced: int


_SELECT_FOR_REPRICE: Final = """
SELECT time, dedupe_key, tenant, source, rank, counted, tool, stream,
       coalesce(service_name, split_part(stream, chr(31), 1)), user_email, provider,
       model, requests, input_tokens, cache_read_tokens, cache_write_tokens, output_tokens,
       reasoning_tokens, cost_usd, cost_source, attributes, recorded_cost_usd, recorded_cost_source,
       repriced_at
FROM tokenscale.usage_events
WHERE time >= %(since)s AND time < %(until)s AND source <> %(listed)s
  AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
  AND (%(model)s::text IS NULL OR model = %(model)s)
"""

_APPLY: Final = """
UPDATE tokenscale.usage_events e
SET recorded_cost_usd = CASE WHEN e.repriced_at IS NULL THEN e.cost_usd ELSE e.recorded_cost_usd END,
    recorded_cost_source = CASE WHEN e.repriced_at IS NULL THEN e.cost_source ELSE e.recorded_cost_source END,
    cost_usd = s.cost_usd, cost_source = s.cost_source, repriced_at = now()
FROM tokenscale_reprice s
WHERE e.dedupe_key = s.dedupe_key AND e.time = s.time AND e.time >= %(since)s AND e.time < %(until)s
"""

_ROLLUP_DAILY: Final = """
UPDATE tokenscale.usage_daily d
SET cost_usd = coalesce(d.cost_usd, 0) + s.delta, unpriced_events = d.unpriced_events + s.unpriced
FROM tokenscale_reprice_daily s
WHERE d.day = s.day AND d.tenant = s.tenant AND d.tool = s.tool
  AND d.user_email IS NOT DISTINCT FROM s.user_email AND d.provider IS NOT DISTINCT FROM s.provider
  AND d.model IS NOT DISTINCT FROM s.model
"""

_ROLLUP_HOURLY: Final = """
UPDATE tokenscale.usage_hourly h
SET cost_usd = coalesce(h.cost_usd, 0) + s.delta, unpriced_events = h.unpriced_events + s.unpriced
FROM tokenscale_reprice_hourly s
WHERE h.hour = s.hour AND h.tenant = s.tenant
"""

#: The unit keys (billable units: images, audio seconds, ...) as an SQL array's elements.
_UNIT_KEYS: Final = ", ".join(f"'{key}'" for key in sorted(UNIT_USAGE_KEYS))
# usage_scope_hourly (tool, model, user per hour): the cost and unpriced count of every group a
# repriced row belongs to, summed again from its counted rows (after _APPLY).
_ROLLUP_SCOPED: Final = (
    """
WITH touched AS (
    SELECT DISTINCT date_trunc('hour', e.time) AS hour, e.tenant, k.scope, k.value
    FROM tokenscale_reprice r
    JOIN tokenscale.usage_events e ON e.dedupe_key = r.dedupe_key AND e.time = r.time
    CROSS JOIN LATERAL (VALUES ('tool', e.tool), ('model', e.model),
                               ('user', coalesce(e.user_email, e.user_id))) AS k (scope, value)
    WHERE e.counted AND k.value IS NOT NULL
), fresh AS (
    SELECT t.hour, t.tenant, t.scope, t.value, sum(e.cost_usd) AS cost_usd,
           sum(CASE WHEN e.cost_usd IS NULL AND e.cost_source IS NULL
                         AND (e.input_tokens + e.cache_read_tokens + e.cache_write_tokens
                              + e.output_tokens > 0 OR e.attributes ?| ARRAY["""
    + _UNIT_KEYS
    + """])
                    THEN greatest(e.requests, 1) ELSE 0 END) AS unpriced
    FROM touched t
    JOIN tokenscale.usage_events e ON e.tenant = t.tenant AND e.counted
        AND e.time >= t.hour AND e.time < t.hour + INTERVAL '1 hour'
        AND CASE t.scope WHEN 'tool' THEN e.tool = t.value WHEN 'model' THEN e.model = t.value
                         ELSE coalesce(e.user_email, e.user_id) = t.value END
    GROUP BY 1, 2, 3, 4
)
UPDATE tokenscale.usage_scope_hourly h SET cost_usd = f.cost_usd, unpriced_events = f.unpriced
FROM fresh f
WHERE h.tenant = f.tenant AND h.scope = f.scope AND h.scope_value = f.value AND h.hour = f.hour
"""
)


def _stored(value: float | None) -> Decimal | None:
    """A computed cost as usage_events stores it (the writer's conversion)."""
    if value is None or not isfinite(value):
        return None
    return Decimal(f"{value:.15g}").quantize(_QUANTUM, ROUND_HALF_UP)


def _unpriced(cost: Decimal | None, source: str | None, row: Sequence[Any]) -> int:
    # unpriced_events counts requests (at least one per row: a residual may not know its count)
    # with tokens or billable units (images, audio seconds, characters, ...) and no cost.
    if cost is not None or source is not None:
        return 0
    units = any(k in (row[20] or {}) for k in UNIT_USAGE_KEYS)
    return max(int(row[12]), 1) if sum(row[13:17]) > 0 or units else 0


def _new_cost(book: PriceBook, row: Sequence[Any]) -> tuple[Decimal | None, str | None]:
    """The cost of a stored row today: from its as-recorded state, priced by the book, else kept
    when the client reported it, else by genai-prices."""
    (time_, key, tenant, source, rank, _, tool, stream, service, user, provider, model) = row[:12]
    cost, cost_source, attributes, rec_cost, rec_source, repriced_at = row[18:24]
    if repriced_at is not None:
        cost, cost_source = rec_cost, rec_source
    event = UsageEvent(
        time_ns=_ns(time_),
        tenant=tenant,
        carrier=source,
        rank=rank,
        tool=tool,
        stream=stream,
        service_name=service,
        dedupe_key=bytes(key),
        user_email=user,
        provider=provider,
        model=model,
        requests=row[12],
        input_tokens=row[13],
        cache_read_tokens=row[14],
        cache_write_tokens=row[15],
        output_tokens=row[16],
        reasoning_tokens=row[17],
        cost_usd=float(cost) if cost_source == "reported" and cost is not None else None,
        cost_source="reported" if cost_source == "reported" else None,
        attributes=attributes or {},
    )
    if book.price(event):
        return _stored(event.cost_usd), event.cost_source
    if cost_source == "reported":
        return cost, cost_source
    price_event(event, per_request=rank < _METRIC_RANK)
    if event.cost_source is None:
        return cost, cost_source  # no price today: what was recorded stays
    return _stored(event.cost_usd), event.cost_source


def reprice(
    conninfo: str,
    since: datetime,
    until: datetime,
    *,
    tenant: str | None = None,
    model: str | None = None,
    dry_run: bool = False,
) -> RepriceReport:
    """Recompute the cost of the usage events in [``since``, ``until``) (of ``tenant``, of ``model``)
    with today's price book and genai-prices, in one transaction.

    Each changed row keeps the cost (and its source) as first recorded in ``recorded_cost_usd`` and
    ``recorded_cost_source`` and gets ``repriced_at``; re-pricing again starts from the recorded
    cost, so it is repeatable. ``usage_daily`` and ``usage_hourly`` change by exactly the changed
    counted rows' differences (tables), or are refreshed over the changed days (continuous
    aggregates). A row no price applies to today keeps its cost.
    """
    if until <= since:
        raise ValueError("the range is empty: --to must be after --from")
    # Listed rows (agent and tool spans) are never priced: their usage is their requests'.
    params = {"since": since, "until": until, "tenant": tenant, "model": model, "listed": AGENT_SPAN.carrier}
    changes: list[tuple[datetime, bytes, Decimal | None, str | None]] = []
    daily: dict[tuple[Any, ...], list[Any]] = {}
    hourly: dict[tuple[Any, ...], list[Any]] = {}
    before = after = Decimal(0)
    rows = unpriced = 0
    # Autocommit: the block below is then one real transaction, and refreshing continuous aggregates
    # (which cannot run in a transaction) is possible after it.
    with psycopg.connect(conninfo, autocommit=True) as conn:
        backend = recorded_backend(conn)
        if backend is None:
            raise ValueError("the tokenscale schema is not created (run `tokenscale migrate`)")
        book = load_price_book(conn)
        with conn.transaction(), conn.cursor(name="tokenscale_reprice_rows") as rows_cursor:
            # A server-side cursor: the range's rows stream through, only the changes are kept.
            rows_cursor.itersize = 5000
            rows_cursor.execute(_SELECT_FOR_REPRICE, params)
            for row in rows_cursor:
                rows += 1
                cost, source = row[18], row[19]
                new_cost, new_source = _new_cost(book, row)
                unpriced += _unpriced(new_cost, new_source, row)
                if (new_cost, new_source) == (cost, source):
                    continue
                changes.append((row[0], bytes(row[1]), new_cost, new_source))
                before += cost or 0
                after += new_cost or 0
                if not row[5]:  # not counted: in no rollup
                    continue
                delta = (new_cost or Decimal(0)) - (cost or Decimal(0))
                moved = _unpriced(new_cost, new_source, row) - _unpriced(cost, source, row)
                ns = _ns(row[0])
                day = _time(ns // _NS_PER_DAY * _NS_PER_DAY)
                hour = _time(ns // _NS_PER_HOUR * _NS_PER_HOUR)
                for groups, group_key in (
                    (daily, (day, row[2], row[6], row[9], row[10], row[11])),
                    (hourly, (hour, row[2])),
                ):
                    entry = groups.setdefault(group_key, [Decimal(0), 0])
                    entry[0] += delta
                    entry[1] += moved
            if changes and not dry_run:
                _write_changes(conn, backend.keeps_rollups, params, changes, daily, hourly)
        if changes and not dry_run and not backend.keeps_rollups:
            days = sorted({_ns(c[0]) // _NS_PER_DAY for c in changes})
            start = _time(days[0] * _NS_PER_DAY)
            end = _time((days[-1] + 1) * _NS_PER_DAY)
            for view in ("usage_daily", "usage_hourly"):
                conn.execute(
                    sql.SQL("CALL refresh_continuous_aggregate({}, %s, %s)").format(
                        sql.Literal(f"tokenscale.{view}")
                    ),
                    (start, end),
                )
    return RepriceReport(rows, len(changes), before, after, unpriced)


def _write_changes(
    conn: Connection,
    keeps_rollups: bool,
    params: dict[str, Any],
    changes: list[tuple[datetime, bytes, Decimal | None, str | None]],
    daily: dict[tuple[Any, ...], list[Any]],
    hourly: dict[tuple[Any, ...], list[Any]],
) -> None:
    conn.execute(
        "CREATE TEMP TABLE tokenscale_reprice (time timestamptz, dedupe_key bytea, cost_usd numeric(20, 10), "
        "cost_source text) ON COMMIT DROP"
    )
    with conn.cursor().copy("COPY tokenscale_reprice FROM STDIN") as copy:
        for change in changes:
            copy.write_row(change)
    conn.execute(_APPLY, params)
    if not keeps_rollups:
        return
    conn.execute(
        "CREATE TEMP TABLE tokenscale_reprice_daily (day timestamptz, tenant text, tool text, "
        "user_email text, provider text, model text, delta numeric, unpriced bigint) ON COMMIT DROP"
    )
    conn.execute(
        "CREATE TEMP TABLE tokenscale_reprice_hourly (hour timestamptz, tenant text, delta numeric, "
        "unpriced bigint) ON COMMIT DROP"
    )
    for table, groups in (("tokenscale_reprice_daily", daily), ("tokenscale_reprice_hourly", hourly)):
        with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(table))) as copy:
            for group_key, (delta, moved) in groups.items():
                copy.write_row((*group_key, delta, moved))
    conn.execute(_ROLLUP_DAILY)
    conn.execute(_ROLLUP_HOURLY)
    conn.execute(_ROLLUP_SCOPED)


# --- unpriced usage ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnpricedUsage:
    """Usage of one model that has no cost: give it a price with ``tokenscale prices set``."""

    tenant: str
    provider: str | None
    model: str | None
    events: int
    first_day: str
    last_day: str


def unpriced_usage(conn: Connection, since: datetime, tenant: str | None = None) -> list[UnpricedUsage]:
    """The models with unpriced usage since ``since`` (from ``usage_daily``), most events first."""
    rows = conn.execute(
        "SELECT tenant, provider, model, sum(unpriced_events)::bigint, min(day), max(day) "
        "FROM tokenscale.usage_daily WHERE day >= %(since)s AND unpriced_events > 0 "
        "AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s) "
        "GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3",
        {"since": since, "tenant": tenant},
    ).fetchall()
    return [
        UnpricedUsage(r[0], r[1], r[2], int(r[3]), r[4].date().isoformat(), r[5].date().isoformat())
        for r in rows
    ]
