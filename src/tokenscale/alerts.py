"""Budget alerts: thresholds crossed in rolling budget windows, with a burn-rate forecast, sent to webhooks.

Every ``alert_interval_seconds`` the service reads every budget window (the scoped budgets of
:mod:`tokenscale.api.scoped_budgets` and the tenants' company budgets) with its usage per hour, and
compares the share used with the budget's thresholds (50, 80 and 100 percent unless set). State is in
the database (``tokenscale.alert_state``): a threshold is *above* once crossed, and only the flip from
below to above fires an alert, in one conditional UPDATE, so an alert fires once per crossing however
many processes evaluate and across restarts. Usage rolling out of the window re-arms a threshold once
it is below 95% of it (so a window hovering at a threshold does not fire at every turn); crossing it
again fires again. When one evaluation finds several thresholds newly crossed, one
alert is fired, for the highest, naming the others.

Each alert carries the window's forecast (:mod:`tokenscale.forecast`) and is queued for each of its
tenant's webhooks (``tokenscale.alert_deliveries``). A sender leases a due delivery, posts it (a generic
JSON body, or Slack's ``{"text": ...}``, with the alert's idempotency key in the body and in an
``Idempotency-Key`` header), and records the answer: delivered on 2xx, else retried with exponential
backoff (``alert_retry_seconds`` doubling, at most an hour apart) up to ``alert_max_attempts``, then
failed. Failures are logged and kept with their last error (``tokenscale alerts list``, ``GET
/v1/alerts``, the dashboard).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Literal

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from tokenscale.api.budgets import list_budgets
from tokenscale.api.scoped_budgets import (
    COMPANY_BUDGET_ID,
    DEFAULT_TEAM_ATTRIBUTE,
    iso,
    list_scoped_budgets,
)
from tokenscale.forecast import Forecast, UsageBucket, describe_duration, forecast_exhaustion

__all__ = [
    "DEFAULT_PERCENTS",
    "FORMATS",
    "Alert",
    "AlertService",
    "CycleReport",
    "DeliveryPolicy",
    "Webhook",
    "WindowReading",
    "add_webhook",
    "alert_payload",
    "deliver_due",
    "evaluate_windows",
    "get_thresholds",
    "list_alerts",
    "list_webhooks",
    "read_windows",
    "redact_url",
    "remove_webhook",
    "set_thresholds",
]

log = logging.getLogger("tokenscale.alerts")

Connection = psycopg.Connection[Any]
Format = Literal["json", "slack"]

#: Thresholds of a budget that has none set, in percent of its limit.
DEFAULT_PERCENTS: Final = (Decimal(50), Decimal(80), Decimal(100))
#: A crossed threshold is re-armed once usage falls below this share of it (80%: below 76%), so a
#: window hovering at a threshold does not fire at every turn.
REARM_BELOW: Final = Decimal("0.95")
FORMATS: Final[tuple[Format, ...]] = ("json", "slack")
MAX_THRESHOLDS: Final = 20
MAX_PERCENT: Final = Decimal(1000)
MAX_URL_CHARS: Final = 2048
#: The longest error text kept with a delivery.
MAX_ERROR_CHARS: Final = 500
#: The longest pause between two attempts of a delivery.
MAX_BACKOFF_SECONDS: Final = 3600.0
#: Session advisory lock held while one process evaluates (the others skip that round).
_EVALUATION_LOCK: Final = 0x746B_616C  # "tkal"


# --- readings ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WindowReading:
    """One window of one budget, its usage now and its usage per hour (for the forecast)."""

    tenant: str
    budget_id: str
    scope: str
    scope_value: str | None
    unit: str
    limit: Decimal
    used: Decimal
    window_seconds: int
    window_end: datetime
    buckets: tuple[UsageBucket, ...] = ()
    percents: tuple[Decimal, ...] = DEFAULT_PERCENTS

    @property
    def window_start(self) -> datetime:
        return self.window_end - timedelta(seconds=self.window_seconds)

    @property
    def percent_used(self) -> Decimal:
        """Used as a percentage of the limit (a limit of 0 is wholly used: 100, or beyond once used)."""
        if self.limit == 0:
            return Decimal(100) if self.used == 0 else Decimal(10**9)
        return self.used * 100 / self.limit

    def forecast(self) -> Forecast:
        return forecast_exhaustion(
            limit=float(self.limit),
            used=float(self.used),
            buckets=self.buckets,
            window_seconds=self.window_seconds,
            now=self.window_end,
        )


_TOKENS: Final = sql.SQL("(e.input_tokens + e.cache_read_tokens + e.cache_write_tokens + e.output_tokens)")
_HOURLY_TOKENS: Final = sql.SQL(
    "(h.input_tokens + h.cache_read_tokens + h.cache_write_tokens + h.output_tokens)"
)
# The tenant scope reads whole hours from usage_hourly (as the check does) and only the partial
# hours at the windows' edges from usage_events.
_TENANT_HOURS: Final = sql.SQL(
    "SELECT h.hour, coalesce(sum({tokens}), 0), coalesce(sum(h.cost_usd), 0) FROM tokenscale.usage_hourly h "
    "WHERE h.tenant = %(tenant)s AND h.hour >= %(lo)s AND h.hour < %(hi)s GROUP BY 1"
).format(tokens=_HOURLY_TOKENS)
_TENANT_SPAN: Final = sql.SQL(
    "SELECT coalesce(sum({tokens}), 0), coalesce(sum(e.cost_usd), 0) FROM tokenscale.usage_events e "
    "WHERE e.tenant = %(tenant)s AND e.counted AND e.time >= %(lo)s AND e.time < %(hi)s"
).format(tokens=_TOKENS)
_TENANT_FIRST: Final = sql.SQL(
    "SELECT min(e.time) FROM tokenscale.usage_events e "
    "WHERE e.tenant = %(tenant)s AND e.counted AND e.time >= %(lo)s AND e.time <= %(hi)s"
)
_TENANT_TAIL: Final = sql.SQL(
    "SELECT coalesce(sum({tokens}), 0), coalesce(sum(e.cost_usd), 0) FROM tokenscale.usage_events e "
    "WHERE e.tenant = %(tenant)s AND e.counted AND e.time >= %(lo)s AND e.time <= %(hi)s"
).format(tokens=_TOKENS)


@dataclass(slots=True)
class WindowUsage:
    """One window's usage per UTC hour (tokens, USD) and its first use."""

    hours: dict[datetime, tuple[Decimal, Decimal]] = field(default_factory=dict)
    first_use: datetime | None = None

    def add(self, hour: datetime, tokens: Any, usd: Any) -> None:
        tokens0, usd0 = self.hours.get(hour, (Decimal(0), Decimal(0)))
        self.hours[hour] = (tokens0 + Decimal(tokens), usd0 + Decimal(usd))

    def used(self, unit: str) -> Decimal:
        part = 0 if unit == "tokens" else 1
        return sum((amounts[part] for amounts in self.hours.values()), Decimal(0))

    def buckets(self, unit: str) -> tuple[UsageBucket, ...]:
        """The forecast's buckets: the hours with usage, the first one from the first use on."""
        part = 0 if unit == "tokens" else 1
        first_hour = None if self.first_use is None else _hour(self.first_use)
        out = []
        for hour, amounts in sorted(self.hours.items()):
            if not amounts[part]:
                continue
            if hour == first_hour and self.first_use is not None:
                rest = (hour + timedelta(hours=1) - self.first_use).total_seconds()
                out.append(UsageBucket(self.first_use, float(amounts[part]), max(rest, 1.0)))
            else:
                out.append(UsageBucket(hour, float(amounts[part])))
        return tuple(out)


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def scope_usage(
    conn: Connection,
    tenant: str,
    scope: str,
    value: str | None,
    seconds: Sequence[int],
    now: datetime,
    team: str,
) -> dict[int, WindowUsage]:
    """Usage per hour of one scope within each window of ``seconds`` ending ``now``."""
    ordered = sorted(set(seconds), reverse=True)
    out: dict[int, WindowUsage] = {s: WindowUsage() for s in ordered}
    if scope == "tenant":
        hi_hour = _hour(now)
        for s in ordered:
            lo = now - timedelta(seconds=s)
            lo_hour = _hour(lo) + (timedelta(hours=1) if _hour(lo) < lo else timedelta(0))
            usage = out[s]
            for hour, tokens, usd in conn.execute(
                _TENANT_HOURS, {"tenant": tenant, "lo": lo_hour, "hi": hi_hour}
            ).fetchall():
                usage.add(hour, tokens, usd)
            for start, lo_t, hi_t, query in (
                (_hour(lo), lo, lo_hour, _TENANT_SPAN),
                (hi_hour, hi_hour, now, _TENANT_TAIL),
            ):
                row = conn.execute(query, {"tenant": tenant, "lo": lo_t, "hi": hi_t}).fetchone()
                assert row is not None
                if row[0] or row[1]:
                    usage.add(start, row[0], row[1])
            first = conn.execute(_TENANT_FIRST, {"tenant": tenant, "lo": lo, "hi": now}).fetchone()
            usage.first_use = None if first is None else first[0]
        return out
    assert value is not None
    return scope_usage_many(conn, tenant, scope, {value: set(ordered)}, now, team)[value]


