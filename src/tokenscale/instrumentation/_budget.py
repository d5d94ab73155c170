"""Budget guard and check client: ask tokenscale whether a budget is spent before an AI call.

:func:`check_budgets` asks ``GET /v1/budgets/check`` (every window of every budget that applies to
a user, team, tool and model of the API key's tenant); :class:`BudgetGuard` uses it before each
instrumented call, and other clients (such as ``tokenscale hook``) can reuse it. Only the
standard library is used for HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlencode

from tokenscale.errors import TokenscaleError
from tokenscale.instrumentation._context import current_usage_context

__all__ = [
    "BUDGET_CHECK_PATH",
    "ENV_API_KEY",
    "ENV_API_URL",
    "ENV_COMPANY_ID",
    "V1_BUDGET_CHECK_PATH",
    "BudgetCheck",
    "BudgetExceededError",
    "BudgetExceededWarning",
    "BudgetGuard",
    "BudgetStatus",
    "BudgetWindowStatus",
    "OnExceeded",
    "check_budgets",
]

_LOG = logging.getLogger(__name__)

# --- the server's contract: the read-only check endpoints (kept here, and only here) ------------

#: ``GET {base}/api/budgets/check?company_id=...`` (the Bookmore seed's company budget, parsed by
#: :class:`BudgetStatus`) answers a JSON object with the fields below.
BUDGET_CHECK_PATH: Final = "/api/budgets/check"
BUDGET_CHECK_COMPANY_PARAM: Final = "company_id"
FIELD_TOKENS_USED: Final = "TokensUsed"
FIELD_TOKEN_LIMIT: Final = "TokenLimit"
FIELD_TOKENS_REMAINING: Final = "TokensRemaining"
FIELD_IS_WITHIN_BUDGET: Final = "IsWithinBudget"
FIELD_WINDOW_DAYS: Final = "WindowDays"

#: ``GET {base}/v1/budgets/check?user=&team=&tool=&model=`` (all optional; the tenant is the API
#: key's) answers ``{"allowed", "checkedAt", "windows": [...]}``, the tightest window first.
V1_BUDGET_CHECK_PATH: Final = "/v1/budgets/check"
V1_BUDGET_CHECK_PARAMS: Final = ("user", "team", "tool", "model")

# --- settings: constructor argument, else environment variable, else default --------------------

#: Base URL of the tokenscale API (not the OTLP endpoint), e.g. ``https://tokenscale.example.com``.
ENV_API_URL: Final = "TOKENSCALE_API_URL"
#: API key sent as ``authorization: Bearer <key>``.
ENV_API_KEY: Final = "TOKENSCALE_API_KEY"
#: Company named in budget errors when neither the guard nor the usage context names one.
ENV_COMPANY_ID: Final = "TOKENSCALE_COMPANY_ID"
DEFAULT_CACHE_SECONDS: Final = 5.0
DEFAULT_TIMEOUT_SECONDS: Final = 2.0

OnExceeded = Literal["raise", "warn"]


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One answer of the Bookmore seed's company budget check (``/api/budgets/check``)."""

    tokens_used: int
    #: ``None``: the company has no budget (unlimited).
    token_limit: int | None
    tokens_remaining: int | None
    is_within_budget: bool
    window_days: int

    @classmethod
    def from_json(cls, data: object) -> BudgetStatus:
        """Parse the endpoint's JSON body; :class:`ValueError` when it is not the documented shape."""
        if not isinstance(data, Mapping):
            raise ValueError("budget check answer is not a JSON object")
        within = data.get(FIELD_IS_WITHIN_BUDGET)
        if not isinstance(within, bool):
            raise ValueError(f"budget check answer has no boolean {FIELD_IS_WITHIN_BUDGET}")
        return cls(
            tokens_used=_int_field(data, FIELD_TOKENS_USED),
            token_limit=_optional_int_field(data, FIELD_TOKEN_LIMIT),
            tokens_remaining=_optional_int_field(data, FIELD_TOKENS_REMAINING),
            is_within_budget=within,
            window_days=_int_field(data, FIELD_WINDOW_DAYS),
        )


