"""The dashboard's reads: usage_daily grouped by day and tool, user and model; budgets and their use."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Final

import psycopg
from psycopg import sql

from tokenscale.dashboard._alerts import alerts_panel

__all__ = [
    "DIMENSIONS",
    "MAX_DAYS",
    "SERIES_LIMIT",
    "TOKEN_KINDS",
    "budgets",
    "summary",
    "window",
]

#: The disjoint token columns; their sum (reasoning is part of output) is a row's total tokens.
TOKEN_KINDS: Final = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens")
_SUMS: Final = ("requests", *TOKEN_KINDS, "reasoning_tokens", "unpriced_events")
#: Dashboard dimension -> usage_daily column.
DIMENSIONS: Final = {"tool": "tool", "user": "user_email", "model": "model"}
#: Labels of a NULL key per dimension (a client that sends no e-mail, no model).
_NULL_LABELS: Final = {"tool": "(unknown tool)", "user": "(no e-mail)", "model": "(no model)"}
MAX_DAYS: Final = 366
#: Charts draw this many series per dimension; the rest are summed into one "other" series.
SERIES_LIMIT: Final = 8
_ROWS_LIMIT: Final = 100
_TOP_USERS: Final = 10

Connection = psycopg.Connection[Any]

_SUMMARY: Final = sql.SQL(
    """SELECT {groupings}, u.d, u.tool, u.user_email, u.model, {sums}, sum(u.cost_usd)
FROM (
    SELECT (day AT TIME ZONE 'UTC')::date AS d, tool, user_email, model, {columns}, cost_usd
    FROM tokenscale.usage_daily
    WHERE day >= %(since)s AND day < %(until)s AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
) u
GROUP BY GROUPING SETS ((u.d, u.tool), (u.d, u.user_email), (u.d, u.model))"""
).format(
    groupings=sql.SQL(", ").join(
        sql.SQL("GROUPING({})").format(sql.Identifier("u", c)) for c in DIMENSIONS.values()
    ),
    sums=sql.SQL(", ").join(sql.SQL("sum({})::bigint").format(sql.Identifier("u", c)) for c in _SUMS),
    columns=sql.SQL(", ").join(sql.Identifier(c) for c in _SUMS),
)

_TENANTS: Final = sql.SQL(
    """SELECT DISTINCT tenant FROM tokenscale.usage_daily WHERE day >= %(since)s AND day < %(until)s
ORDER BY tenant LIMIT 500"""
)

_TOKENS: Final = sql.SQL(" + ").join(sql.Identifier(c) for c in TOKEN_KINDS)

# Same window as the budget API (tokenscale.api.budgets): the last window_days x 24 hours ending now;
# whole UTC hours from usage_hourly, the two partial edge hours from usage_events (counted rows).
_BUDGETS: Final = sql.SQL(
    """SELECT b.tenant, b.token_limit, b.window_days, used.tokens
FROM tokenscale.budgets b
CROSS JOIN LATERAL (SELECT now() AS hi, now() - make_interval(days => b.window_days) AS lo) w
CROSS JOIN LATERAL (
    SELECT date_trunc('hour', w.hi, 'UTC') AS hi_hour,
           CASE WHEN date_trunc('hour', w.lo, 'UTC') = w.lo THEN w.lo
                ELSE date_trunc('hour', w.lo, 'UTC') + INTERVAL '1 hour' END AS lo_hour
) e
CROSS JOIN LATERAL (
    SELECT (SELECT coalesce(sum({tokens}), 0) FROM tokenscale.usage_hourly h
            WHERE h.tenant = b.tenant AND h.hour >= e.lo_hour AND h.hour < e.hi_hour)
         + (SELECT coalesce(sum({tokens}), 0) FROM tokenscale.usage_events x
            WHERE x.tenant = b.tenant AND x.counted AND x.time >= w.lo AND x.time < e.lo_hour)
         + (SELECT coalesce(sum({tokens}), 0) FROM tokenscale.usage_events x
            WHERE x.tenant = b.tenant AND x.counted AND x.time >= e.hi_hour AND x.time <= w.hi)
       AS tokens
) used
WHERE %(tenant)s::text IS NULL OR b.tenant = %(tenant)s
ORDER BY b.tenant"""
).format(tokens=_TOKENS)


def window(days: int, today: date | None = None) -> tuple[date, date]:
    """The first and last UTC day of a ``days``-day window ending today (both inclusive)."""
    last = today or datetime.now(UTC).date()
    return last - timedelta(days=days - 1), last


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


@dataclass(slots=True)
class _Sums:
    """Requests, tokens, cost and unpriced events of a group of usage_daily rows."""

    requests: int = 0
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    unpriced_events: int = 0
    cost: Decimal | None = None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens + self.output_tokens

    def add(self, values: tuple[int, ...], cost: Decimal | None) -> None:
        self.requests += values[0]
        self.input_tokens += values[1]
        self.cache_read_tokens += values[2]
        self.cache_write_tokens += values[3]
        self.output_tokens += values[4]
        self.reasoning_tokens += values[5]
        self.unpriced_events += values[6]
        if cost is not None:
            self.cost = cost if self.cost is None else self.cost + cost

    def merge(self, other: _Sums) -> None:
        values = (
            other.requests,
            other.input_tokens,
            other.cache_read_tokens,
            other.cache_write_tokens,
            other.output_tokens,
            other.reasoning_tokens,
            other.unpriced_events,
        )
        self.add(values, other.cost)

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": None if self.cost is None else float(self.cost),
            "unpriced_events": self.unpriced_events,
        }


@dataclass(slots=True)
class _Dimension:
    """Per key: the window's sums and a per-day series."""

    days: int
    totals: dict[str | None, _Sums] = field(default_factory=dict)
    daily: dict[str | None, list[_Sums]] = field(default_factory=dict)

    def add(self, key: str | None, index: int, values: tuple[int, ...], cost: Decimal | None) -> None:
        self.totals.setdefault(key, _Sums()).add(values, cost)
        series = self.daily.setdefault(key, [_Sums() for _ in range(self.days)])
        series[index].add(values, cost)

    def ordered(self) -> list[str | None]:
        """Keys by total tokens (then cost, then name), largest first."""
        return sorted(
            self.totals,
            key=lambda k: (-self.totals[k].total_tokens, -(self.totals[k].cost or 0), k or ""),
        )

    def as_json(self, name: str) -> dict[str, Any]:
        keys = self.ordered()
        label = _NULL_LABELS[name]
        rows = [
            {"key": k, "label": label if k is None else k, **self.totals[k].as_json()}
            for k in keys[:_ROWS_LIMIT]
        ]
        series: list[dict[str, Any]] = []
        for k in keys[:SERIES_LIMIT]:
            points = self.daily[k]
            series.append(
                {
                    "key": k,
                    "label": label if k is None else k,
                    "tokens": [p.total_tokens for p in points],
                    "cost": [float(p.cost) if p.cost is not None else 0.0 for p in points],
                }
            )
        rest = keys[SERIES_LIMIT:]
        if rest:
            other = [_Sums() for _ in range(self.days)]
            for k in rest:
                for merged, point in zip(other, self.daily[k], strict=True):
                    merged.merge(point)
            series.append(
                {
                    "key": None,
                    "label": f"{len(rest)} others",
                    "other": True,
                    "tokens": [p.total_tokens for p in other],
                    "cost": [float(p.cost) if p.cost is not None else 0.0 for p in other],
                }
            )
        return {"count": len(keys), "rows": rows, "series": series}