# Several values of one scope in one scan of the tenant's events in the longest window: the values
# are joined by equality (hash-joinable), one branch per column a user is matched on.
_VALUE_JOINS: Final[dict[str, list[sql.Composable]]] = {
    "user": [
        sql.SQL("e.user_email = v.value"),
        sql.SQL("e.user_id = v.value AND e.user_email IS DISTINCT FROM v.value"),
    ],
    "tool": [sql.SQL("e.tool = v.value")],
    "model": [sql.SQL("e.model = v.value")],
    # Equal to the check's `attributes @> {key: value}` for a string value.
    "team": [
        sql.SQL(
            "e.attributes ->> %(team_key)s::text = v.value "
            "AND jsonb_typeof(e.attributes -> %(team_key)s::text) = 'string'"
        )
    ],
}


def _values_by_hour(scope: str, starts: int) -> sql.Composed:
    inside = sql.SQL(" + ").join(
        sql.SQL("(e.time >= {})::int").format(sql.Placeholder(f"lo{i}")) for i in range(starts)
    )
    branches = [
        sql.SQL(
            "SELECT v.value, date_trunc('hour', e.time), {inside}, coalesce(sum({tokens}), 0), "
            "coalesce(sum(e.cost_usd), 0), min(e.time) "
            "FROM unnest(%(values)s::text[]) AS v(value) JOIN tokenscale.usage_events e ON {join} "
            "WHERE e.tenant = %(tenant)s AND e.counted AND e.time >= %(lo0)s AND e.time <= %(hi)s "
            "GROUP BY 1, 2, 3"
        ).format(inside=inside, tokens=_TOKENS, join=join)
        for join in _VALUE_JOINS[scope]
    ]
    return sql.SQL(" UNION ALL ").join(branches)