def _int_field(data: Mapping[str, object], key: str) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"budget check field {key} is not a number")
    return int(value)


def _optional_int_field(data: Mapping[str, object], key: str) -> int | None:
    return None if data.get(key, 0) is None else _int_field(data, key)


@dataclass(frozen=True, slots=True)
class BudgetWindowStatus:
    """One window of one budget in a check answer (numbers: tokens, or USD for ``unit == "usd"``)."""

    budget_id: str
    scope: str
    scope_value: str | None
    unit: str
    limit: float
    used: float
    remaining: float
    fraction: float
    window_seconds: int
    window_start: str
    window_end: str
    exceeded: bool

    @classmethod
    def from_json(cls, data: object) -> BudgetWindowStatus:
        """One element of ``windows``; :class:`ValueError` when it is not the documented shape."""
        if not isinstance(data, Mapping):
            raise ValueError("budget check window is not a JSON object")
        return cls(
            budget_id=_str_field(data, "budgetId"),
            scope=_str_field(data, "scope"),
            scope_value=None if data.get("scopeValue") is None else _str_field(data, "scopeValue"),
            unit=_str_field(data, "unit"),
            limit=_number_field(data, "limit"),
            used=_number_field(data, "used"),
            remaining=_number_field(data, "remaining"),
            fraction=_number_field(data, "fraction"),
            window_seconds=int(_number_field(data, "windowSeconds")),
            window_start=_str_field(data, "windowStart"),
            window_end=_str_field(data, "windowEnd"),
            exceeded=_bool_field(data, "exceeded"),
        )

    def describe(self) -> str:
        """E.g. ``user alice@example.com: 1200 of 1000 tokens in the last 24 h``."""
        who = self.scope if self.scope_value is None else f"{self.scope} {self.scope_value}"
        hours = self.window_seconds // 3600
        span = f"{hours // 24} days" if hours % 24 == 0 and hours >= 48 else f"{hours} h"
        if self.unit == "usd":
            amount = f"${self.used:.2f} of ${self.limit:.2f}"
        else:
            amount = f"{int(self.used)} of {int(self.limit)} tokens"
        return f"{who}: {amount} in the last {span}"


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    """The answer of ``GET /v1/budgets/check``: allowed, and every window that applies, tightest first."""

    allowed: bool
    checked_at: str
    windows: tuple[BudgetWindowStatus, ...]

    @classmethod
    def from_json(cls, data: object) -> BudgetCheck:
        """Parse the endpoint's JSON body; :class:`ValueError` when it is not the documented shape."""
        if not isinstance(data, Mapping):
            raise ValueError("budget check answer is not a JSON object")
        windows = data.get("windows")
        if not isinstance(windows, list):
            raise ValueError("budget check answer has no list of windows")
        return cls(
            allowed=_bool_field(data, "allowed"),
            checked_at=_str_field(data, "checkedAt"),
            windows=tuple(BudgetWindowStatus.from_json(w) for w in windows),
        )

    @property
    def exceeded(self) -> tuple[BudgetWindowStatus, ...]:
        """The windows whose budget is spent (used >= limit), tightest first."""
        return tuple(w for w in self.windows if w.exceeded)


