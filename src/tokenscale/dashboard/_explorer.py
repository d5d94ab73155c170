"""The dashboard's request explorer: usage events filtered and sorted, sessions and conversations,
and hourly usage (reads of ``usage_events`` and ``usage_hourly``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

from tokenscale.api._errors import InvalidRequestError
from tokenscale.api._values import timestamp

__all__ = [
    "EXPORT_COLUMNS",
    "FILTERS",
    "GROUPS",
    "MAX_LIMIT",
    "NONE_VALUE",
    "SORTS",
    "Range",
    "groups",
    "hourly",
    "parse_moment",
    "requests",
]

Connection = psycopg.Connection[Any]

#: Filter parameter -> usage_events column.
FILTERS: Final = {
    "user": "user_email",
    "tool": "tool",
    "model": "model",
    "provider": "provider",
    "session": "session_id",
    "conversation": "conversation_id",
    "source": "source",
}
#: A filter with this value matches rows where the column is NULL (e.g. users without an e-mail).
NONE_VALUE: Final = "(none)"
_TOKENS: Final = "input_tokens + cache_read_tokens + cache_write_tokens + output_tokens"
#: Sort parameter -> SQL expression (whitelisted).
SORTS: Final = {
    "time": "time",
    "user": "user_email",
    "tool": "tool",
    "model": "model",
    "session": "session_id",
    "conversation": "conversation_id",
    "tokens": _TOKENS,
    "cost": "cost_usd",
    "duration": "duration_ms",
}
#: The columns of a request row, in the order of the CSV export.
EXPORT_COLUMNS: Final = (
    "time",
    "tenant",
    "source",
    "counted",
    "tool",
    "user_email",
    "session_id",
    "conversation_id",
    "provider",
    "model",
    "operation",
    "request_id",
    "requests",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "cost_source",
    "duration_ms",
    "error_type",
)
MAX_LIMIT: Final = 5000
#: Grouping parameter -> usage_events column.
GROUPS: Final = {"session": "session_id", "conversation": "conversation_id"}


@dataclass(frozen=True, slots=True)
class Range:
    """A half-open time range [since, until)."""

    since: datetime
    until: datetime


def parse_moment(text: str, *, end: bool = False) -> datetime:
    """An ISO date (midnight UTC; with ``end``, the midnight after it) or time (UTC without an offset)."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime.combine(day + timedelta(days=1 if end else 0), time(0), tzinfo=UTC)
        else:
            moment = timestamp(text, "time")  # RFC 3339 too (lower-case t/z, a leap second)
    except (ValueError, InvalidRequestError):
        raise ValueError(f"{text!r} is not an ISO date or time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _where(rng: Range, tenant: str | None, filters: Mapping[str, str], counted_only: bool) -> sql.Composed:
    parts: list[sql.Composable] = [
        sql.SQL("time >= {} AND time < {}").format(sql.Literal(rng.since), sql.Literal(rng.until))
    ]
    if tenant is not None:
        parts.append(sql.SQL("tenant = {}").format(sql.Literal(tenant)))
    if counted_only:
        parts.append(sql.SQL("counted"))
    for name, value in sorted(filters.items()):
        column = sql.Identifier(FILTERS[name])
        if value == NONE_VALUE:
            parts.append(sql.SQL("{} IS NULL").format(column))
        else:
            parts.append(sql.SQL("{} = {}").format(column, sql.Literal(value)))
    return sql.SQL(" AND ").join(parts)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def requests(
    conn: Connection,
    rng: Range,
    tenant: str | None,
    filters: Mapping[str, str],
    *,
    sort: str = "time",
    descending: bool = True,
    limit: int = 1000,
    counted_only: bool = True,
) -> dict[str, Any]:
    """The usage events in ``rng`` matching ``filters``, sorted, at most ``limit`` (``truncated`` says
    whether there were more), with their totals. Costs are exact decimal strings."""
    order = sql.SQL(SORTS[sort])
    direction = sql.SQL("DESC NULLS LAST" if descending else "ASC NULLS FIRST")
    where = _where(rng, tenant, filters, counted_only)
    query = sql.SQL(
        "SELECT time, tenant, source, counted, tool, user_email, session_id, conversation_id, provider, "
        "model, operation, request_id, requests, input_tokens, cache_read_tokens, cache_write_tokens, "
        "output_tokens, reasoning_tokens, {tokens}, cost_usd::text, cost_source, duration_ms, error_type "
        "FROM tokenscale.usage_events WHERE {where} ORDER BY {order} {direction}, time DESC, dedupe_key "
        "LIMIT {limit}"
    ).format(
        tokens=sql.SQL(_TOKENS), where=where, order=order, direction=direction, limit=sql.Literal(limit + 1)
    )
    rows = []
    for record in conn.execute(query):
        row = dict(zip(EXPORT_COLUMNS, record, strict=True))
        row["time"] = _iso(record[0])
        rows.append(row)
    truncated = len(rows) > limit
    totals = conn.execute(
        sql.SQL(
            "SELECT count(*), coalesce(sum(requests), 0), coalesce(sum({tokens}), 0), sum(cost_usd)::text, "
            "count(*) FILTER (WHERE cost_usd IS NULL AND cost_source IS NULL AND {tokens} > 0) "
            "FROM tokenscale.usage_events WHERE {where}"
        ).format(tokens=sql.SQL(_TOKENS), where=where)
    ).fetchone()
    assert totals is not None
    return {
        "since": _iso(rng.since),
        "until": _iso(rng.until),
        "tenant": tenant,
        "filters": dict(filters),
        "sort": sort,
        "order": "desc" if descending else "asc",
        "columns": list(EXPORT_COLUMNS),
        "rows": rows[:limit],
        "truncated": truncated,
        "totals": {
            "rows": int(totals[0]),
            "requests": int(totals[1]),
            "total_tokens": int(totals[2]),
            "cost_usd": totals[3],
            "unpriced_events": int(totals[4]),
        },
    }


def groups(
    conn: Connection,
    rng: Range,
    tenant: str | None,
    filters: Mapping[str, str],
    by: str,
    *,
    limit: int = 500,
) -> dict[str, Any]:
    """Sessions or conversations (``by``) in ``rng``: their users, tools, models, first and last
    request, requests, tokens and cost (counted usage), latest first."""
    column = sql.Identifier(GROUPS[by])
    where = _where(rng, tenant, filters, True)
    query = sql.SQL(
        "SELECT {column}, string_agg(DISTINCT coalesce(user_email, user_id), ', '), "
        "string_agg(DISTINCT tool, ', '), string_agg(DISTINCT model, ', '), min(time), max(time), "
        "sum(requests), sum({tokens}), sum(cost_usd)::text, count(*) "
        "FROM tokenscale.usage_events WHERE {where} AND {column} IS NOT NULL "
        "GROUP BY {column} ORDER BY max(time) DESC, {column} LIMIT {limit}"
    ).format(column=column, tokens=sql.SQL(_TOKENS), where=where, limit=sql.Literal(limit + 1))
    rows = [
        {
            "key": r[0],
            "users": r[1],
            "tools": r[2],
            "models": r[3],
            "first": _iso(r[4]),
            "last": _iso(r[5]),
            "requests": int(r[6]),
            "total_tokens": int(r[7]),
            "cost_usd": r[8],
            "events": int(r[9]),
        }
        for r in conn.execute(query)
    ]
    return {"by": by, "rows": rows[:limit], "truncated": len(rows) > limit}


def hourly(conn: Connection, rng: Range, tenant: str | None) -> dict[str, Any]:
    """Usage per UTC hour in ``rng`` (from ``usage_hourly``), every hour listed (zeros included)."""
    start = rng.since.replace(minute=0, second=0, microsecond=0)
    found: dict[datetime, tuple[int, int, str | None]] = {}
    for hour, requests_, tokens, cost in conn.execute(
        sql.SQL(
            "SELECT hour, sum(requests), sum({tokens}), sum(cost_usd)::text FROM tokenscale.usage_hourly "
            "WHERE hour >= %(since)s AND hour < %(until)s "
            "AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s) "
            "GROUP BY hour"
        ).format(tokens=sql.SQL(_TOKENS)),
        {"since": start, "until": rng.until, "tenant": tenant},
    ):
        found[hour.astimezone(UTC)] = (int(requests_), int(tokens), cost)
    hours: list[dict[str, Any]] = []
    at = start
    while at < rng.until and len(hours) < 24 * 62:
        requests_, tokens, cost = found.get(at, (0, 0, None))
        hours.append({"hour": _iso(at), "requests": requests_, "total_tokens": tokens, "cost_usd": cost})
        at += timedelta(hours=1)
    return {"since": _iso(start), "until": _iso(rng.until), "tenant": tenant, "hours": hours}
