"""The usage API: DX, Revenium, Bookmore and usage-record shapes over HTTP/JSON and gRPC."""

from __future__ import annotations

from tokenscale.api._errors import ApiError, InvalidRequestError, NotFoundError
from tokenscale.api.budgets import Budget, BudgetStatus, budget_status, list_budgets, set_budget
from tokenscale.api.grpc_service import SERVICE_NAME, UsageApiServicer
from tokenscale.api.http import DEFAULT_MAX_BODY_BYTES, create_api_routes
from tokenscale.api.openapi import openapi_document
from tokenscale.api.service import UsageApiService

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "SERVICE_NAME",
    "ApiError",
    "Budget",
    "BudgetStatus",
    "InvalidRequestError",
    "NotFoundError",
    "UsageApiService",
    "UsageApiServicer",
    "budget_status",
    "create_api_routes",
    "list_budgets",
    "openapi_document",
    "set_budget",
]
