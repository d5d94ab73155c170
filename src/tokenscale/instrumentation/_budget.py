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

# --- the server's contract: the read-only check endpoint (kept here, and only here) -------------

#: ``GET {base}/api/budgets/check?company_id=...`` answers a JSON object with the fields below.
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
#: Company whose budget is checked when neither the guard nor the usage context names one.
ENV_COMPANY_ID: Final = "TOKENSCALE_COMPANY_ID"
DEFAULT_CACHE_SECONDS: Final = 5.0
DEFAULT_TIMEOUT_SECONDS: Final = 2.0

OnExceeded = Literal["raise", "warn"]


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One answer of the budget check endpoint."""

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
    """The company's token budget is spent; raised before the AI call is sent."""

    def __init__(self, company_id: str, status: BudgetStatus) -> None:
        super().__init__(
            f"token budget of company {company_id!r} is spent: {status.tokens_used} of "
            f"{status.token_limit} tokens used in the last {status.window_days} days"
        )
        self.company_id = company_id
        self.status = status


class BudgetExceededWarning(UserWarning):
    """Issued instead of :class:`BudgetExceededError` by a guard with ``on_exceeded="warn"``."""


class BudgetGuard:
    """Checks the tokenscale budget endpoint before each instrumented AI call.

    The answer is cached per company for ``cache_seconds``. The guard FAILS OPEN: when the server
    is unreachable, slow (past ``timeout``), answers an HTTP error or a body it cannot parse, the
    call goes ahead, a warning is logged once per outage, and that "unknown" answer is cached
    too, so an outage costs at most one timeout per ``cache_seconds``. Only the standard library
    is used for the HTTP call.

    The company is ``company_id`` given to :meth:`check`, else the guard's ``company_id``, else
    the current usage context's tenant, else ``$TOKENSCALE_COMPANY_ID``; with none, no check.
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
    ) -> None:
        url = base_url if base_url is not None else os.environ.get(ENV_API_URL)
        if not url:
            raise ValueError(f"BudgetGuard needs base_url or ${ENV_API_URL}")
        if on_exceeded not in ("raise", "warn"):
            raise ValueError(f"on_exceeded must be 'raise' or 'warn', not {on_exceeded!r}")
        self.base_url = url.rstrip("/")
        self.company_id = company_id
        self.on_exceeded: OnExceeded = on_exceeded
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
        self._cache: dict[str, tuple[float, BudgetStatus | None]] = {}
        self._lock = threading.Lock()
        self._failing = False

    def resolve_company(self, company_id: str | None = None) -> str | None:
        """The company a check is for, following the order in the class docstring."""
        return (
            company_id
            or self.company_id
            or current_usage_context().tenant
            or os.environ.get(ENV_COMPANY_ID)
            or None
        )

    def check_url(self, company_id: str) -> str:
        """The full URL of the check for ``company_id``."""
        return f"{self.base_url}{BUDGET_CHECK_PATH}?{urlencode({BUDGET_CHECK_COMPANY_PARAM: company_id})}"

    def status(self, company_id: str | None = None) -> BudgetStatus | None:
        """The (cached) budget status; ``None`` when unknown (no company, or the server failed)."""
        company = self.resolve_company(company_id)
        if company is None:
            return None
        cached = self._cached(company)
        if cached is not None:
            return cached[1]
        return self._store(company, self._fetch(company))

    async def status_async(self, company_id: str | None = None) -> BudgetStatus | None:
        """:meth:`status` that does its HTTP call in a worker thread, off the event loop."""
        company = self.resolve_company(company_id)
        if company is None:
            return None
        cached = self._cached(company)
        if cached is not None:
            return cached[1]
        return self._store(company, await asyncio.to_thread(self._fetch, company))

    def check(self, company_id: str | None = None) -> None:
        """Raise :class:`BudgetExceededError` (or warn) when the budget is known to be spent."""
        company = self.resolve_company(company_id)
        if company is not None:
            self._enforce(company, self.status(company))

    async def check_async(self, company_id: str | None = None) -> None:
        """:meth:`check` for coroutines."""
        company = self.resolve_company(company_id)
        if company is not None:
            self._enforce(company, await self.status_async(company))

    def clear_cache(self) -> None:
        """Forget every cached answer."""
        with self._lock:
            self._cache.clear()

    def _enforce(self, company: str, status: BudgetStatus | None) -> None:
        if status is None or status.is_within_budget:
            return
        error = BudgetExceededError(company, status)
        if self.on_exceeded == "raise":
            raise error
        warnings.warn(str(error), BudgetExceededWarning, stacklevel=2)

    def _cached(self, company: str) -> tuple[float, BudgetStatus | None] | None:
        with self._lock:
            entry = self._cache.get(company)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry

    def _store(self, company: str, status: BudgetStatus | None) -> BudgetStatus | None:
        with self._lock:
            self._cache[company] = (time.monotonic() + self.cache_seconds, status)
        return status

    def _fetch(self, company: str) -> BudgetStatus | None:
        request = urllib.request.Request(self.check_url(company), headers={"accept": "application/json"})
        if self._api_key:
            request.add_header("authorization", f"Bearer {self._api_key}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status = BudgetStatus.from_json(json.loads(response.read()))
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
        return status