def scope_usage_many(
    conn: Connection,
    tenant: str,
    scope: str,
    windows: dict[str, set[int]],
    now: datetime,
    team: str,
) -> dict[str, dict[int, WindowUsage]]:
    """Usage per hour of each value of one scope (not the tenant) within each of its windows ending
    ``now`` (``windows``: value -> window lengths), in one query."""
    ordered = sorted({s for seconds in windows.values() for s in seconds}, reverse=True)
    index = {s: i for i, s in enumerate(ordered)}
    out = {value: {s: WindowUsage() for s in seconds} for value, seconds in windows.items()}
    params: dict[str, Any] = {"tenant": tenant, "values": sorted(windows), "team_key": team, "hi": now}
    for i, s in enumerate(ordered):
        params[f"lo{i}"] = now - timedelta(seconds=s)
    for value, hour, inside, tokens, usd, first in conn.execute(_values_by_hour(scope, len(ordered)), params):
        for s, usage in out[value].items():
            if inside >= index[s] + 1:
                usage.add(hour, tokens, usd)
                if usage.first_use is None or first < usage.first_use:
                    usage.first_use = first
    return out


def read_windows(
    conn: Connection,
    now: datetime,
    *,
    tenant: str | None = None,
    team_attribute: str = DEFAULT_TEAM_ATTRIBUTE,
) -> list[WindowReading]:
    """Every window of every budget (of ``tenant``), with its usage at ``now`` per hour.

    ``used`` is the sum of the hours: the same number the budget check answers (same events, same
    window ``[now - window, now]``)."""
    now = now.astimezone(UTC)
    found: list[tuple[str, str, str, str | None, str, Decimal, int]] = []
    for b in list_scoped_budgets(conn, tenant):
        for w in b.windows:
            found.append((b.tenant, b.id, b.scope, b.scope_value, w.unit, Decimal(w.limit), w.window_seconds))
    for company in list_budgets(conn, tenant):
        found.append(
            (
                company.tenant,
                COMPANY_BUDGET_ID,
                "tenant",
                None,
                "tokens",
                Decimal(company.token_limit),
                company.window_days * 86400,
            )
        )
    thresholds = get_thresholds(conn, tenant)
    # One read per tenant window set, one per (tenant, scope) for all the scope's values.
    per_scope: dict[tuple[str, str], dict[str | None, set[int]]] = {}
    for t, _, scope, value, _, _, seconds in found:
        per_scope.setdefault((t, scope), {}).setdefault(value, set()).add(seconds)
    usage: dict[tuple[str, str, str | None], dict[int, WindowUsage]] = {}
    for (t, scope), values in per_scope.items():
        if scope == "tenant":
            usage[(t, scope, None)] = scope_usage(
                conn, t, scope, None, sorted(values[None]), now, team_attribute
            )
            continue
        named = {str(v): s for v, s in values.items()}
        for value, windows in scope_usage_many(conn, t, scope, named, now, team_attribute).items():
            usage[(t, scope, value)] = windows
    readings = []
    for t, budget_id, scope, value, unit, limit, seconds in found:
        window = usage[(t, scope, value)][seconds]
        buckets = window.buckets(unit)
        used = window.used(unit)
        readings.append(
            WindowReading(
                t,
                budget_id,
                scope,
                value,
                unit,
                limit,
                used,
                seconds,
                now,
                buckets,
                thresholds.get((t, budget_id), DEFAULT_PERCENTS),
            )
        )
    return readings


# --- thresholds -------------------------------------------------------------------------------------


