"""Rolling-window token budgets: limits per tenant (company), usage in the window, recorded chat turns.

The window is the last ``window_days`` x 24 hours, ending now. Its usage is read from
``usage_hourly`` (the tenant's usage per UTC hour) for the whole hours inside it and from
``usage_events`` only for the two partial hours at its edges, so a check reads ``24 x window_days``
small rows and at most two hours of the tenant's events, however much usage there is.
Tokens counted: input + cache reads + cache writes + output (reasoning is part of output).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

from tokenscale.api._errors import ConflictError, InvalidRequestError
from tokenscale.mapping import MappingResult, UsageEvent
from tokenscale.pipeline import ResultWriter
from tokenscale.tenants import tenant_uuid

__all__ = [
    "CHAT_USAGE_CARRIER",
    "CHAT_USAGE_TOOL",
    "MAX_IDEMPOTENCY_KEY_CHARS",
    "MAX_TOKEN_LIMIT",
    "MAX_TURN_TOKENS",
    "MAX_WINDOW_DAYS",
    "UNLIMITED_WINDOW_DAYS",
    "Budget",
    "BudgetStatus",
    "budget_status",
    "budgets_json",
    "chat_usage_event",
    "get_budget",
    "idempotent_identity",
    "list_budgets",
    "record_chat_usage",
    "set_budget",
    "window_tokens",
]

MAX_WINDOW_DAYS: Final = 366
#: Bookmore's ``AiChatUsageResponse.TokenLimit`` is an ``Int`` (32-bit): limits fit it.
MAX_TOKEN_LIMIT: Final = 2**31 - 1
#: The most tokens one recorded chat turn may carry (the mapping's bound for one record).
MAX_TURN_TOKENS: Final = 10**12
#: How recorded chat turns appear in usage_events.
CHAT_USAGE_CARRIER: Final = "api.ai_chat_usage"
CHAT_USAGE_TOOL: Final = "ai_assistant"

Connection = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class Budget:
    """A tenant's token limit over a rolling window."""

    tenant: str
    token_limit: int
    window_days: int
    #: The tenant's UUID (the seed APIs' company id), when read from the database.
    company_id: str | None = None


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A budget and the tokens used within its current window."""

    company_id: str
    tokens_used: int
    #: ``None``: the company has no budget (unlimited).
    token_limit: int | None
    window_days: int

    @property
    def tokens_remaining(self) -> int | None:
        """Tokens left before the limit (never negative); ``None`` when unlimited."""
        return None if self.token_limit is None else max(0, self.token_limit - self.tokens_used)

    @property
    def is_within_budget(self) -> bool:
        """True while usage is still below the limit (always, when unlimited)."""
        return self.token_limit is None or self.tokens_used < self.token_limit

    def as_json(self) -> dict[str, Any]:
        """The answer's JSON fields (Bookmore's ``AiChatUsageResponse``, PascalCase)."""
        return {
            "CompanyId": self.company_id,
            "TokensUsed": self.tokens_used,
            "TokenLimit": self.token_limit,
            "TokensRemaining": self.tokens_remaining,
            "IsWithinBudget": self.is_within_budget,
            "WindowDays": self.window_days,
        }


def _check(token_limit: int, window_days: int) -> None:
    if not 0 <= token_limit <= MAX_TOKEN_LIMIT:
        raise ValueError(f"token_limit must be between 0 and {MAX_TOKEN_LIMIT}")
    if not 1 <= window_days <= MAX_WINDOW_DAYS:
        raise ValueError(f"window_days must be between 1 and {MAX_WINDOW_DAYS}")


def set_budget(conn: Connection, tenant: str, token_limit: int, window_days: int) -> Budget:
    """Create or replace ``tenant``'s budget."""
    _check(token_limit, window_days)
    conn.execute(
        "INSERT INTO tokenscale.budgets (tenant, token_limit, window_days) VALUES (%s, %s, %s) "
        "ON CONFLICT (tenant) DO UPDATE SET token_limit = excluded.token_limit, "
        "window_days = excluded.window_days, updated_at = now()",
        (tenant, token_limit, window_days),
    )
    return Budget(tenant, token_limit, window_days, str(tenant_uuid(conn, tenant)))


