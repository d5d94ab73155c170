"""Scoped budgets: limits per tenant, team, user, tool or model over one or more rolling windows.

A budget belongs to a tenant and applies to a *scope*: the whole tenant, one team, one user, one
tool or one model. It has one or more windows, each a limit in tokens or USD over the last
``window_seconds`` (whole hours, up to 366 days) ending now. :func:`check_budgets` answers every
window of every budget that applies to an identity (user, team, tool, model), tightest first, and
whether all of them still allow usage.

What each scope counts (counted usage events of the tenant only):

* ``tenant``: all of them. The company budget of the Bookmore seed API (``tokenscale budgets set``,
  :mod:`tokenscale.api.budgets`) applies as a tenant window with budget id ``company``;
* ``team``: events whose attributes (resource or record/point) hold the team attribute
  (``team.id`` by default, the ``budget_team_attribute`` setting) with this string value;
* ``user``: events whose user is the value: its ``user_email``, or its ``user_id`` when it has no
  email;
* ``tool``: events of this tool (``claude_code``, ``gemini_cli``, ``codex``, or the service name);
* ``model``: events of this model (as stored: normalised, e.g. ``claude-sonnet-4-5``).

Tokens are input + cache reads + cache writes + output (reasoning is part of output); USD is the
events' priced cost (an unpriced event adds nothing to a USD window).

Reads, in one transaction: the budgets that apply through the index on (tenant, scope,
scope_value); then the whole UTC hours of every window in one query (tenant windows from
``usage_hourly``, tool, model and user windows from ``usage_scope_hourly``, which the writer keeps
exact like the other rollups), and the partial first hour of each window and the partial last hour
they share in one scan of ``usage_events``. A check thus reads one row per hour of each window and
at most a few hours of the tenant's events, however much usage the windows hold. Team windows (an
attribute, not a rollup key) and, on TimescaleDB community (no ``usage_scope_hourly``), tool,
model and user windows read their events in the window from ``usage_events``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final, Literal

import psycopg
from psycopg import sql

from tokenscale.api._errors import InvalidRequestError, NotFoundError
from tokenscale.api.budgets import Budget
from tokenscale.mapping import normalise_model

__all__ = [
    "COMPANY_BUDGET_ID",
    "DEFAULT_TEAM_ATTRIBUTE",
    "MAX_BUDGETS_PER_TENANT",
    "MAX_LIMIT",
    "MAX_SCOPE_VALUE_CHARS",
    "MAX_WINDOWS",
    "MAX_WINDOW_SECONDS",
    "MIN_WINDOW_SECONDS",
    "SCOPES",
    "UNITS",
    "BudgetWindow",
    "Identity",
    "ScopedBudget",
    "WindowStatus",
    "budget_json",
    "check_budgets",
    "create_budget",
    "delete_budget",
    "get_scoped_budget",
    "list_scoped_budgets",
    "parse_budget",
    "parse_window_spec",
]

Connection = psycopg.Connection[Any]
Scope = Literal["tenant", "team", "user", "tool", "model"]
Unit = Literal["tokens", "usd"]

SCOPES: Final[tuple[Scope, ...]] = ("tenant", "team", "user", "tool", "model")
UNITS: Final[tuple[Unit, ...]] = ("tokens", "usd")
MIN_WINDOW_SECONDS: Final = 3600
MAX_WINDOW_SECONDS: Final = 366 * 86400
#: The largest limit (tokens or USD) a window may have.
MAX_LIMIT: Final = Decimal(10**13)
MAX_WINDOWS: Final = 16
MAX_SCOPE_VALUE_CHARS: Final = 512
MAX_NAME_CHARS: Final = 200
#: More budgets than this per tenant are refused (the check stays fast well beyond it).
MAX_BUDGETS_PER_TENANT: Final = 100_000
DEFAULT_TEAM_ATTRIBUTE: Final = "team.id"
#: The id the company budget of the Bookmore seed API is answered under.
COMPANY_BUDGET_ID: Final = "company"
_USD_QUANTUM: Final = Decimal("1e-10")


@dataclass(frozen=True, slots=True)
class BudgetWindow:
    """One limit of a budget: ``limit`` tokens or USD over the last ``window_seconds``."""

    unit: Unit
    limit: Decimal
    window_seconds: int

    def as_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "limit": _number(self.limit, self.unit),
            "windowSeconds": self.window_seconds,
        }


@dataclass(frozen=True, slots=True)
class ScopedBudget:
    """A budget of ``tenant`` for one scope (``scope_value`` None for the tenant scope)."""

    id: str
    tenant: str
    scope: Scope
    scope_value: str | None
    windows: tuple[BudgetWindow, ...]
    name: str = ""
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is about to use AI: each field narrows nothing, it adds the budgets of that scope."""

    user: str | None = None
    team: str | None = None
    tool: str | None = None
    model: str | None = None

    def value(self, scope: Scope) -> str | None:
        return None if scope == "tenant" else getattr(self, scope)