def _percents(values: Sequence[Decimal | int | float | str]) -> tuple[Decimal, ...]:
    try:
        percents = sorted({Decimal(str(v)) for v in values})
    except ArithmeticError:
        raise ValueError("thresholds must be numbers (percent of the limit)") from None
    if not 1 <= len(percents) <= MAX_THRESHOLDS:
        raise ValueError(f"a budget has 1 to {MAX_THRESHOLDS} thresholds")
    for p in percents:
        if not p.is_finite() or not 0 < p <= MAX_PERCENT:
            raise ValueError(f"threshold {p}: must be a percentage above 0 and at most {MAX_PERCENT}")
    # 60, not 6E+1; 12.5 as it is
    return tuple(p.quantize(Decimal(1)) if p == p.to_integral_value() else p.normalize() for p in percents)


def set_thresholds(
    conn: Connection, tenant: str, budget_id: str, percents: Sequence[Decimal | int | float | str]
) -> tuple[Decimal, ...]:
    """Set the thresholds (percent of the limit) of ``tenant``'s budget ``budget_id``; a budget id
    that is neither one of the tenant's scoped budgets nor ``company`` is :class:`LookupError`."""
    checked = _percents(percents)
    if budget_id != COMPANY_BUDGET_ID and not any(
        b.id == budget_id for b in list_scoped_budgets(conn, tenant)
    ):
        raise LookupError(f"tenant {tenant!r} has no budget {budget_id!r}")
    conn.execute(
        "INSERT INTO tokenscale.alert_thresholds (tenant, budget_id, percents) VALUES (%s, %s, %s) "
        "ON CONFLICT (tenant, budget_id) DO UPDATE SET percents = excluded.percents, updated_at = now()",
        (tenant, budget_id, list(checked)),
    )
    return checked


def get_thresholds(conn: Connection, tenant: str | None = None) -> dict[tuple[str, str], tuple[Decimal, ...]]:
    """The thresholds set, per (tenant, budget id); budgets not named have :data:`DEFAULT_PERCENTS`."""
    rows = conn.execute(
        "SELECT tenant, budget_id, percents FROM tokenscale.alert_thresholds "
        "WHERE %(tenant)s::text IS NULL OR tenant = %(tenant)s",
        {"tenant": tenant},
    ).fetchall()
    return {(r[0], r[1]): tuple(Decimal(p) for p in r[2]) for r in rows}