def get_budget(conn: Connection, tenant: str) -> Budget | None:
    """``tenant``'s budget, or None when it has none."""
    row = conn.execute(
        "SELECT tenant, token_limit, window_days FROM tokenscale.budgets WHERE tenant = %s", (tenant,)
    ).fetchone()
    return None if row is None else Budget(row[0], int(row[1]), int(row[2]))


def list_budgets(conn: Connection, tenant: str | None = None) -> list[Budget]:
    """Every budget (of ``tenant`` only, when given), by tenant."""
    rows = conn.execute(
        "SELECT b.tenant, b.token_limit, b.window_days, t.id FROM tokenscale.budgets b "
        "LEFT JOIN tokenscale.tenants t ON t.name = b.tenant "
        "WHERE %(tenant)s::text IS NULL OR b.tenant = %(tenant)s ORDER BY b.tenant",
        {"tenant": tenant},
    ).fetchall()
    return [Budget(r[0], int(r[1]), int(r[2]), None if r[3] is None else str(r[3])) for r in rows]


_TOKENS: Final = sql.SQL("input_tokens + cache_read_tokens + cache_write_tokens + output_tokens")

# Whole UTC hours from usage_hourly, the partial first and last hour from usage_events. The bounds
# are parameters (not expressions of now()), so PostgreSQL prunes usage_events to the partitions or
# chunks of the two edge hours when it plans the query, however many there are.
_WINDOW_TOKENS: Final = sql.SQL(
    """SELECT
    (SELECT coalesce(sum({tokens}), 0) FROM tokenscale.usage_hourly h
     WHERE h.tenant = %(tenant)s AND h.hour >= %(lo_hour)s AND h.hour < %(hi_hour)s)
  + (SELECT coalesce(sum({tokens}), 0) FROM tokenscale.usage_events e
     WHERE e.tenant = %(tenant)s AND e.counted AND e.time >= %(lo)s AND e.time < %(lo_hour)s)
  + (SELECT coalesce(sum({tokens}), 0) FROM tokenscale.usage_events e
     WHERE e.tenant = %(tenant)s AND e.counted AND e.time >= %(hi_hour)s AND e.time <= %(hi)s)"""
).format(tokens=_TOKENS)


def window_bounds(now: datetime, window_days: int) -> dict[str, datetime]:
    """The rolling window ending ``now``: its ends and the whole UTC hours inside it."""
    hi = now.astimezone(UTC)
    lo = hi - timedelta(days=window_days)
    hi_hour = hi.replace(minute=0, second=0, microsecond=0)
    lo_hour = lo.replace(minute=0, second=0, microsecond=0)
    if lo_hour < lo:
        lo_hour += timedelta(hours=1)
    return {"lo": lo, "hi": hi, "lo_hour": lo_hour, "hi_hour": hi_hour}


def window_tokens(conn: Connection, tenant: str, window_days: int) -> int:
    """Tokens ``tenant`` used in the last ``window_days`` days (rolling, ending now)."""
    now_row = conn.execute("SELECT now()").fetchone()
    assert now_row is not None
    bounds = window_bounds(now_row[0], window_days)
    row = conn.execute(_WINDOW_TOKENS, {"tenant": tenant, **bounds}).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


#: The window of a company without a budget: its usage over the last 30 days is answered.
UNLIMITED_WINDOW_DAYS: Final = 30


def budget_status(
    conn: Connection, tenant: str, default: Budget | None = None, *, company_id: str | None = None
) -> BudgetStatus:
    """``tenant``'s budget and its usage now, answered under ``company_id`` (default: the tenant).

    A tenant without a budget (and no ``default``) is unlimited: ``token_limit`` is ``None`` and the
    window is :data:`UNLIMITED_WINDOW_DAYS`. A stored limit beyond the DTO's ``Int`` (kept from
    before the bound) is :class:`InvalidRequestError`, naming ``TokenLimit``.
    """
    budget = get_budget(conn, tenant) or default
    if budget is not None and budget.token_limit > MAX_TOKEN_LIMIT:
        raise InvalidRequestError(
            f"TokenLimit: the company's limit {budget.token_limit} exceeds the Int the answer declares "
            f"(at most {MAX_TOKEN_LIMIT}); set a lower one with 'tokenscale budgets set'",
            field="TokenLimit",
        )
    window_days = UNLIMITED_WINDOW_DAYS if budget is None else budget.window_days
    used = window_tokens(conn, tenant, window_days)
    return BudgetStatus(
        tenant if company_id is None else company_id,
        used,
        None if budget is None else budget.token_limit,
        window_days,
    )