@dataclass(frozen=True, slots=True)
class WindowStatus:
    """One window of one budget, with its usage now."""

    budget_id: str
    scope: Scope
    scope_value: str | None
    unit: Unit
    limit: Decimal
    used: Decimal
    window_seconds: int
    window_start: datetime
    window_end: datetime

    @property
    def remaining(self) -> Decimal:
        return max(Decimal(0), self.limit - self.used)

    @property
    def fraction(self) -> float:
        """Used / limit (a window with limit 0 is wholly used: 1.0)."""
        return 1.0 if self.limit == 0 else float(self.used / self.limit)

    @property
    def exceeded(self) -> bool:
        return self.used >= self.limit

    def as_json(self) -> dict[str, Any]:
        return {
            "budgetId": self.budget_id,
            "scope": self.scope,
            "scopeValue": self.scope_value,
            "unit": self.unit,
            "limit": _number(self.limit, self.unit),
            "used": _number(self.used, self.unit),
            "remaining": _number(self.remaining, self.unit),
            "fraction": self.fraction,
            "windowSeconds": self.window_seconds,
            "windowStart": iso(self.window_start),
            "windowEnd": iso(self.window_end),
            "exceeded": self.exceeded,
        }


def iso(moment: datetime) -> str:
    """ISO-8601 in UTC with a ``Z``, microseconds kept."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _number(value: Decimal, unit: Unit) -> int | float:
    return int(value) if unit == "tokens" else float(value)


# --- validation ------------------------------------------------------------------------------------

_SPEC_RE: Final = re.compile(r"^\s*(\d+)\s*([hd])\s*:\s*(tokens|usd)\s*:\s*([0-9]+(?:\.[0-9]+)?)\s*$")


def parse_window_spec(spec: str) -> BudgetWindow:
    """A window from ``<N>h|<N>d:tokens|usd:<limit>`` (``24h:tokens:500000``, ``30d:usd:100``)."""
    match = _SPEC_RE.match(spec)
    if match is None:
        raise ValueError(
            f"invalid window {spec!r}: expected <N>h or <N>d, a unit and a limit, "
            "e.g. 24h:tokens:500000 or 30d:usd:100"
        )
    count, kind, unit, limit = match.groups()
    seconds = int(count) * (3600 if kind == "h" else 86400)
    return _window(unit, limit, seconds, "window")


def _window(unit: object, limit: object, seconds: object, where: str) -> BudgetWindow:
    if unit not in UNITS:
        raise InvalidRequestError(f"{where}.unit: must be one of {', '.join(UNITS)}", field=f"{where}.unit")
    if isinstance(limit, bool) or not isinstance(limit, int | float | str | Decimal):
        raise InvalidRequestError(f"{where}.limit: must be a number", field=f"{where}.limit")
    try:
        value = Decimal(str(limit))
    except ArithmeticError:
        raise InvalidRequestError(f"{where}.limit: must be a number", field=f"{where}.limit") from None
    if not value.is_finite() or not 0 <= value <= MAX_LIMIT:
        raise InvalidRequestError(f"{where}.limit: must be between 0 and {MAX_LIMIT}", field=f"{where}.limit")
    if unit == "tokens" and value != value.to_integral_value():
        raise InvalidRequestError(
            f"{where}.limit: a token limit must be a whole number", field=f"{where}.limit"
        )
    if isinstance(seconds, float) and seconds.is_integer():
        seconds = int(seconds)
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise InvalidRequestError(
            f"{where}.windowSeconds: must be an integer", field=f"{where}.windowSeconds"
        )
    if not MIN_WINDOW_SECONDS <= seconds <= MAX_WINDOW_SECONDS or seconds % 3600:
        raise InvalidRequestError(
            f"{where}.windowSeconds: must be whole hours from 1 hour to 366 days "
            f"({MIN_WINDOW_SECONDS} to {MAX_WINDOW_SECONDS}, a multiple of 3600), not {seconds}",
            field=f"{where}.windowSeconds",
        )
    # USD limits are kept to 10 decimal places (numeric(24, 10)), rounded half up.
    kept = (
        value.quantize(_USD_QUANTUM, ROUND_HALF_UP).normalize()
        if unit == "usd"
        else value.to_integral_value()
    )
    return BudgetWindow(unit, kept, seconds)


def _scope(scope: object, value: object) -> tuple[Scope, str | None]:
    if scope not in SCOPES:
        raise InvalidRequestError(f"scope: must be one of {', '.join(SCOPES)}", field="scope")
    if scope == "tenant":
        if value not in (None, ""):
            raise InvalidRequestError(
                "scopeValue: a tenant budget has none (the key's tenant)", field="scopeValue"
            )
        return "tenant", None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError(
            f"scopeValue: a {scope} budget needs the {scope} it applies to", field="scopeValue"
        )
    if len(value) > MAX_SCOPE_VALUE_CHARS:
        raise InvalidRequestError(
            f"scopeValue: at most {MAX_SCOPE_VALUE_CHARS} characters", field="scopeValue"
        )
    if scope == "model":  # as the mapping stores it: claude-opus-4-8[1m] is claude-opus-4-8
        value = normalise_model(value) or value
    return scope, value


def parse_budget(tenant: str, body: object) -> ScopedBudget:
    """A new budget from a JSON request body ``{"scope", "scopeValue", "name", "windows": [...]}``."""
    if not isinstance(body, Mapping):
        raise InvalidRequestError("the body must be a JSON object")
    unknown = sorted(set(body) - {"scope", "scopeValue", "name", "windows"})
    if unknown:
        raise InvalidRequestError(f"{unknown[0]}: unknown field", field=unknown[0])
    scope, value = _scope(body.get("scope"), body.get("scopeValue"))
    name = body.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        raise InvalidRequestError(f"name: a string of at most {MAX_NAME_CHARS} characters", field="name")
    windows = body.get("windows")
    if not isinstance(windows, list) or not 1 <= len(windows) <= MAX_WINDOWS:
        raise InvalidRequestError(f"windows: a list of 1 to {MAX_WINDOWS} windows", field="windows")
    parsed = []
    for i, window in enumerate(windows):
        where = f"windows[{i}]"
        if not isinstance(window, Mapping):
            raise InvalidRequestError(f"{where}: must be an object", field=where)
        extra = sorted(set(window) - {"unit", "limit", "windowSeconds"})
        if extra:
            raise InvalidRequestError(f"{where}.{extra[0]}: unknown field", field=f"{where}.{extra[0]}")
        parsed.append(_window(window.get("unit"), window.get("limit"), window.get("windowSeconds"), where))
    return ScopedBudget(str(uuid.uuid4()), tenant, scope, value, tuple(parsed), name)


# --- storage ---------------------------------------------------------------------------------------


def create_budget(
    conn: Connection,
    tenant: str,
    scope: str,
    scope_value: str | None,
    windows: Sequence[BudgetWindow],
    name: str = "",
) -> ScopedBudget:
    """Store a new budget of ``tenant``; :class:`InvalidRequestError` names what is wrong."""
    checked_scope, value = _scope(scope, scope_value)
    if not 1 <= len(windows) <= MAX_WINDOWS:
        raise InvalidRequestError(f"windows: a budget has 1 to {MAX_WINDOWS} windows", field="windows")
    checked = [_window(w.unit, w.limit, w.window_seconds, f"windows[{i}]") for i, w in enumerate(windows)]
    if len(name) > MAX_NAME_CHARS:
        raise InvalidRequestError(f"name: at most {MAX_NAME_CHARS} characters", field="name")
    budget_id = str(uuid.uuid4())
    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('tokenscale.scoped_budgets'), hashtext(%s))", (tenant,)
        )
        row = conn.execute(
            "SELECT count(*) FROM tokenscale.scoped_budgets WHERE tenant = %s", (tenant,)
        ).fetchone()
        if row is not None and int(row[0]) >= MAX_BUDGETS_PER_TENANT:
            raise InvalidRequestError(
                f"a tenant has at most {MAX_BUDGETS_PER_TENANT} budgets; delete some first"
            )
        created = conn.execute(
            "INSERT INTO tokenscale.scoped_budgets (id, tenant, scope, scope_value, name) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING created_at",
            (budget_id, tenant, checked_scope, value or "", name),
        ).fetchone()
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO tokenscale.scoped_budget_windows "
                "(budget_id, position, unit, limit_value, window_seconds) VALUES (%s, %s, %s, %s, %s)",
                [(budget_id, i, w.unit, w.limit, w.window_seconds) for i, w in enumerate(checked)],
            )
    return ScopedBudget(
        budget_id, tenant, checked_scope, value, tuple(checked), name, None if created is None else created[0]
    )


_SELECT_BUDGETS: Final = """
SELECT b.id, b.tenant, b.scope, b.scope_value, b.name, b.created_at,
       array_agg(w.unit ORDER BY w.position), array_agg(w.limit_value ORDER BY w.position),
       array_agg(w.window_seconds ORDER BY w.position)