# --- evaluation -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    """A threshold crossed in one budget window."""

    id: str
    idempotency_key: str
    tenant: str
    budget_id: str
    scope: str
    scope_value: str | None
    unit: str
    window_seconds: int
    percent: Decimal
    limit: Decimal
    used: Decimal
    window_start: datetime
    window_end: datetime
    rate_per_hour: float
    exhausted_at: datetime | None
    message: str
    fired_at: datetime
    deliveries: tuple[dict[str, Any], ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        """The alert as the API and the generic webhook body answer it."""
        whole = self.unit == "tokens"
        return {
            "type": "tokenscale.budget.threshold",
            "alertId": self.id,
            "idempotencyKey": self.idempotency_key,
            "tenant": self.tenant,
            "budgetId": self.budget_id,
            "scope": self.scope,
            "scopeValue": self.scope_value,
            "unit": self.unit,
            "windowSeconds": self.window_seconds,
            "threshold": _plain(self.percent),
            "limit": int(self.limit) if whole else float(self.limit),
            "used": int(self.used) if whole else float(self.used),
            "fraction": 1.0 if self.limit == 0 else float(self.used / self.limit),
            "windowStart": iso(self.window_start),
            "windowEnd": iso(self.window_end),
            "ratePerHour": self.rate_per_hour,
            "forecastExhaustedAt": None if self.exhausted_at is None else iso(self.exhausted_at),
            "firedAt": iso(self.fired_at),
            "message": self.message,
        }


def _plain(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def window_label(seconds: int) -> str:
    """``7-day``, ``24-hour``."""
    return f"{seconds // 86400}-day" if seconds % 86400 == 0 else f"{seconds // 3600}-hour"


def _amount(value: Decimal, unit: str) -> str:
    return f"{int(value):,} tokens" if unit == "tokens" else f"{float(value):,.2f} USD"


def alert_message(reading: WindowReading, percent: Decimal, forecast: Forecast) -> str:
    """What the alert says, e.g. ``user ana@example.com has used 80% of the 7-day token budget
    (80,012 of 100,000 tokens); at this rate it runs out in 9 h (2026-12-03 21:00 UTC).``"""
    who = reading.scope if reading.scope_value is None else f"{reading.scope} {reading.scope_value}"
    if reading.scope == "tenant":
        who = f"tenant {reading.tenant}"
    unit = "token" if reading.unit == "tokens" else "USD"
    text = (
        f"{who} has used {_plain(percent)}% of the {window_label(reading.window_seconds)} {unit} budget "
        f"({_amount(reading.used, reading.unit)} of {_amount(reading.limit, reading.unit)})"
    )
    now = reading.window_end
    if reading.used >= reading.limit:
        return text + "; the budget is spent."
    if forecast.exhausted_at is None:
        return text + f"; at the recent rate ({_rate(forecast, reading.unit)}) it does not run out."
    left = describe_duration((forecast.exhausted_at - now).total_seconds())
    return text + f"; at this rate it runs out in {left} ({forecast.exhausted_at:%Y-%m-%d %H:%M} UTC)."


def _rate(forecast: Forecast, unit: str) -> str:
    per_hour = Decimal(str(round(forecast.rate_per_hour, 2)))
    return f"{_amount(per_hour, unit)} an hour"


def _idempotency_key(reading: WindowReading, percent: Decimal, crossing: int) -> str:
    raw = "\x1f".join(
        [
            reading.tenant,
            reading.budget_id,
            reading.unit,
            str(reading.window_seconds),
            str(percent),
            str(crossing),
        ]
    )
    return "tsa_" + hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


_STATE_KEY: Final = (
    "tenant = %(tenant)s AND budget_id = %(budget)s AND unit = %(unit)s AND window_seconds = %(seconds)s"
)


def evaluate_windows(conn: Connection, readings: Sequence[WindowReading]) -> list[Alert]:
    """Compare each reading with its thresholds' state; fire (store, queue for the tenant's webhooks)
    one alert per window whose thresholds were newly crossed. Each window in its own transaction.

    The stored state is read once first: a window whose thresholds all stay as they are costs no
    further query (a window that does change is decided by conditional updates, whatever was read)."""
    fired: list[Alert] = []
    tenants = sorted({r.tenant for r in readings})
    above: dict[tuple[str, str, str, int, Decimal], bool] = {
        (r[0], r[1], r[2], int(r[3]), Decimal(r[4])): bool(r[5])
        for r in conn.execute(
            "SELECT tenant, budget_id, unit, window_seconds, percent, above FROM tokenscale.alert_state "
            "WHERE tenant = ANY(%s)",
            (tenants,),
        )
    }
    missing = [
        (r.tenant, r.budget_id, r.unit, r.window_seconds, p)
        for r in readings
        for p in r.percents
        if (r.tenant, r.budget_id, r.unit, r.window_seconds, p) not in above
    ]
    if missing:
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO tokenscale.alert_state "
                "(tenant, budget_id, unit, window_seconds, percent, changed_at) "
                "VALUES (%s, %s, %s, %s, %s, '-infinity') ON CONFLICT DO NOTHING",
                missing,
            )
    for reading in readings:
        percent = reading.percent_used
        state = [
            above.get((reading.tenant, reading.budget_id, reading.unit, reading.window_seconds, p), False)
            for p in reading.percents
        ]
        if not any(
            (not is_above and p <= percent) or (is_above and p * REARM_BELOW > percent)
            for p, is_above in zip(reading.percents, state, strict=True)
        ):
            continue
        key = {
            "tenant": reading.tenant,
            "budget": reading.budget_id,
            "unit": reading.unit,
            "seconds": reading.window_seconds,
            "percent": percent,
            "percents": list(reading.percents),
            "rearm": REARM_BELOW,
            "now": reading.window_end,
        }
        with conn.transaction():
            # A reading older than the state's last change (a slow evaluator) changes nothing.
            conn.execute(
                "UPDATE tokenscale.alert_state SET above = false, changed_at = %(now)s "
                "WHERE "
                + _STATE_KEY
                + " AND above AND percent * %(rearm)s > %(percent)s AND changed_at <= %(now)s",
                key,
            )
            crossed = conn.execute(
                "UPDATE tokenscale.alert_state SET above = true, crossings = crossings + 1, "
                "changed_at = %(now)s WHERE " + _STATE_KEY + " AND NOT above AND percent <= %(percent)s "
                "AND percent = ANY(%(percents)s) "
                "AND changed_at <= %(now)s RETURNING percent, crossings",
                key,
            ).fetchall()
            if not crossed:
                continue
            highest, crossing = max((Decimal(p), int(c)) for p, c in crossed)
            forecast = reading.forecast()
            message = alert_message(reading, highest, forecast)
            others = sorted(Decimal(p) for p, _ in crossed if Decimal(p) != highest)
            if others:
                message += " Also crossed: " + ", ".join(f"{_plain(p)}%" for p in others) + "."
            alert = Alert(
                str(uuid.uuid4()),
                _idempotency_key(reading, highest, crossing),
                reading.tenant,
                reading.budget_id,
                reading.scope,
                reading.scope_value,
                reading.unit,
                reading.window_seconds,
                highest,
                reading.limit,
                reading.used,
                reading.window_start,
                reading.window_end,
                forecast.rate_per_hour,
                forecast.exhausted_at,
                message,
                reading.window_end,
            )
            inserted = conn.execute(
                "INSERT INTO tokenscale.alerts (id, idempotency_key, tenant, budget_id, scope, scope_value, "
                "unit, "
                "window_seconds, percent, limit_value, used, window_start, window_end, rate_per_hour, "
                "exhausted_at, message, fired_at) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                (
                    alert.id,
                    alert.idempotency_key,
                    alert.tenant,
                    alert.budget_id,
                    alert.scope,
                    alert.scope_value or "",
                    alert.unit,
                    alert.window_seconds,
                    alert.percent,
                    alert.limit,
                    alert.used,
                    alert.window_start,
                    alert.window_end,
                    alert.rate_per_hour,
                    alert.exhausted_at,
                    alert.message,
                    alert.fired_at,
                ),
            ).fetchone()
            if inserted is None:
                continue
            conn.execute(
                "INSERT INTO tokenscale.alert_deliveries (alert_id, webhook_id) "
                "SELECT %s, id FROM tokenscale.alert_webhooks WHERE tenant = %s",
                (alert.id, alert.tenant),
            )
        log.info("budget alert for tenant %s: %s", alert.tenant, alert.message)
        fired.append(alert)
    return fired


