"""The operations of the usage API, shared by the HTTP and gRPC transports: auth, tenancy, then the work.

Every method is blocking (database calls): the transports run them in worker threads. A transport
resolves the caller first (:meth:`UsageApiService.principal`), then validates the request, then
calls the operation, which checks the scope and confines every query to the caller's tenant;
naming another tenant (``teamId``, ``CompanyId``, ``company_id``) is refused with
:class:`PermissionDeniedError`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from psycopg_pool import ConnectionPool

from tokenscale.api._errors import InvalidRequestError
from tokenscale.api._values import Params, integer, text
from tokenscale.api.ai_metrics import AiMetricsPage, list_ai_metrics, parse_ai_metrics_query
from tokenscale.api.budgets import (
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_TURN_TOKENS,
    Budget,
    budget_status,
    idempotent_identity,
    record_chat_usage,
)
from tokenscale.api.scoped_budgets import (
    DEFAULT_TEAM_ATTRIBUTE,
    MAX_SCOPE_VALUE_CHARS,
    Identity,
    budget_json,
    check_budgets,
    create_budget,
    delete_budget,
    get_scoped_budget,
    list_scoped_budgets,
    parse_budget,
)
from tokenscale.api.tool_metrics import ToolMetric, store_tool_metrics
from tokenscale.api.usage_records import list_usage_records, usage_series
from tokenscale.auth import AuthenticationError, AuthPolicy, PermissionDeniedError, Principal
from tokenscale.mapping import normalise_model
from tokenscale.pipeline import ResultWriter
from tokenscale.tenants import TenantIds

__all__ = ["UsageApiService", "identity_from_query", "same_tenant"]


def same_tenant(named: str, tenant: str) -> bool:
    """Whether a tenant id given in a request names ``tenant`` (UUIDs compare by value)."""
    if named == tenant:
        return True
    try:
        return uuid.UUID(named) == uuid.UUID(tenant)
    except ValueError:
        return False


def identity_from_query(query: Mapping[str, str]) -> Identity:
    """The identity of a budget check from its query parameters; unknown ones are refused."""
    unknown = sorted(set(query) - {"user", "team", "tool", "model"})
    if unknown:
        raise InvalidRequestError(
            f"{unknown[0]}: unknown query parameter (the check takes user, team, tool and model)",
            field=unknown[0],
        )
    values: dict[str, str | None] = {}
    for name in ("user", "team", "tool", "model"):
        value = query.get(name) or None
        if value is not None and len(value) > MAX_SCOPE_VALUE_CHARS:
            raise InvalidRequestError(f"{name}: at most {MAX_SCOPE_VALUE_CHARS} characters", field=name)
        values[name] = value
    # As the mapping stores it: claude-opus-4-8[1m] is claude-opus-4-8.
    values["model"] = normalise_model(values["model"])
    return Identity(**values)


class UsageApiService:
    """The API's operations over one connection pool.

    ``writer`` stores recorded chat turns (a :class:`tokenscale.store.writer.UsageWriter`);
    ``default_budget`` applies to companies without a row in ``tokenscale.budgets`` (else 404).
    """

    def __init__(
        self,
        pool: ConnectionPool,
        auth: AuthPolicy,
        writer: ResultWriter,
        *,
        default_budget: Budget | None = None,
        team_attribute: str = DEFAULT_TEAM_ATTRIBUTE,
        timeout: float = 10.0,
    ) -> None:
        self.pool = pool
        self.team_attribute = team_attribute
        self.auth = auth
        self.writer = writer
        self.default_budget = default_budget
        self.timeout = timeout
        self.tenants = TenantIds(pool, timeout=timeout)

    def principal(self, headers: Mapping[str, str], scope: str) -> Principal:
        """The caller, who must hold ``scope`` (blocking on a key-cache miss)."""
        principal = self.auth.principal(headers)
        principal.require(scope)
        return principal

    def _own(self, principal: Principal, named: object, name: str) -> str:
        """The tenant a request is about: the caller's own, named by its UUID or its name, or not named."""
        if named is None or named == "":
            return principal.tenant
        value = text(named, name, max_len=255)
        if not (
            same_tenant(value, principal.tenant) or self.tenants.names(value, principal.tenant, by_name=True)
        ):
            raise PermissionDeniedError(f"{name} {value[:80]!r} is not this API key's tenant")
        return principal.tenant

    def company_id(self, tenant: str) -> str:
        """The id a tenant is answered under: its UUID."""
        return str(self.tenants.uuid_of(tenant))

    @staticmethod
    def _keyed(principal: Principal) -> None:
        """The budget routes need a company: anonymous callers are refused (Bookmore's IsAuthenticated)."""
        if principal.key_id is None:
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")

    def push_tool_metrics(self, principal: Principal, records: list[ToolMetric]) -> list[dict[str, Any]]:
        """aiToolMetrics.push/pushAll: store ``records`` (already validated) for the caller's tenant."""
        principal.require("ingest")
        with self.pool.connection(timeout=self.timeout) as conn:
            return store_tool_metrics(conn, principal.tenant, records)

    def list_ai_metrics(self, principal: Principal, params: Params, modality: str) -> AiMetricsPage:
        """One page of AI metrics of one modality (``all``, ``completions``, ``audio``, ...)."""
        principal.require("read")
        query = parse_ai_metrics_query(params, modality)
        tenant = self._own(principal, query.team_id, "teamId")
        with self.pool.connection(timeout=self.timeout) as conn:
            return list_ai_metrics(conn, tenant, query)

    def record_chat_usage(
        self,
        principal: Principal,
        company_id: object,
        tokens_used: object,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Record a chat turn's tokens against the company's budget; the budget status after it.

        A company without a budget is unlimited (``TokenLimit`` null), and the turn is recorded all
        the same. With ``idempotency_key``, a retried turn is recorded once.
        """
        self._keyed(principal)
        principal.require("ingest")
        if tokens_used is None:
            raise InvalidRequestError("TokensUsed: is required", field="TokensUsed", code="not_null")
        tokens = integer(tokens_used, "TokensUsed", minimum=0, maximum=MAX_TURN_TOKENS)
        tenant = self._own(principal, company_id, "CompanyId")
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS:
            raise InvalidRequestError(
                f"Idempotency-Key: must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters",
                field="Idempotency-Key",
            )
        answered_as = self.company_id(tenant)
        identity = None
        with self.pool.connection(timeout=self.timeout) as conn:
            budget_status(conn, tenant, self.default_budget)  # a limit beyond the DTO: 400 before recording
            if idempotency_key is not None and tokens > 0:
                identity = idempotent_identity(conn, tenant, idempotency_key, tokens)
        record_chat_usage(self.writer, tenant, tokens, identity)
        with self.pool.connection(timeout=self.timeout) as conn:
            return budget_status(conn, tenant, self.default_budget, company_id=answered_as).as_json()

    def check_budget(self, principal: Principal, company_id: object) -> dict[str, Any]:
        """The budget status of the caller's company, recording nothing."""
        self._keyed(principal)
        principal.require("read")
        tenant = self._own(principal, company_id, "company_id")
        answered_as = self.company_id(tenant)
        with self.pool.connection(timeout=self.timeout) as conn:
            return budget_status(conn, tenant, self.default_budget, company_id=answered_as).as_json()

    # --- scoped budgets (/v1/budgets) ---------------------------------------------------------------

    def check_budgets(self, principal: Principal, query: Mapping[str, str]) -> dict[str, Any]:
        """``GET /v1/budgets/check``: every window that applies to the identity in ``query``
        (``user``, ``team``, ``tool``, ``model``; all optional), tightest first."""
        principal.require("read")
        identity = identity_from_query(query)
        with self.pool.connection(timeout=self.timeout) as conn:
            return check_budgets(
                conn,
                principal.tenant,
                identity,
                company_budget=self.default_budget,
                team_attribute=self.team_attribute,
            )

    def list_budgets(self, principal: Principal, query: Mapping[str, str]) -> dict[str, Any]:
        """``GET /v1/budgets``: the caller's budgets (``?scope=`` narrows them)."""
        principal.require("read")
        unknown = sorted(set(query) - {"scope"})
        if unknown:
            raise InvalidRequestError(f"{unknown[0]}: unknown query parameter", field=unknown[0])
        scope = query.get("scope")
        if scope is not None and scope not in ("tenant", "team", "user", "tool", "model"):
            raise InvalidRequestError("scope: must be one of tenant, team, user, tool, model", field="scope")
        with self.pool.connection(timeout=self.timeout) as conn:
            return {"budgets": [budget_json(b) for b in list_scoped_budgets(conn, principal.tenant, scope)]}

    def create_budget(self, principal: Principal, body: object) -> dict[str, Any]:
        """``POST /v1/budgets``: a new budget of the caller's tenant (``admin`` scope)."""
        principal.require("admin")
        parsed = parse_budget(principal.tenant, body)
        with self.pool.connection(timeout=self.timeout) as conn:
            created = create_budget(
                conn, principal.tenant, parsed.scope, parsed.scope_value, parsed.windows, parsed.name
            )
        return budget_json(created)

    def get_budget(self, principal: Principal, budget_id: str) -> dict[str, Any]:
        """``GET /v1/budgets/{id}``."""
        principal.require("read")
        with self.pool.connection(timeout=self.timeout) as conn:
            return budget_json(get_scoped_budget(conn, principal.tenant, budget_id))

    def delete_budget(self, principal: Principal, budget_id: str) -> dict[str, Any]:
        """``DELETE /v1/budgets/{id}`` (``admin`` scope): the deleted budget."""
        principal.require("admin")
        with self.pool.connection(timeout=self.timeout) as conn:
            return budget_json(delete_budget(conn, principal.tenant, budget_id))

    def list_usage_records(self, principal: Principal, params: Params) -> dict[str, Any]:
        """One cursor page of the caller's usage records."""
        principal.require("read")
        with self.pool.connection(timeout=self.timeout) as conn:
            return list_usage_records(conn, principal.tenant, params)

    def usage_series(self, principal: Principal) -> dict[str, Any]:
        """The caller's 90-day daily series of tokens, conversations and messages."""
        principal.require("read")
        with self.pool.connection(timeout=self.timeout) as conn:
            return usage_series(conn, principal.tenant)