FROM tokenscale.scoped_budgets b JOIN tokenscale.scoped_budget_windows w ON w.budget_id = b.id
"""


def _budgets(rows: Iterable[Sequence[Any]]) -> list[ScopedBudget]:
    return [
        ScopedBudget(
            str(r[0]),
            r[1],
            r[2],
            r[3] or None,
            tuple(
                BudgetWindow(u, _stored_limit(lim, u), s) for u, lim, s in zip(r[6], r[7], r[8], strict=True)
            ),
            r[4],
            r[5],
        )
        for r in rows
    ]


def _stored_limit(limit: Decimal, unit: str) -> Decimal:
    """A limit as read from numeric(24, 10): whole tokens, USD without trailing zeros."""
    return Decimal(int(limit)) if unit == "tokens" else limit.normalize()


def list_scoped_budgets(
    conn: Connection, tenant: str | None = None, scope: str | None = None
) -> list[ScopedBudget]:
    """The budgets (of ``tenant``, of ``scope``), by tenant, scope, value and creation."""
    rows = conn.execute(
        _SELECT_BUDGETS + "WHERE (%(tenant)s::text IS NULL OR b.tenant = %(tenant)s) "
        "AND (%(scope)s::text IS NULL OR b.scope = %(scope)s) "
        "GROUP BY b.id ORDER BY b.tenant, b.scope, b.scope_value, b.created_at, b.id",
        {"tenant": tenant, "scope": scope},
    ).fetchall()
    return _budgets(rows)


def _budget_uuid(budget_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(budget_id)
    except ValueError:
        raise NotFoundError(f"no budget {budget_id[:80]!r}: budget ids are UUIDs") from None


def get_scoped_budget(conn: Connection, tenant: str, budget_id: str) -> ScopedBudget:
    """``tenant``'s budget ``budget_id``; :class:`NotFoundError` when it has none of that id."""
    rows = conn.execute(
        _SELECT_BUDGETS + "WHERE b.tenant = %s AND b.id = %s GROUP BY b.id", (tenant, _budget_uuid(budget_id))
    ).fetchall()
    if not rows:
        raise NotFoundError(f"no budget {budget_id[:80]!r} in this tenant")
    return _budgets(rows)[0]