def summary(
    conn: Connection,
    days: int,
    tenant: str | None,
    today: date | None = None,
    *,
    first: date | None = None,
    last: date | None = None,
) -> dict[str, Any]:
    """The dashboard's JSON: totals, per-day series and rankings by tool, user and model, budgets.

    The window is the ``days`` days ending today, or the days ``first`` to ``last`` (inclusive)."""
    if first is not None and last is not None:
        days = (last - first).days + 1
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be between 1 and {MAX_DAYS}")
    if first is None or last is None:
        first, last = window(days, today)
    params = {"since": _midnight(first), "until": _midnight(last + timedelta(days=1)), "tenant": tenant}
    dims = {name: _Dimension(days) for name in DIMENSIONS}
    totals = _Sums()
    for row in conn.execute(_SUMMARY, params):
        groupings, (day, tool, user, model), values, cost = row[:3], row[3:7], row[7:14], row[14]
        index = (day - first).days
        ints = tuple(int(v or 0) for v in values)
        if groupings[0] == 0:  # grouped by tool: every row of the window exactly once
            dims["tool"].add(tool, index, ints, cost)
            totals.add(ints, cost)
        elif groupings[1] == 0:
            dims["user"].add(user, index, ints, cost)
        else:
            dims["model"].add(model, index, ints, cost)
    tenants = [str(r[0]) for r in conn.execute(_TENANTS, params)] if tenant is None else [tenant]
    users = dims["user"].as_json("user")
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "days": days,
        "since": first.isoformat(),
        "until": last.isoformat(),
        "day_list": [(first + timedelta(days=i)).isoformat() for i in range(days)],
        "tenant": tenant,
        "tenants": tenants,
        "totals": {
            **totals.as_json(),
            "users": sum(1 for k in dims["user"].totals if k is not None),
            "models": sum(1 for k in dims["model"].totals if k is not None),
            "tools": len(dims["tool"].totals),
        },
        "by_tool": dims["tool"].as_json("tool"),
        "by_user": users,
        "by_model": dims["model"].as_json("model"),
        "top_users": users["rows"][:_TOP_USERS],
        "budgets": budgets(conn, tenant),
        "alerts": alerts_panel(conn, tenant),
    }


def budgets(conn: Connection, tenant: str | None) -> dict[str, Any]:
    """Budgets (of ``tenant``) with the tokens used in their rolling window and what remains.

    ``available`` is false when the ``tokenscale.budgets`` table does not exist (not migrated yet).
    """
    row = conn.execute("SELECT to_regclass('tokenscale.budgets') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return {"available": False, "items": []}
    items = []
    for name, limit, window_days, used in conn.execute(_BUDGETS, {"tenant": tenant}):
        token_limit, tokens_used = int(limit), int(used)
        items.append(
            {
                "tenant": name,
                "token_limit": token_limit,
                "window_days": int(window_days),
                "tokens_used": tokens_used,
                "tokens_remaining": max(0, token_limit - tokens_used),
                "within_budget": tokens_used < token_limit,
                "percent_used": round(100.0 * tokens_used / token_limit, 1) if token_limit else 100.0,
            }
        )
    return {"available": True, "items": items}