def _str_field(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ValueError(f"budget check field {key} is not a string")
    return value


def _bool_field(data: Mapping[str, object], key: str) -> bool:
    value = data.get(key)
    if not isinstance(value, bool):
        raise ValueError(f"budget check field {key} is not a boolean")
    return value


def _number_field(data: Mapping[str, object], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"budget check field {key} is not a number")
    return float(value)


def budget_check_url(
    base_url: str,
    *,
    user: str | None = None,
    team: str | None = None,
    tool: str | None = None,
    model: str | None = None,
) -> str:
    """The full URL of the check for an identity (parameters left out when not given)."""
    values = {"user": user, "team": team, "tool": tool, "model": model}
    query = urlencode({k: v for k, v in values.items() if v})
    return f"{base_url.rstrip('/')}{V1_BUDGET_CHECK_PATH}" + (f"?{query}" if query else "")


def check_budgets(
    base_url: str | None = None,
    *,
    api_key: str | None = None,
    user: str | None = None,
    team: str | None = None,
    tool: str | None = None,
    model: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> BudgetCheck:
    """Ask ``GET /v1/budgets/check`` for the budgets that apply to this identity.

    ``base_url`` and ``api_key`` default to ``$TOKENSCALE_API_URL`` and ``$TOKENSCALE_API_KEY``.
    Raises :class:`OSError` when the service is unreachable, slow (past ``timeout``) or answers an
    HTTP error (``urllib.error.HTTPError``, with its status), and :class:`ValueError` for a body
    that is not the documented shape: the caller decides whether to fail open.
    """
    url = base_url if base_url is not None else os.environ.get(ENV_API_URL)
    if not url:
        raise ValueError(f"check_budgets needs base_url or ${ENV_API_URL}")
    key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
    request = urllib.request.Request(
        budget_check_url(url, user=user, team=team, tool=tool, model=model),
        headers={"accept": "application/json"},
    )
    if key:
        request.add_header("authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return BudgetCheck.from_json(json.loads(response.read()))


class BudgetExceededError(TokenscaleError):
    """A budget that applies to the call is spent; raised before the AI call is sent.

    ``check`` is the whole answer of the budget check; ``windows`` the spent windows, tightest
    first; ``company_id`` the company the guard checked for (``None`` when none was named).
    """

    def __init__(self, company_id: str | None, check: BudgetCheck) -> None:
        spent = check.exceeded
        described = "; ".join(w.describe() for w in spent) or "a budget is spent"
        super().__init__(f"budget spent ({described})")
        self.company_id = company_id
        self.check = check
        self.windows = spent


class BudgetExceededWarning(UserWarning):
    """Issued instead of :class:`BudgetExceededError` by a guard with ``on_exceeded="warn"``."""


#: (company, user, team, tool, model): what one cached answer is for.
_CacheKey = tuple[str | None, str | None, str | None, str | None, str | None]


class BudgetGuard:
    """Asks the tokenscale budget check (:func:`check_budgets`) before each instrumented AI call.

    The check answers every budget of the API key's tenant that applies to the call: the tenant's,
    and those of its user (the usage context's ``user``, else the guard's ``user``), team (the
    usage context's ``team`` metadata, else the guard's ``team``), tool (the guard's ``tool``) and
    model (the call's). When any of them is spent the call raises :class:`BudgetExceededError`
    (``on_exceeded="warn"``: a :class:`BudgetExceededWarning`, and the call goes ahead).

    The answer is cached per identity for ``cache_seconds``. The guard FAILS OPEN: when the server
    is unreachable, slow (past ``timeout``), answers an HTTP error or a body it cannot parse, the
    call goes ahead, a warning is logged once per outage, and that "unknown" answer is cached
    too, so an outage costs at most one timeout per ``cache_seconds``.

    ``company_id`` (else the usage context's tenant, else ``$TOKENSCALE_COMPANY_ID``) names the
    company in errors; the tenant checked is always the API key's.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        company_id: str | None = None,
        api_key: str | None = None,
        on_exceeded: OnExceeded = "raise",
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        user: str | None = None,
        team: str | None = None,
        tool: str | None = None,
    ) -> None:
        url = base_url if base_url is not None else os.environ.get(ENV_API_URL)
        if not url:
            raise ValueError(f"BudgetGuard needs base_url or ${ENV_API_URL}")
        if on_exceeded not in ("raise", "warn"):
            raise ValueError(f"on_exceeded must be 'raise' or 'warn', not {on_exceeded!r}")
        self.base_url = url.rstrip("/")
        self.company_id = company_id
        self.user = user
        self.team = team
        self.tool = tool
        self.on_exceeded: OnExceeded = on_exceeded
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
        self._cache: dict[_CacheKey, tuple[float, BudgetCheck | None]] = {}
        self._lock = threading.Lock()
        self._failing = False

    def resolve_company(self, company_id: str | None = None) -> str | None:
        """The company named in errors, following the order in the class docstring."""
        return (
            company_id
            or self.company_id
            or current_usage_context().tenant
            or os.environ.get(ENV_COMPANY_ID)
            or None
        )

    def _key(self, company_id: str | None, model: str | None) -> _CacheKey:
        context = current_usage_context()
        team = context.meta.get("team") or self.team
        return (
            self.resolve_company(company_id),
            context.user or self.user,
            None if team is None else str(team),
            self.tool,
            model or None,
        )

    def check_url(self, company_id: str | None = None, *, model: str | None = None) -> str:
        """The full URL of the check for the current identity."""
        _, user, team, tool, model = self._key(company_id, model)
        return budget_check_url(self.base_url, user=user, team=team, tool=tool, model=model)

    def status(self, company_id: str | None = None, *, model: str | None = None) -> BudgetCheck | None:
        """The (cached) check answer; ``None`` when unknown (the server failed)."""
        key = self._key(company_id, model)
        cached = self._cached(key)
        if cached is not None:
            return cached[1]
        return self._store(key, self._fetch(key))

    async def status_async(
        self, company_id: str | None = None, *, model: str | None = None
    ) -> BudgetCheck | None:
        """:meth:`status` that does its HTTP call in a worker thread, off the event loop."""
        key = self._key(company_id, model)
        cached = self._cached(key)
        if cached is not None:
            return cached[1]
        return self._store(key, await asyncio.to_thread(self._fetch, key))

    def check(self, company_id: str | None = None, *, model: str | None = None) -> None:
        """Raise :class:`BudgetExceededError` (or warn) when a budget that applies is known to be spent."""
        self._enforce(self.resolve_company(company_id), self.status(company_id, model=model))

    async def check_async(self, company_id: str | None = None, *, model: str | None = None) -> None:
        """:meth:`check` for coroutines."""
        self._enforce(self.resolve_company(company_id), await self.status_async(company_id, model=model))

    def clear_cache(self) -> None:
        """Forget every cached answer."""
        with self._lock:
            self._cache.clear()

    def _enforce(self, company: str | None, check: BudgetCheck | None) -> None:
        if check is None or check.allowed:
            return
        error = BudgetExceededError(company, check)
        if self.on_exceeded == "raise":
            raise error
        warnings.warn(str(error), BudgetExceededWarning, stacklevel=2)

    def _cached(self, key: _CacheKey) -> tuple[float, BudgetCheck | None] | None:
        with self._lock:
            entry = self._cache.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry

    def _store(self, key: _CacheKey, check: BudgetCheck | None) -> BudgetCheck | None:
        with self._lock:
            self._cache[key] = (time.monotonic() + self.cache_seconds, check)
        return check

    def _fetch(self, key: _CacheKey) -> BudgetCheck | None:
        _, user, team, tool, model = key
        try:
            answer = check_budgets(
                self.base_url,
                api_key=self._api_key or "",
                user=user,
                team=team,
                tool=tool,
                model=model,
                timeout=self.timeout,
            )
        except (OSError, ValueError) as exc:
            # Fail open: URLError, HTTPError, timeouts and connection resets are OSErrors;
            # bad JSON or a body of the wrong shape is a ValueError.
            if not self._failing:
                _LOG.warning("tokenscale budget check failed, allowing AI calls (fail-open): %s", exc)
            self._failing = True
            return None
        if self._failing:
            _LOG.info("tokenscale budget check answers again")
        self._failing = False
        return answer