def chat_usage_event(
    tenant: str, tokens: int, *, time_ns: int | None = None, dedupe_key: bytes | None = None
) -> UsageEvent:
    """The usage event of one recorded chat turn (``tokens`` = input + output, unsplit: kept as input).

    ``time_ns`` and ``dedupe_key`` default to now and a random key; a retried turn passes its first
    attempt's, so the writer stores it once.
    """
    dedupe = (
        dedupe_key
        or hashlib.blake2b(
            b"\x1f".join([tenant.encode(), CHAT_USAGE_CARRIER.encode(), os.urandom(16)]), digest_size=16
        ).digest()
    )
    return UsageEvent(
        time_ns=time.time_ns() if time_ns is None else time_ns,
        tenant=tenant,
        carrier=CHAT_USAGE_CARRIER,
        rank=1,
        tool=CHAT_USAGE_TOOL,
        stream=CHAT_USAGE_CARRIER,
        service_name="tokenscale-api",
        dedupe_key=dedupe,
        operation="chat",
        requests=1,
        input_tokens=tokens,
        attributes={"tokenscale.tokens_split": "unknown"},
    )


#: The longest idempotency key accepted (``Idempotency-Key`` header or request id).
MAX_IDEMPOTENCY_KEY_CHARS: Final = 255
#: How long an idempotency key is remembered: a retry within this time counts once.
IDEMPOTENCY_KEY_DAYS: Final = 7


def idempotent_identity(conn: Connection, tenant: str, key: str, tokens: int) -> tuple[int, bytes]:
    """The (time in ns, dedupe key) of the turn ``key`` names: the first attempt's, made on first use.

    A key reused with a different token count is :class:`ConflictError` (409). Keys older than
    :data:`IDEMPOTENCY_KEY_DAYS` are forgotten.
    """
    conn.execute(
        "DELETE FROM tokenscale.chat_usage_requests WHERE created_at < now() - make_interval(days => %s)",
        (IDEMPOTENCY_KEY_DAYS,),
    )
    fresh = chat_usage_event(tenant, tokens)
    conn.execute(
        "INSERT INTO tokenscale.chat_usage_requests (tenant, idempotency_key, time_ns, dedupe_key, tokens) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (tenant, key, fresh.time_ns, fresh.dedupe_key, tokens),
    )
    row = conn.execute(
        "SELECT time_ns, dedupe_key, tokens "
        "FROM tokenscale.chat_usage_requests WHERE tenant = %s AND idempotency_key = %s",
        (tenant, key),
    ).fetchone()
    assert row is not None
    if int(row[2]) != tokens:
        raise ConflictError(
            f"Idempotency-Key: {key[:80]!r} was first used for a turn of {row[2]} tokens, not {tokens}",
            field="Idempotency-Key",
        )
    return int(row[0]), bytes(row[1])


def record_chat_usage(
    writer: ResultWriter, tenant: str, tokens: int, identity: tuple[int, bytes] | None = None
) -> None:
    """Store one chat turn's ``tokens`` as a counted usage event of ``tenant`` (nothing for 0 tokens).

    ``identity`` (from :func:`idempotent_identity`) makes a retried turn the same row.
    """
    if tokens > 0:
        time_ns, dedupe_key = identity if identity is not None else (None, None)
        event = chat_usage_event(tenant, tokens, time_ns=time_ns, dedupe_key=dedupe_key)
        writer.write(MappingResult(events=[event]))


def budgets_json(budgets: Sequence[Budget]) -> list[dict[str, Any]]:
    """Budgets as JSON objects (for the CLI's ``budgets list --json``), with the company's UUID."""
    return [
        {
            "tenant": b.tenant,
            "company_id": b.company_id,
            "token_limit": b.token_limit,
            "window_days": b.window_days,
        }
        for b in budgets
    ]