def delete_budget(conn: Connection, tenant: str | None, budget_id: str) -> ScopedBudget:
    """Delete budget ``budget_id`` (of ``tenant``, when given); the deleted budget, else NotFoundError."""
    with conn.transaction():
        row = conn.execute(
            "SELECT tenant FROM tokenscale.scoped_budgets "
            "WHERE id = %s AND (%s::text IS NULL OR tenant = %s)",
            (_budget_uuid(budget_id), tenant, tenant),
        ).fetchone()
        if row is None:
            raise NotFoundError(
                f"no budget {budget_id[:80]!r}" + ("" if tenant is None else " in this tenant")
            )
        budget = get_scoped_budget(conn, row[0], budget_id)
        conn.execute("DELETE FROM tokenscale.scoped_budgets WHERE id = %s", (_budget_uuid(budget_id),))
    return budget


def budget_json(budget: ScopedBudget) -> dict[str, Any]:
    """A budget as the API answers it."""
    return {
        "id": budget.id,
        "scope": budget.scope,
        "scopeValue": budget.scope_value,
        "name": budget.name,
        "windows": [w.as_json() for w in budget.windows],
        "createdAt": None if budget.created_at is None else iso(budget.created_at),
    }


# --- the check -------------------------------------------------------------------------------------

#: The budgets that apply (through the index on (tenant, scope, scope_value)), with the database's
#: clock, whether the writer keeps the scoped rollups here, and the tenant's company budget: one
#: round trip. A row with a NULL id when no budget applies.
_APPLYING: Final = """
SELECT n.now, n.rollup, n.token_limit, n.window_days,
       a.id, a.scope, a.scope_value, a.unit, a.limit_value, a.window_seconds
FROM (SELECT now() AS now, to_regclass('tokenscale.usage_scope_5min') IS NOT NULL AS rollup,
             c.token_limit, c.window_days
      FROM (SELECT 1) AS one LEFT JOIN tokenscale.budgets c ON c.tenant = %(tenant)s) AS n
LEFT JOIN (
    SELECT b.id, b.scope, b.scope_value, w.unit, w.limit_value, w.window_seconds, w.position
    FROM tokenscale.scoped_budgets b JOIN tokenscale.scoped_budget_windows w ON w.budget_id = b.id
    WHERE b.tenant = %(tenant)s
      AND (b.scope, b.scope_value) IN (SELECT * FROM unnest(%(scopes)s::text[], %(values)s::text[]))
) AS a ON TRUE
ORDER BY a.id, a.position
"""