def _forget_deleted_budgets(conn: Connection) -> None:
    """Drop the state and thresholds of budgets that no longer exist (alerts already fired stay)."""
    for table in ("alert_state", "alert_thresholds"):
        conn.execute(
            sql.SQL(
                "DELETE FROM tokenscale.{} s WHERE NOT EXISTS (SELECT 1 FROM tokenscale.scoped_budgets b "
                "WHERE b.tenant = s.tenant AND b.id::text = s.budget_id) "
                "AND NOT (s.budget_id = %s "
                "AND EXISTS (SELECT 1 FROM tokenscale.budgets c WHERE c.tenant = s.tenant))"
            ).format(sql.Identifier(table)),
            (COMPANY_BUDGET_ID,),
        )


# --- webhooks ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    tenant: str
    url: str
    format: Format
    created_at: datetime | None = None

    def as_json(self, *, reveal: bool = False) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "url": self.url if reveal else redact_url(self.url),
            "format": self.format,
            "createdAt": None if self.created_at is None else iso(self.created_at),
        }


def redact_url(url: str) -> str:
    """A webhook URL without its secret parts (Slack's carry the secret in the path): scheme and host
    and the last 4 characters."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return (
        f"{scheme}://{host}/…{url[-4:]}"
        if "/" in rest and len(rest) > len(host) + 1
        else f"{scheme}://{host}"
    )


def add_webhook(conn: Connection, tenant: str, url: str, fmt: str = "json") -> Webhook:
    """Send ``tenant``'s alerts to ``url`` (``json`` or ``slack`` bodies); adding it again is a no-op."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: must be one of {', '.join(FORMATS)}")
    if (
        not url.startswith(("http://", "https://"))
        or len(url) > MAX_URL_CHARS
        or any(c.isspace() or not c.isprintable() for c in url)
    ):
        raise ValueError(f"not an http(s) URL of at most {MAX_URL_CHARS} characters: {url[:80]!r}")
    conn.execute(
        "INSERT INTO tokenscale.alert_webhooks (id, tenant, url, format) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (tenant, url, format) DO NOTHING",
        (str(uuid.uuid4()), tenant, url, fmt),
    )
    row = conn.execute(
        "SELECT id, tenant, url, format, created_at FROM tokenscale.alert_webhooks "
        "WHERE tenant = %s AND url = %s AND format = %s",
        (tenant, url, fmt),
    ).fetchone()
    assert row is not None
    return Webhook(str(row[0]), row[1], row[2], row[3], row[4])


def list_webhooks(conn: Connection, tenant: str | None = None) -> list[Webhook]:
    rows = conn.execute(
        "SELECT id, tenant, url, format, created_at FROM tokenscale.alert_webhooks "
        "WHERE %(tenant)s::text IS NULL OR tenant = %(tenant)s ORDER BY tenant, created_at, id",
        {"tenant": tenant},
    ).fetchall()
    return [Webhook(str(r[0]), r[1], r[2], r[3], r[4]) for r in rows]


def remove_webhook(conn: Connection, webhook_id: str, tenant: str | None = None) -> bool:
    """Remove a webhook (and its pending deliveries); False when there is none of that id."""
    try:
        wid = uuid.UUID(webhook_id)
    except ValueError:
        return False
    row = conn.execute(
        "DELETE FROM tokenscale.alert_webhooks "
        "WHERE id = %s AND (%s::text IS NULL OR tenant = %s) RETURNING id",
        (wid, tenant, tenant),
    ).fetchone()
    return row is not None


# --- delivery ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How deliveries are retried."""

    #: Seconds before the first retry; each further one waits twice as long (at most an hour).
    retry_seconds: float = 10.0
    #: Attempts before a delivery counts as failed.
    max_attempts: int = 8
    #: Seconds one POST may take (and a database connection may be waited for).
    timeout: float = 10.0
    #: Seconds a leased delivery is left to its sender before another may try it.
    lease_seconds: float = 120.0

    def backoff(self, attempts: int) -> float:
        """Seconds until the next attempt after ``attempts`` failed ones."""
        return float(min(MAX_BACKOFF_SECONDS, self.retry_seconds * 2 ** max(0, attempts - 1)))


