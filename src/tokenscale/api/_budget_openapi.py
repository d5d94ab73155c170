"""The OpenAPI description of ``/v1/budgets`` (scoped budgets and their check), merged into
:func:`tokenscale.api.openapi.openapi_document`."""

from __future__ import annotations

from typing import Any, Final

from tokenscale.api.scoped_budgets import (
    MAX_LIMIT,
    MAX_NAME_CHARS,
    MAX_SCOPE_VALUE_CHARS,
    MAX_WINDOW_SECONDS,
    MAX_WINDOWS,
    MIN_WINDOW_SECONDS,
    SCOPES,
)

__all__ = ["budget_paths", "budget_schemas"]

_VALUE: Final = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_SCOPE_VALUE_CHARS,
    "pattern": "^[^\\u0000]*\\S[^\\u0000]*$",
}
_NAME: Final = {"type": "string", "maxLength": MAX_NAME_CHARS, "pattern": "^[^\\u0000]*$"}
_SECONDS: Final = {
    "type": "integer",
    "minimum": MIN_WINDOW_SECONDS,
    "maximum": MAX_WINDOW_SECONDS,
    "multipleOf": 3600,
}
_ISO: Final = {"type": "string", "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Invalid request: `field` names the offending value",
        401: "No API key, or an invalid or revoked one",
        403: "The key lacks the scope",
        404: "No such budget in this tenant",
        413: "Request body too large",
        503: "The database is unavailable; retry later",
    }
    out = {str(s): _json(_ref("BudgetError"), text[s]) for s in statuses}
    out["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}}
    if "503" in out:
        out["503"]["headers"] = {
            "Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait"}
        }
    return out


def _window(unit: str, limit: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["unit", "limit", "windowSeconds"],
        "properties": {"unit": {"type": "string", "enum": [unit]}, "limit": limit, "windowSeconds": _SECONDS},
    }


def budget_schemas() -> dict[str, Any]:
    """The component schemas of the budget routes."""
    limit_max = int(MAX_LIMIT)
    window = {
        "oneOf": [
            _window("tokens", {"type": "integer", "format": "int64", "minimum": 0, "maximum": limit_max}),
            _window("usd", {"type": "number", "minimum": 0, "maximum": limit_max}),
        ]
    }
    windows = {"type": "array", "minItems": 1, "maxItems": MAX_WINDOWS, "items": window}
    tenant_new = {
        "type": "object",
        "additionalProperties": False,
        "required": ["scope", "windows"],
        "properties": {"scope": {"type": "string", "enum": ["tenant"]}, "name": _NAME, "windows": windows},
    }
    scoped_new = {
        "type": "object",
        "additionalProperties": False,
        "required": ["scope", "scopeValue", "windows"],
        "properties": {
            "scope": {"type": "string", "enum": [s for s in SCOPES if s != "tenant"]},
            "scopeValue": _VALUE,
            "name": _NAME,
            "windows": windows,
        },
    }
    scope = {"type": "string", "enum": list(SCOPES)}
    return {
        "NewBudget": {"oneOf": [tenant_new, scoped_new]},
        "Budget": {
            "type": "object",
            "required": ["id", "scope", "scopeValue", "name", "windows", "createdAt"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "scope": scope,
                "scopeValue": {"type": "string", "nullable": True},
                "name": {"type": "string"},
                "windows": windows,
                "createdAt": {**_ISO, "nullable": True},
            },
        },
        "BudgetList": {
            "type": "object",
            "required": ["budgets"],
            "properties": {"budgets": {"type": "array", "items": _ref("Budget")}},
        },
        "BudgetCheck": {
            "type": "object",
            "required": ["allowed", "checkedAt", "windows"],
            "properties": {
                "allowed": {"type": "boolean", "description": "false when any window is exceeded"},
                "checkedAt": _ISO,
                "windows": {
                    "type": "array",
                    "description": "Tightest first: largest fraction used, then least remaining.",
                    "items": {
                        "type": "object",
                        "required": [
                            "budgetId",
                            "scope",
                            "scopeValue",
                            "unit",
                            "limit",
                            "used",
                            "remaining",
                            "fraction",
                            "windowSeconds",
                            "windowStart",
                            "windowEnd",
                            "exceeded",
                        ],
                        "properties": {
                            "budgetId": {"type": "string", "description": "`company` for the company budget"},
                            "scope": scope,
                            "scopeValue": {"type": "string", "nullable": True},
                            "unit": {"type": "string", "enum": ["tokens", "usd"]},
                            "limit": {"type": "number", "minimum": 0},
                            "used": {"type": "number", "minimum": 0},
                            "remaining": {"type": "number", "minimum": 0},
                            "fraction": {"type": "number", "minimum": 0},
                            "windowSeconds": {"type": "integer"},
                            "windowStart": _ISO,
                            "windowEnd": _ISO,
                            "exceeded": {"type": "boolean", "description": "used >= limit"},
                        },
                    },
                },
            },
        },
        "BudgetError": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
            },
        },
    }


def _identity(name: str, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": "string", "maxLength": MAX_SCOPE_VALUE_CHARS, "pattern": "^[^\\u0000]*$"},
        "description": what,
    }


def budget_paths() -> dict[str, Any]:
    """The paths of ``/v1/budgets``."""
    budget_id = {"name": "budget_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/v1/budgets/check": {
            "get": {
                "operationId": "checkBudgets",
                "summary": "Every window of every budget that applies to this identity, tightest first",
                "parameters": [
                    _identity("user", "The user (email, else user id): adds that user's budgets."),
                    _identity("team", "The team: adds that team's budgets."),
                    _identity("tool", "The tool (e.g. claude_code): adds that tool's budgets."),
                    _identity("model", "The model: adds that model's budgets."),
                ],
                "responses": {
                    "200": _json(_ref("BudgetCheck"), "The windows that apply, with their usage now"),
                    **_errors(400, 401, 403, 503),
                },
            }
        },
        "/v1/budgets": {
            "get": {
                "operationId": "listBudgets",
                "summary": "The tenant's scoped budgets",
                "parameters": [
                    {
                        "name": "scope",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": list(SCOPES)},
                    }
                ],
                "responses": {"200": _json(_ref("BudgetList"), "The budgets"), **_errors(400, 401, 403, 503)},
            },
            "post": {
                "operationId": "createBudget",
                "summary": "Create a scoped budget with one or more rolling windows (admin)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("NewBudget")}},
                },
                "responses": {
                    "201": {
                        **_json(_ref("Budget"), "The budget created"),
                        "headers": {"Location": {"schema": {"type": "string"}, "description": "Its URL"}},
                    },
                    **_errors(400, 401, 403, 413, 503),
                },
            },
        },
        "/v1/budgets/{budget_id}": {
            "get": {
                "operationId": "getBudget",
                "summary": "One budget",
                "parameters": [budget_id],
                "responses": {"200": _json(_ref("Budget"), "The budget"), **_errors(401, 403, 404, 503)},
            },
            "delete": {
                "operationId": "deleteBudget",
                "summary": "Delete a budget (admin); answers it",
                "parameters": [budget_id],
                "responses": {
                    "200": _json(_ref("Budget"), "The deleted budget"),
                    **_errors(401, 403, 404, 503),
                },
            },
        },
    }
