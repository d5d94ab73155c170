"""The dashboard's JSON API and ``/docs`` in the OpenAPI document (added to it by
:func:`tokenscale.api.openapi.openapi_document`)."""

from __future__ import annotations

from typing import Any

__all__ = ["dashboard_paths"]


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _ok(description: str) -> dict[str, Any]:
    error = {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}
    return {
        "200": {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}},
        "400": {"description": "A bad parameter", "content": error},
        "401": {"description": "No or bad API key", "content": error},
        "403": {"description": "The key lacks the read scope or cannot read that tenant", "content": error},
        "503": {"description": "Database unavailable or schema not created", "content": error},
    }


#: An ISO date, or a date-time (RFC 3339).
_MOMENT = {
    "anyOf": [
        {"type": "string", "format": "date"},
        {"type": "string", "format": "date-time", "maxLength": 64},
    ]
}
_RANGE = [
    _query(
        "since",
        "First day (ISO date, UTC) or time (a range given backwards is read forwards; one longer "
        "than 365 days shows its last 365)",
        {**_MOMENT, "example": "2026-01-01"},
    ),
    _query("until", "Last day (ISO date, inclusive) or time (exclusive)", _MOMENT),
    _query("tenant", "Only this tenant (an admin may read any tenant; other keys only their own)"),
]
_FILTERS = [
    _query(name, f"Only usage of this {name} ('(none)': where it is not known)")
    for name in ("user", "tool", "model", "provider", "session", "conversation", "source")
]


def dashboard_paths() -> dict[str, Any]:
    """The paths of ``/docs`` and ``/api/dashboard/*``."""
    return {
        "/docs": {
            "get": {
                "operationId": "apiDocs",
                "summary": "This API's interactive documentation (HTML)",
                "security": [],
                "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}}},
            }
        },
        "/api/dashboard/summary": {
            "get": {
                "operationId": "dashboardSummary",
                "summary": "The dashboard's totals, daily series by tool, user and model, and budgets",
                "parameters": [
                    _query(
                        "days",
                        "The last N UTC days, today included (1-366)",
                        {"type": "integer", "minimum": 1, "maximum": 366, "default": 30},
                    ),
                    *_RANGE,
                ],
                "responses": _ok("Totals, day_list, by_tool, by_user, by_model, top_users, budgets"),
            }
        },
        "/api/dashboard/requests": {
            "get": {
                "operationId": "dashboardRequests",
                "summary": "Usage events (one per request, or per metric increment), filtered and sorted",
                "parameters": [
                    *_RANGE,
                    *_FILTERS,
                    _query(
                        "sort",
                        "Sort column",
                        {
                            "type": "string",
                            "default": "time",
                            "enum": [
                                "time",
                                "user",
                                "tool",
                                "model",
                                "session",
                                "conversation",
                                "tokens",
                                "cost",
                                "duration",
                            ],
                        },
                    ),
                    _query(
                        "order", "Sort order", {"type": "string", "enum": ["desc", "asc"], "default": "desc"}
                    ),
                    _query(
                        "limit",
                        "At most this many rows",
                        {"type": "integer", "minimum": 1, "maximum": 5000, "default": 1000},
                    ),
                    _query("all", "1: also the rows of carriers not counted (duplicates of a better one)"),
                ],
                "responses": _ok("columns, rows (costs as exact decimal strings), truncated, totals"),
            }
        },
        "/api/dashboard/groups": {
            "get": {
                "operationId": "dashboardGroups",
                "summary": "Sessions or conversations with their users, tools, models, tokens and cost",
                "parameters": [
                    _query(
                        "by",
                        "What to group by",
                        {"type": "string", "enum": ["session", "conversation"], "default": "session"},
                    ),
                    *_RANGE,
                    *_FILTERS,
                ],
                "responses": _ok("rows, latest first"),
            }
        },
        "/api/dashboard/hourly": {
            "get": {
                "operationId": "dashboardHourly",
                "summary": "Usage per UTC hour (the last 62 days of a longer range; default the last 2 days)",
                "parameters": _RANGE,
                "responses": _ok("hours: every hour of the range with requests, tokens and cost"),
            }
        },
    }