def alert_payload(alert: Alert, fmt: str) -> dict[str, Any]:
    """The webhook body: the alert's JSON, or Slack's ``{"text": ...}`` (with the idempotency key)."""
    if fmt == "slack":
        return {
            "text": f":warning: tokenscale budget alert: {alert.message}",
            "idempotency_key": alert.idempotency_key,
        }
    return alert.as_json()


PostFunction = Callable[[str, bytes, dict[str, str], float], int]


def http_post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST ``body`` to ``url``; the HTTP status (an error status is returned, not raised)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


_ALERT_COLUMNS: Final = (
    "a.id, a.idempotency_key, a.tenant, a.budget_id, a.scope, a.scope_value, a.unit, a.window_seconds, "
    "a.percent, a.limit_value, a.used, a.window_start, a.window_end, a.rate_per_hour, a.exhausted_at, "
    "a.message, a.fired_at"
)


def _alert(row: Sequence[Any], deliveries: tuple[dict[str, Any], ...] = ()) -> Alert:
    return Alert(
        str(row[0]),
        row[1],
        row[2],
        row[3],
        row[4],
        row[5] or None,
        row[6],
        int(row[7]),
        Decimal(row[8]),
        Decimal(row[9]),
        Decimal(row[10]),
        row[11],
        row[12],
        float(row[13]),
        row[14],
        row[15],
        row[16],
        deliveries,
    )


@dataclass(slots=True)
class DeliveryReport:
    delivered: int = 0
    retried: int = 0
    failed: int = 0


def deliver_due(
    pool: ConnectionPool,
    policy: DeliveryPolicy = DeliveryPolicy(),
    *,
    post: PostFunction = http_post,
    batch: int = 50,
) -> DeliveryReport:
    """Post every delivery that is due (leased first, so no other process posts it meanwhile) and
    record each answer."""
    report = DeliveryReport()
    with pool.connection(timeout=policy.timeout) as conn, conn.transaction():
        due = conn.execute(
            "SELECT " + _ALERT_COLUMNS + ", w.id, w.url, w.format, d.attempts "
            "FROM tokenscale.alert_deliveries d JOIN tokenscale.alerts a ON a.id = d.alert_id "
            "JOIN tokenscale.alert_webhooks w ON w.id = d.webhook_id "
            "WHERE d.status = 'pending' AND d.next_attempt_at <= now() "
            "AND (d.lease_until IS NULL OR d.lease_until < now()) "
            "ORDER BY d.next_attempt_at LIMIT %s FOR UPDATE OF d SKIP LOCKED",
            (batch,),
        ).fetchall()
        if due:
            conn.execute(
                "UPDATE tokenscale.alert_deliveries SET lease_until = now() + make_interval(secs => %s) "
                "WHERE (alert_id, webhook_id) IN (SELECT * FROM unnest(%s::uuid[], %s::uuid[]))",
                (policy.lease_seconds, [r[0] for r in due], [r[17] for r in due]),
            )
    for row in due:
        alert = _alert(row[:17])
        webhook_id, url, fmt, attempts = row[17], row[18], row[19], int(row[20]) + 1
        body = json.dumps(alert_payload(alert, fmt), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": alert.idempotency_key,
            "User-Agent": "tokenscale-alerts",
        }
        error: str | None
        try:
            status = post(url, body, headers, policy.timeout)
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        with pool.connection(timeout=policy.timeout) as conn:
            if error is None:
                conn.execute(
                    "UPDATE tokenscale.alert_deliveries SET status = 'delivered', attempts = %s, "
                    "delivered_at = now(), lease_until = NULL WHERE alert_id = %s AND webhook_id = %s",
                    (attempts, alert.id, webhook_id),
                )
                report.delivered += 1
                continue
            error = error[:MAX_ERROR_CHARS]
            final = attempts >= policy.max_attempts
            conn.execute(
                "UPDATE tokenscale.alert_deliveries SET status = %s, attempts = %s, last_error = %s, "
                "lease_until = NULL, next_attempt_at = now() + make_interval(secs => %s) "
                "WHERE alert_id = %s AND webhook_id = %s",
                (
                    "failed" if final else "pending",
                    attempts,
                    error,
                    policy.backoff(attempts),
                    alert.id,
                    webhook_id,
                ),
            )
        target = redact_url(url)
        if final:
            report.failed += 1
            log.error(
                "budget alert %s to webhook %s failed after %d attempts, giving up: %s",
                alert.idempotency_key,
                target,
                attempts,
                error,
            )
        else:
            report.retried += 1
            log.warning(
                "budget alert %s to webhook %s failed (attempt %d of %d), retrying in %.0f s: %s",
                alert.idempotency_key,
                target,
                attempts,
                policy.max_attempts,
                policy.backoff(attempts),
                error,
            )
    return report


# --- reading alerts back ----------------------------------------------------------------------------