_TOKENS: Final = sql.SQL("(e.input_tokens + e.cache_read_tokens + e.cache_write_tokens + e.output_tokens)")

#: Scopes whose whole days, hours and 5-minute buckets the rollups keep (where the writer keeps them).
_ROLLUP_SCOPES: Final = frozenset({"tool", "model", "user"})

# The events of one scope value, as the scoped rollups group them.
_SCOPE_FILTERS: Final[dict[str, sql.SQL]] = {
    "user": sql.SQL("coalesce(e.user_email, e.user_id) = {}"),
    "tool": sql.SQL("e.tool = {}"),
    "model": sql.SQL("e.model = {}"),
    "team": sql.SQL("e.attributes @> jsonb_build_object({}::text, {}::text)"),
}


def _raw_sql(scope: str, starts: int) -> sql.Composed:
    """Tokens and USD of one scope value's events since each of ``starts`` window starts (the
    longest first), in one scan of usage_events."""
    columns = []
    for i in range(starts):
        lo = sql.Placeholder(f"lo{i}")
        columns.append(
            sql.SQL("coalesce(sum({t}) FILTER (WHERE e.time >= {lo}), 0)").format(t=_TOKENS, lo=lo)
        )
        columns.append(sql.SQL("coalesce(sum(e.cost_usd) FILTER (WHERE e.time >= {lo}), 0)").format(lo=lo))
    value = sql.Placeholder("value")
    condition = (
        _SCOPE_FILTERS[scope].format(sql.Placeholder("team_key"), value)
        if scope == "team"
        else _SCOPE_FILTERS[scope].format(value)
    )
    return sql.SQL(
        "SELECT {cols} FROM tokenscale.usage_events e "
        "WHERE e.tenant = %(tenant)s AND e.counted AND e.time >= %(lo0)s AND e.time <= %(hi)s AND {filter}"
    ).format(cols=sql.SQL(", ").join(columns), filter=condition)


