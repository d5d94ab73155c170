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

Reads, in one round trip (``tokenscale.budget_check``, migrations 0091 and 0092): the budgets that
apply through the index on (tenant, scope, scope_value), so the number defined does not matter;
then each tenant, tool, model and user window [now - W, now] as its whole UTC hours from
``usage_hourly`` or ``usage_scope_hourly`` (kept exact by the writer in the same transaction as the
events) and the events of its partial first and last hours from ``usage_events``
(``tokenscale.window_pieces``), every range read once however many windows share it,
and every window summed in the database. Its plans are generic and kept for the session. Team
windows (an attribute, not a rollup key) and, on TimescaleDB community (no ``usage_scope_hourly``:
tenant windows from the ``usage_hourly`` continuous aggregate's whole hours), tool, model and user
windows read their events in the window from ``usage_events``.
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

#: The whole check in one round trip (migration 0092): its plans are generic and kept for the session.
_BUDGET_CHECK: Final = (
    "SELECT * FROM tokenscale.budget_check(%(tenant)s, %(scopes)s::text[], %(values)s::text[], "
    "%(now)s::timestamptz, %(team_key)s, %(company_limit)s::numeric, %(company_days)s::int)"
)


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
    to the database's clock; every window ends at that same instant. One round trip: a call of
    ``tokenscale.budget_check`` (one statement, one snapshot), which sums each window in the database.
    """
    keys: list[tuple[str, str]] = [("tenant", "")]
    for scope in SCOPES[1:]:
        value = identity.value(scope)
        if value:
            keys.append((scope, value))
    rows = conn.execute(
        _BUDGET_CHECK,
        {
            "tenant": tenant,
            "scopes": [k[0] for k in keys],
            "values": [k[1] for k in keys],
            "now": now,
            "team_key": team_attribute,
            "company_limit": None if company_budget is None else company_budget.token_limit,
            "company_days": None if company_budget is None else company_budget.window_days,
        },
    ).fetchall()
    checked_at: datetime = rows[0][1].astimezone(UTC)
    statuses = []
    for row in rows[1:]:
        budget_id: str = row[2]
        window_scope: Scope = row[3]
        scope_value: str | None = row[4] or None
        unit: Unit = row[5]
        seconds: int = row[7]
        tokens, usd, missing = row[8], row[9], row[10]
        if tokens is None or missing != 0:  # every piece of a window has its sum: never otherwise
            raise RuntimeError(f"budget check: window {budget_id} {seconds}s read incompletely")
        statuses.append(
            WindowStatus(
                budget_id,
                window_scope,
                scope_value,
                unit,
                _stored_limit(Decimal(row[6]), unit),
                Decimal(tokens) if unit == "tokens" else Decimal(usd),
                seconds,
                checked_at - timedelta(seconds=seconds),
                checked_at,
            )
        )
    statuses.sort(key=lambda s: (-s.fraction, s.remaining, s.window_seconds, s.budget_id))
    return {
        "allowed": not any(s.exceeded for s in statuses),
        "checkedAt": iso(checked_at),
        "windows": [s.as_json() for s in statuses],
    }