def list_alerts(conn: Connection, tenant: str | None = None, *, limit: int = 50) -> list[Alert]:
    """The most recent alerts (of ``tenant``), newest first, each with its deliveries."""
    rows = conn.execute(
        "SELECT " + _ALERT_COLUMNS + " FROM tokenscale.alerts a "
        "WHERE %(tenant)s::text IS NULL OR a.tenant = %(tenant)s "
        "ORDER BY a.fired_at DESC, a.id LIMIT %(limit)s",
        {"tenant": tenant, "limit": limit},
    ).fetchall()
    ids = [r[0] for r in rows]
    deliveries: dict[str, list[dict[str, Any]]] = {}
    for d in conn.execute(
        "SELECT d.alert_id, d.webhook_id, w.url, w.format, d.status, d.attempts, d.last_error, "
        "d.delivered_at, "
        "d.next_attempt_at FROM tokenscale.alert_deliveries d JOIN tokenscale.alert_webhooks w "
        "ON w.id = d.webhook_id WHERE d.alert_id = ANY(%s) ORDER BY w.created_at, w.id",
        (ids,),
    ).fetchall():
        deliveries.setdefault(str(d[0]), []).append(
            {
                "webhookId": str(d[1]),
                "url": redact_url(d[2]),
                "format": d[3],
                "status": d[4],
                "attempts": int(d[5]),
                "lastError": d[6],
                "deliveredAt": None if d[7] is None else iso(d[7]),
                "nextAttemptAt": None if d[4] != "pending" else iso(d[8]),
            }
        )
    return [_alert(r, tuple(deliveries.get(str(r[0]), ()))) for r in rows]


# --- the service's task -----------------------------------------------------------------------------


@dataclass(slots=True)
class CycleReport:
    evaluated: bool = False
    windows: int = 0
    fired: list[Alert] = field(default_factory=list)
    deliveries: DeliveryReport = field(default_factory=DeliveryReport)


@contextlib.contextmanager
def _evaluation_lock(conn: Connection) -> Iterator[bool]:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_EVALUATION_LOCK,)).fetchone()
    got = bool(row and row[0])
    try:
        yield got
    finally:
        if got:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_EVALUATION_LOCK,))


class AlertService:
    """Evaluates every budget window on an interval and delivers what is due, in one ``serve`` process.

    Several processes may run it on one database: one evaluates at a time (a session advisory lock;
    the others skip that round), and state and leases in the database keep alerts and deliveries
    from being duplicated."""

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        interval: float = 30.0,
        team_attribute: str = DEFAULT_TEAM_ATTRIBUTE,
        policy: DeliveryPolicy = DeliveryPolicy(),
        post: PostFunction = http_post,
    ) -> None:
        self.pool = pool
        self.interval = interval
        self.team_attribute = team_attribute
        self.policy = policy
        self.post = post

    def evaluate(self, now: datetime | None = None) -> CycleReport:
        """One evaluation of every budget window (at ``now``, default the database's clock)."""
        report = CycleReport()
        with self.pool.connection(timeout=self.policy.timeout) as conn:
            conn.autocommit = True
            try:
                with _evaluation_lock(conn) as got:
                    if not got:
                        return report
                    if now is None:
                        row = conn.execute("SELECT now()").fetchone()
                        assert row is not None
                        now = row[0]
                    assert now is not None
                    _forget_deleted_budgets(conn)
                    readings = read_windows(conn, now, team_attribute=self.team_attribute)
                    report.evaluated = True
                    report.windows = len(readings)
                    report.fired = evaluate_windows(conn, readings)
            finally:
                conn.autocommit = False
        return report

    def run_once(self, now: datetime | None = None) -> CycleReport:
        """Evaluate, then deliver what is due."""
        report = self.evaluate(now)
        report.deliveries = deliver_due(self.pool, self.policy, post=self.post)
        return report

    async def run(self) -> None:
        """Evaluate every ``interval`` seconds and deliver due alerts every few seconds, until cancelled."""
        tick = max(0.5, min(5.0, self.interval, self.policy.retry_seconds))
        next_evaluation = 0.0
        failing = False
        while True:
            try:
                if time.monotonic() >= next_evaluation:
                    next_evaluation = time.monotonic() + self.interval
                    started = time.monotonic()
                    report = await asyncio.to_thread(self.evaluate)
                    if report.evaluated:
                        log.debug(
                            "evaluated %d budget windows in %.3f s: %d alert(s)",
                            report.windows,
                            time.monotonic() - started,
                            len(report.fired),
                        )
                await asyncio.to_thread(deliver_due, self.pool, self.policy, post=self.post)
                if failing:
                    log.info("budget alerts: running again")
                    failing = False
            except (psycopg.OperationalError, PoolTimeout) as exc:
                # The database is away (the receiver spools meanwhile): said once, not every tick.
                if not failing:
                    log.warning("budget alerts: the database is unavailable (%s); trying again", exc)
                failing = True
                next_evaluation = 0.0
            except Exception:
                log.exception("budget alerts: evaluation or delivery failed; trying again")
                failing = True
            await asyncio.sleep(tick)