#: (scope, scope value or None, window seconds): one window's usage is read once per check.
_Key = tuple[str, str | None, int]


def check_budgets(
    conn: Connection,
    tenant: str,
    identity: Identity = Identity(),
    *,
    company_budget: Budget | None = None,
    team_attribute: str = DEFAULT_TEAM_ATTRIBUTE,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Every window of every budget of ``tenant`` that applies to ``identity``, with its usage now.

    The answer is the check endpoint's JSON: ``{"allowed", "checkedAt", "windows": [...]}``, the
    tightest window first (largest fraction used, then least remaining), ``allowed`` false when any
    window is exceeded (used >= limit). The tenant's company budget (``tokenscale.budgets``, else
    ``company_budget``) is one more tenant window, id :data:`COMPANY_BUDGET_ID`. ``now`` defaults
    to the database's clock; every window ends at that same instant. Two round trips: the budgets
    that apply, then their usage (a third per team, and on TimescaleDB community per tool, model or
    user scope value).
    """
    keys: list[tuple[str, str]] = [("tenant", "")]
    for scope in SCOPES[1:]:
        value = identity.value(scope)
        if value:
            keys.append((scope, value))
    rows = conn.execute(
        _APPLYING, {"tenant": tenant, "scopes": [k[0] for k in keys], "values": [k[1] for k in keys]}
    ).fetchall()
    now = (rows[0][0] if now is None else now).astimezone(UTC)
    rollup = bool(rows[0][1])
    found: list[tuple[str, Scope, str | None, Unit, Decimal, int]] = [
        (str(r[4]), r[5], r[6] or None, r[7], _stored_limit(Decimal(r[8]), r[7]), int(r[9]))
        for r in rows
        if r[4] is not None
    ]
    company = company_budget if rows[0][2] is None else Budget(tenant, int(rows[0][2]), int(rows[0][3]))
    if company is not None:
        found.append(
            (
                COMPANY_BUDGET_ID,
                "tenant",
                None,
                "tokens",
                Decimal(company.token_limit),
                company.window_days * 86400,
            )
        )
    usage = _read_usage(conn, tenant, {(f[1], f[2], f[5]) for f in found}, now, team_attribute, rollup=rollup)
    statuses = []
    for budget_id, scope, value, unit, limit, seconds in found:
        tokens, usd = usage[(scope, value, seconds)]
        statuses.append(
            WindowStatus(
                budget_id,
                scope,
                value,
                unit,
                limit,
                tokens if unit == "tokens" else usd,
                seconds,
                now - timedelta(seconds=seconds),
                now,
            )
        )
    statuses.sort(key=lambda s: (-s.fraction, s.remaining, s.window_seconds, s.budget_id))
    return {
        "allowed": not any(s.exceeded for s in statuses),
        "checkedAt": iso(now),
        "windows": [s.as_json() for s in statuses],
    }


# --- a window's usage from the rollups ------------------------------------------------------------

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_FIVE_MINUTES: Final = timedelta(minutes=5)
_HOUR: Final = timedelta(hours=1)
_DAY: Final = timedelta(days=1)
#: The resolution of timestamptz: ``time < hi + _TICK`` is ``time <= hi``.
_TICK: Final = timedelta(microseconds=1)

#: A part of a window: a grain ("raw", "5min", "hour", "day") and its range [lo, hi).
_Piece = tuple[str, datetime, datetime]


def _floor(moment: datetime, step: timedelta) -> datetime:
    return _EPOCH + (moment - _EPOCH) // step * step


def _ceil(moment: datetime, step: timedelta) -> datetime:
    floor = _floor(moment, step)
    return floor if floor == moment else floor + step


def window_pieces(lo: datetime, hi: datetime, *, grains: bool = True) -> list[_Piece]:
    """The window [lo, hi] (both ends included) as disjoint ranges [start, end) of the coarsest
    rollup buckets that fit: the events of its partial first and last 5 minutes, then whole 5-minute
    buckets up to the first whole hour, whole hours up to the first whole UTC day, whole days, and
    the same back down at its end. Without ``grains`` (TimescaleDB community: hours only), the
    events of its partial first and last hours and its whole hours. Empty ranges are left out."""
    if not grains:
        a, b = _ceil(lo, _HOUR), _floor(hi, _HOUR)
        if a >= b:
            return [("raw", lo, hi + _TICK)]
        return [p for p in (("raw", lo, a), ("hour", a, b), ("raw", b, hi + _TICK)) if p[1] < p[2]]
    a, b = _ceil(lo, _FIVE_MINUTES), _floor(hi, _FIVE_MINUTES)
    if a >= b:
        return [("raw", lo, hi + _TICK)]
    h1 = min(_ceil(a, _HOUR), b)
    h2 = max(_floor(b, _HOUR), h1)
    d1 = min(_ceil(h1, _DAY), h2)
    d2 = max(_floor(h2, _DAY), d1)
    pieces = [
        ("raw", lo, a),
        ("5min", a, h1),
        ("hour", h1, d1),
        ("day", d1, d2),
        ("hour", d2, h2),
        ("5min", h2, b),
        ("raw", b, hi + _TICK),
    ]
    return [p for p in pieces if p[1] < p[2]]


#: Every range of a check in one call (migration 0091): its plans are kept for the session.
_BUDGET_USAGE: Final = (
    "SELECT * FROM tokenscale.budget_usage(%(tenant)s, %(tool)s, %(model)s, %(user)s, "
    "%(part)s::text[], %(scope)s::text[], %(value)s::text[], %(lo)s::timestamptz[], %(hi)s::timestamptz[], "
    "%(raw_lo)s::timestamptz[], %(raw_hi)s::timestamptz[])"
)
#: Column pair of each scope in an event range's row (after the part and the range index).
_RAW_COLUMN: Final = {"tenant": 2, "tool": 4, "model": 6, "user": 8}


def _read_bucketed(
    conn: Connection, tenant: str, keys: Sequence[_Key], now: datetime, *, grains: bool
) -> dict[_Key, tuple[Decimal, Decimal]]:
    """Each window from the coarsest rollup buckets that fit (:func:`window_pieces`), the events of
    its partial first and last 5 minutes (hours, without ``grains``) from usage_events: every range
    once, in one statement."""
    values = {scope: value for scope, value, _ in keys}
    rollup: dict[tuple[str, str, str, datetime, datetime], int] = {}  # (part, scope, value, lo, hi)
    raw: dict[tuple[datetime, datetime], int] = {}
    of_key: dict[_Key, list[tuple[str, int, str]]] = {}
    for key in keys:
        scope, value, seconds = key
        parts = of_key.setdefault(key, [])
        for grain, lo, hi in window_pieces(now - timedelta(seconds=seconds), now, grains=grains):
            if grain == "raw":
                parts.append(("raw", raw.setdefault((lo, hi), len(raw)), scope))
                continue
            part = "tenant_hour" if grain == "hour" and scope == "tenant" else grain
            parts.append((part, rollup.setdefault((part, scope, value or "", lo, hi), len(rollup)), scope))
    params: dict[str, Any] = {
        "tenant": tenant,
        "tool": values.get("tool"),
        "model": values.get("model"),
        "user": values.get("user"),
        "part": [k[0] for k in rollup],
        "scope": [k[1] for k in rollup],
        "value": [k[2] for k in rollup],
        "lo": [k[3] for k in rollup],
        "hi": [k[4] for k in rollup],
        "raw_lo": [k[0] for k in raw],
        "raw_hi": [k[1] for k in raw],
    }
    sums: dict[tuple[str, int], Sequence[Any]] = {
        ("raw" if row[0] == "raw" else "rollup", row[1]): row
        for row in conn.execute(_BUDGET_USAGE, params).fetchall()
    }
    usage: dict[_Key, tuple[Decimal, Decimal]] = {}
    for key, parts in of_key.items():
        tokens, usd = Decimal(0), Decimal(0)
        for part, index, scope in parts:
            row = sums[("raw" if part == "raw" else "rollup", index)]
            column = _RAW_COLUMN[scope] if part == "raw" else 2
            tokens += Decimal(row[column])
            usd += Decimal(row[column + 1])
        usage[key] = (tokens, usd)
    return usage


def _read_usage(
    conn: Connection,
    tenant: str,
    keys: set[_Key],
    now: datetime,
    team_attribute: str,
    *,
    rollup: bool,
) -> dict[_Key, tuple[Decimal, Decimal]]:
    """Tokens and USD of each (scope, value, window seconds) in the windows ending ``now``.

    Bucketed (:func:`_read_bucketed`): tenant, tool, model and user windows from the rollups' whole
    days, hours and 5-minute buckets plus the events of their partial edges where ``rollup``;
    tenant windows from whole hours plus the events of partial edge hours where not (TimescaleDB
    community). Raw: the window's events from usage_events (team windows; tool, model and user
    windows on TimescaleDB community).
    """
    usage: dict[_Key, tuple[Decimal, Decimal]] = {}
    bucketed = sorted(
        (k for k in keys if k[0] == "tenant" or (rollup and k[0] in _ROLLUP_SCOPES)),
        key=lambda k: (k[0], k[1] or "", k[2]),
    )
    raw: dict[tuple[str, str | None], list[int]] = {}
    for key in keys:
        if key not in bucketed:
            raw.setdefault((key[0], key[1]), []).append(key[2])
    if bucketed:
        usage.update(_read_bucketed(conn, tenant, bucketed, now, grains=rollup))
    for (scope, value), seconds_list in raw.items():
        ordered = sorted(seconds_list, reverse=True)  # the longest first: lo0 bounds the scan
        raw_params: dict[str, Any] = {"tenant": tenant, "value": value, "team_key": team_attribute, "hi": now}
        for i, seconds in enumerate(ordered):
            raw_params[f"lo{i}"] = now - timedelta(seconds=seconds)
        row = conn.execute(_raw_sql(scope, len(ordered)), raw_params).fetchone()
        assert row is not None
        for i, seconds in enumerate(ordered):
            usage[(scope, value, seconds)] = (Decimal(row[2 * i]), Decimal(row[2 * i + 1]))
    return usage
