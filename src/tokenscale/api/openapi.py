"""The OpenAPI 3.0 document of the HTTP API (served at ``/openapi.json``), written by hand to match it."""

from __future__ import annotations

from typing import Any, Final

from tokenscale import __version__
from tokenscale.api._budget_openapi import budget_paths, budget_schemas
from tokenscale.api.ai_metrics import (
    COLLECTIONS,
    DEFAULT_PAGE_SIZE,
    MAX_DURATION_MS,
    MAX_PAGE,
    MAX_PAGE_SIZE,
    MAX_TOTAL_COST,
    METRIC_TYPES,
    MODALITIES,
    MODALITY_FIELDS,
    OPERATION_TYPES,
    SORT_ALIASES,
    SORT_PATTERN,
    SORT_PROPERTIES,
)
from tokenscale.api.budgets import MAX_IDEMPOTENCY_KEY_CHARS, MAX_TOKEN_LIMIT, MAX_TURN_TOKENS
from tokenscale.api.tool_metrics import COUNT_FIELDS, EMAIL_PATTERN, MAX_RECORDS
from tokenscale.api.usage_records import CURSOR_PATTERN, DEFAULT_TAKE, MAX_TAKE, RELATION_FILTERS

__all__ = ["openapi_document"]

_MAX_COUNT: Final = 10**15
_JSV: Final = "text/jsv"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def _errors(schema: str, *statuses: int) -> dict[str, Any]:
    text = {
        400: "Invalid request: the message (and `field`) name the offending value",
        401: "No API key, or an invalid or revoked one",
        403: "The key lacks the scope, or the request names another tenant",
        404: "Not found",
        405: "Method not allowed",
        406: "The requested format is not served (json, jsv)",
        409: "The Idempotency-Key was first used for a different turn",
        413: "Request body too large",
        415: "The request body's Content-Type is not read",
        503: "The database is unavailable; retry later",
    }
    headers = {
        401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
        503: {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait"}},
        405: {"Allow": {"schema": {"type": "string"}, "description": "The allowed methods"}},
    }
    return {str(s): _json(_ref(schema), text[s], headers.get(s)) for s in statuses}


def _servicestack(*statuses: int) -> dict[str, Any]:
    out = _errors("ServiceStackError", *statuses)
    for response in out.values():
        response["content"][_JSV] = {"schema": {"type": "string"}}
    return out


def _query(name: str, schema: dict[str, Any], description: str, *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


#: Text the server takes: no NUL (PostgreSQL text cannot hold it).
_NO_NUL: Final = "^[^\\u0000]*$"
_TEXT: Final = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": _NO_NUL}
#: An ISO 8601 date-time (RFC 3339); a bare date (YYYY-MM-DD) is accepted too.
_MOMENT: Final = {"type": "string", "format": "date-time", "maxLength": 64}
_TURN_TOKENS: Final = {"type": "integer", "format": "int64", "minimum": 0, "maximum": MAX_TURN_TOKENS}


def _ai_metrics_parameters(modality: str) -> list[dict[str, Any]]:
    params = [
        _query("teamId", _TEXT, "The team: must be the API key's tenant.", required=True),
    ]
    if modality == "all":
        params.append(
            _query("metricType", {"type": "string", "enum": list(METRIC_TYPES)}, "Filter by modality.")
        )
    params += [
        _query("startDate", _MOMENT, "From this ISO 8601 date-time, or date (inclusive)."),
        _query("endDate", _MOMENT, "Up to this ISO 8601 date-time, or the end of this date (inclusive)."),
        _query(
            "requestDurationMin",
            {"type": "integer", "format": "int64", "minimum": 0, "maximum": MAX_DURATION_MS},
            "Minimum request duration (ms).",
        ),
        _query(
            "requestDurationMax",
            {"type": "integer", "format": "int64", "minimum": 0, "maximum": MAX_DURATION_MS},
            "Maximum request duration (ms).",
        ),
        _query(
            "totalCostMin", {"type": "number", "minimum": 0, "maximum": MAX_TOTAL_COST}, "Minimum cost ($)."
        ),
        _query(
            "totalCostMax", {"type": "number", "minimum": 0, "maximum": MAX_TOTAL_COST}, "Maximum cost ($)."
        ),
        _query("transactionId", _TEXT, "Exact transaction (request) id."),
        _query("traceId", _TEXT, "Exact trace id: the app's tokenscale.meta.trace_id, else the OTLP one."),
        _query("traceType", _TEXT, "Trace type; 'unknown' for metrics without one."),
        _query("organizationName", _TEXT, "Consuming organization name."),
        _query("subscriberId", _TEXT, "Subscriber (user) id."),
        _query("subscriberEmail", _TEXT, "Subscriber (user) email (case-insensitive)."),
        _query("subscriptionId", _TEXT, "Subscription id."),
        _query("productId", _TEXT, "Product id."),
        _query("agent", _TEXT, "Agent (tool) name, e.g. claude_code (case-insensitive)."),
        _query("provider", _TEXT, "AI provider (case-insensitive)."),
        _query("model", _TEXT, "AI model (case-insensitive)."),
        _query("modelSource", _TEXT, "Model source (routing layer)."),
        _query("errorReason", _TEXT, "Error reason (error.type)."),
        _query("operationType", {"type": "string", "enum": list(OPERATION_TYPES)}, "Operation type."),
        _query(
            "environment",
            {"type": "string", "minLength": 1, "maxLength": 50, "pattern": _NO_NUL},
            "Deployment environment.",
        ),
        _query("billingSkipped", {"type": "boolean"}, "Whether billing was skipped."),
        _query(
            "includeCodingAssistants",
            {"type": "boolean", "default": False},
            "Include coding assistant completions (Claude Code, Gemini CLI, Codex, ...).",
        ),
        _query("page", {"type": "integer", "minimum": 0, "maximum": MAX_PAGE, "default": 0}, "0-based page."),
        _query(
            "size",
            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE},
            "Page size.",
        ),
        {
            "name": "sort",
            "in": "query",
            "required": False,
            "style": "form",
            "explode": True,
            "schema": {
                "type": "array",
                "items": {"type": "string", "maxLength": 500, "pattern": SORT_PATTERN},
                "default": ["requestTime,DESC"],
            },
            "description": "property,(asc|desc); repeatable. Properties: "
            + ", ".join(SORT_PROPERTIES)
            + "; aliases: "
            + ", ".join(f"{alias} ({prop})" for alias, prop in SORT_ALIASES.items()),
        },
    ]
    return params


_METRIC_SCHEMAS: Final = {
    "all": "AiMetric",
    "completions": "AiCompletionMetric",
    "audio": "AiAudioMetric",
    "video": "AiVideoMetric",
    "images": "AiImageMetric",
}


def _ai_metric_schema(modality: str) -> dict[str, Any]:
    string = _nullable({"type": "string"})
    properties: dict[str, Any] = {
        "id": {"type": "string"},
        "metricType": {"type": "string", "enum": list(METRIC_TYPES)},
        "transactionId": string,
        "traceId": string,
        "traceType": string,
        "requestTime": {"type": "string", "format": "date-time"},
        "requestDuration": _nullable({"type": "integer"}),
        "model": string,
        "provider": string,
        "agent": {"type": "string"},
        "operationType": {"type": "string", "enum": list(OPERATION_TYPES)},
        "environment": string,
        "subscriber": {
            "type": "object",
            "properties": {"id": string, "email": string},
            "required": ["id", "email"],
        },
        "organizationName": string,
        "subscriptionId": string,
        "productId": string,
        "modelSource": string,
        "errorReason": string,
        "totalCost": _nullable({"type": "number"}),
        "billingSkipped": {"type": "boolean"},
        "isCodingAssistant": {"type": "boolean"},
    }
    required = ["id", "metricType", "requestTime", "agent", "operationType", "subscriber", "billingSkipped"]
    if modality != "all":
        for name in (
            "inputTokenCount",
            "outputTokenCount",
            "reasoningTokenCount",
            "cacheCreationTokenCount",
            "cacheReadTokenCount",
            "totalTokenCount",
        ):
            properties[name] = {"type": "integer", "minimum": 0}
            required.append(name)
    for name, _key, kind in MODALITY_FIELDS.get(modality, ()):
        schema: dict[str, Any] = {"type": "string"} if kind is str else {"type": "number", "minimum": 0}
        if kind is int:
            schema = {"type": "integer", "minimum": 0}
        properties[name] = _nullable(schema)
        required.append(name)
    return {"type": "object", "properties": properties, "required": required}


def _paged_schema(modality: str) -> dict[str, Any]:
    item = _METRIC_SCHEMAS[modality]
    return {
        "type": "object",
        "required": ["_embedded", "page"],
        "properties": {
            "_embedded": {
                "type": "object",
                "properties": {COLLECTIONS[modality]: {"type": "array", "items": _ref(item)}},
                "required": [COLLECTIONS[modality]],
            },
            "_links": {"type": "object", "additionalProperties": {"type": "object"}},
            "page": _ref("PageMetadata"),
        },
    }


def _tool_metric_input() -> dict[str, Any]:
    properties: dict[str, Any] = {
        "email": {
            "type": "string",
            "maxLength": 320,
            "pattern": EMAIL_PATTERN.replace("@]", "@\\u0000]"),
            "description": "User email.",
        },
        "date": {
            "type": "string",
            "format": "date",
            "pattern": r"^\d{4}-\d{2}-\d{2}$",
            "description": "YYYY-MM-DD.",
        },
        "is_active": {"type": "boolean"},
        "tool": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": _NO_NUL},
        "metrics": _nullable(
            {
                "type": "object",
                "additionalProperties": _ref("JsonValue"),
                "description": "Usage data object (free-form JSON that PostgreSQL's jsonb stores: no NUL).",
            }
        ),
    }
    for name in COUNT_FIELDS:
        properties[name] = _nullable({"type": "integer", "minimum": 0, "maximum": _MAX_COUNT})
    return {"type": "object", "required": ["email", "date", "is_active", "tool"], "properties": properties}


def _tool_metric_record() -> dict[str, Any]:
    properties: dict[str, Any] = {
        "id": {"type": "string", "format": "uuid"},
        "email": {"type": "string"},
        "date": {"type": "string", "format": "date"},
        "is_active": {"type": "boolean"},
        "tool": {"type": "string"},
        "metrics": _nullable({"type": "object"}),
    }
    for name in COUNT_FIELDS:
        properties[name] = _nullable({"type": "integer", "minimum": 0})
    return {
        "type": "object",
        "required": ["id", "email", "date", "is_active", "tool", "metrics", *COUNT_FIELDS],
        "properties": properties,
    }


def _usage_record() -> dict[str, Any]:
    properties: dict[str, Any] = {
        "id": {"type": "string"},
        "createdAt": {"type": "integer", "description": "ms since the epoch"},
        "updatedAt": {"type": "integer"},
        "type": {"type": "string"},
        "count": {"type": "integer", "minimum": 0},
        "meta": {"type": "object"},
    }
    for name in RELATION_FILTERS:
        properties[name] = {"type": "string"}
    return {
        "type": "object",
        "required": ["id", "createdAt", "updatedAt", "type", "count", "meta"],
        "properties": properties,
    }


def _series() -> dict[str, Any]:
    point = {
        "type": "array",
        "minItems": 90,
        "maxItems": 90,
        "items": {
            "type": "object",
            "required": ["date", "total"],
            "properties": {
                "date": {"type": "integer", "description": "midnight UTC, ms since the epoch"},
                "total": {"type": "integer", "minimum": 0},
            },
        },
    }
    return {
        "type": "object",
        "required": ["tokens", "conversations", "messages"],
        "properties": {"tokens": point, "conversations": point, "messages": point},
    }


def _budget_status() -> dict[str, Any]:
    return {
        "type": "object",
        "required": [
            "CompanyId",
            "TokensUsed",
            "TokenLimit",
            "TokensRemaining",
            "IsWithinBudget",
            "WindowDays",
        ],
        "properties": {
            "CompanyId": {"type": "string", "format": "uuid", "description": "The company's UUID."},
            "TokensUsed": {"type": "integer", "format": "int64", "minimum": 0},
            "TokenLimit": _nullable(
                {
                    "type": "integer",
                    "format": "int32",
                    "minimum": 0,
                    "maximum": MAX_TOKEN_LIMIT,
                    "description": "null: the company has no budget (unlimited).",
                }
            ),
            "TokensRemaining": _nullable({"type": "integer", "format": "int64", "minimum": 0}),
            "IsWithinBudget": {"type": "boolean"},
            "WindowDays": {"type": "integer", "format": "int32", "minimum": 1},
            "ResponseStatus": _nullable(_ref("ResponseStatus")),
        },
    }


#: The routes of RecordAiChatUsage and the budget check, with the format their path fixes.
_RECORD_ROUTES: Final = (
    ("/assistant/ai-chat/usage", None),
    ("/assistant/ai-chat/usage.json", "json"),
    ("/assistant/ai-chat/usage.jsv", "jsv"),
    ("/json/reply/RecordAiChatUsage", "json"),
    ("/jsv/reply/RecordAiChatUsage", "jsv"),
    ("/api/RecordAiChatUsage", None),
    ("/api/assistant/ai-chat/usage", None),
)
_CHECK_ROUTES: Final = (
    ("/api/budgets/check", None),
    ("/api/budgets/check.json", "json"),
    ("/api/budgets/check.jsv", "jsv"),
)
_FORMAT_PARAMETER: Final = {
    "name": "format",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "pattern": "^([jJ][sS][oO][nN]|[jJ][sS][vV])$"},
    "description": "Response format (ServiceStack's ?format=); the path's suffix wins.",
}


def _budget_answer(fmt: str | None, description: str) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if fmt in (None, "json"):
        content["application/json"] = {"schema": _ref("AiChatUsageResponse")}
    if fmt in (None, "jsv"):
        content[_JSV] = {"schema": {"type": "string"}}
    return {"description": description, "content": content}


def _record_chat_usage(path: str, fmt: str | None) -> dict[str, Any]:
    suffix = path.strip("/").replace("/", "_").replace(".", "_").replace("-", "_")
    return {
        "operationId": "recordAiChatUsage" if fmt is None and path == "/assistant/ai-chat/usage" else suffix,
        "summary": "Record a chat turn's tokens against the company's rolling-window budget",
        "parameters": [
            _query(
                "CompanyId", {**_TEXT, "minLength": 0}, "The company's UUID (or name), when not in the body."
            ),
            *([_FORMAT_PARAMETER] if fmt is None else []),
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY_CHARS},
                "description": "A retried turn with the same key is recorded once (else X-Request-Id).",
            },
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _ref("AiChatUsageRequest")},
                "application/x-www-form-urlencoded": {"schema": _ref("AiChatUsageRequest")},
            },
            "description": "JSON or form fields; JSV (text/jsv) bodies are read too (see docs/api.md).",
        },
        "responses": {
            "200": _budget_answer(fmt, "Usage in the window, after this turn"),
            **_servicestack(400, 401, 403, 406, 409, 413, 415, 503),
        },
    }


def _check_budget(path: str, fmt: str | None) -> dict[str, Any]:
    return {
        "operationId": "checkBudget" if fmt is None else f"checkBudget_{fmt}",
        "summary": "The company's budget and its usage in the current window (read-only)",
        "parameters": [
            _query("company_id", {**_TEXT, "minLength": 0}, "The company's UUID or name."),
            *([_FORMAT_PARAMETER] if fmt is None else []),
        ],
        "responses": {
            "200": _budget_answer(fmt, "Usage in the window"),
            **_servicestack(400, 401, 403, 406, 503),
        },
    }


def _components() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "ToolMetricInput": _tool_metric_input(),
        "ToolMetricRecord": _tool_metric_record(),
        "PushAllRequest": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_RECORDS,
                    "items": _ref("ToolMetricInput"),
                }
            },
        },
        "DxError": {
            "type": "object",
            "required": ["ok", "error", "message"],
            "properties": {
                "ok": {"type": "boolean", "enum": [False]},
                "error": {"type": "string"},
                "message": {"type": "string"},
                "index": {"type": "integer", "minimum": 0},
                "field": {"type": "string"},
            },
        },
        "SpringError": {
            "type": "object",
            "required": ["timestamp", "status", "error", "message", "path"],
            "properties": {
                "timestamp": {"type": "string"},
                "status": {"type": "integer"},
                "error": {"type": "string"},
                "message": {"type": "string"},
                "path": {"type": "string"},
                "field": {"type": "string"},
            },
        },
        **{name: _ai_metric_schema(modality) for modality, name in _METRIC_SCHEMAS.items()},
        "PageMetadata": {
            "type": "object",
            "required": ["size", "totalElements", "totalPages", "number"],
            "properties": {
                "size": {"type": "integer", "minimum": 1},
                "totalElements": {"type": "integer", "minimum": 0},
                "totalPages": {"type": "integer", "minimum": 0},
                "number": {"type": "integer", "minimum": 0},
            },
        },
        # Free-form JSON as jsonb stores it: any value, but no NUL in text.
        "JsonValue": {
            "anyOf": [
                {"type": "string", "pattern": _NO_NUL, "nullable": True},
                {"type": "number", "minimum": -1e300, "maximum": 1e300},
                {"type": "boolean"},
                {"type": "array", "items": _ref("JsonValue")},
                {"type": "object", "additionalProperties": _ref("JsonValue")},
            ]
        },
        "AiChatUsageRequest": {
            "type": "object",
            "required": ["TokensUsed"],
            "properties": {
                "CompanyId": _nullable(
                    {
                        "type": "string",
                        "maxLength": 255,
                        "pattern": _NO_NUL,
                        "description": "The company's UUID (or name); defaults to the key's.",
                    }
                ),
                "TokensUsed": {
                    **_TURN_TOKENS,
                    "description": "Required (ServiceStack also reads it from the query).",
                },
            },
        },
        "AiChatUsageResponse": _budget_status(),
        "ResponseStatus": {
            "type": "object",
            "required": ["ErrorCode", "Message", "Errors"],
            "properties": {
                "ErrorCode": {"type": "string"},
                "Message": {"type": "string"},
                "StackTrace": {"type": "string"},
                "Errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["ErrorCode", "FieldName", "Message"],
                        "properties": {
                            "ErrorCode": {"type": "string"},
                            "FieldName": {"type": "string"},
                            "Message": {"type": "string"},
                            "Meta": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                    },
                },
                "Meta": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "ServiceStackError": {
            "type": "object",
            "required": ["ResponseStatus"],
            "properties": {"ResponseStatus": _ref("ResponseStatus")},
        },
        "UsageRecord": _usage_record(),
        "UsageRecordList": {
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": {"type": "array", "items": _ref("UsageRecord")},
                "cursor": {"type": "string", "description": "Present while more records follow."},
            },
        },
        "UsageSeries": _series(),
    }
    return {
        "schemas": {**schemas, **budget_schemas()},
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API key (tsk_...)."},
            "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
        },
    }


def _paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {"description": "OpenAPI 3.0 document", "content": {"application/json": {}}}
                },
            }
        },
        "/api/aiToolMetrics.push": {
            "post": {
                "operationId": "aiToolMetricsPush",
                "summary": "Add (or replace) one daily usage record of a bespoke AI tool",
                "description": "Pushing the same (email, date, tool) again replaces that day's record.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ToolMetricInput")}},
                },
                "responses": {
                    "200": _json(_ref("ToolMetricRecord"), "The stored record"),
                    **_errors("DxError", 400, 401, 403, 413, 503),
                },
            }
        },
        "/api/aiToolMetrics.pushAll": {
            "post": {
                "operationId": "aiToolMetricsPushAll",
                "summary": "Add (or replace) several daily usage records: all stored, or none",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("PushAllRequest")}},
                },
                "responses": {
                    "200": _json({"type": "array", "items": _ref("ToolMetricRecord")}, "The stored records"),
                    **_errors("DxError", 400, 401, 403, 413, 503),
                },
            }
        },
        **{path: {"post": _record_chat_usage(path, fmt)} for path, fmt in _RECORD_ROUTES},
        **{path: {"get": _check_budget(path, fmt)} for path, fmt in _CHECK_ROUTES},
        "/api/v1/usage/list": {
            "get": {
                "operationId": "listUsageRecords",
                "summary": "Usage records, cursor-paginated",
                "parameters": [
                    _query(
                        "cursor",
                        {"type": "string", "pattern": CURSOR_PATTERN},
                        "From a previous response (opaque).",
                    ),
                    _query(
                        "order", {"type": "string", "enum": ["asc", "desc"], "default": "desc"}, "Direction."
                    ),
                    _query(
                        "take",
                        {"type": "integer", "minimum": 1, "maximum": MAX_TAKE, "default": DEFAULT_TAKE},
                        "Page size.",
                    ),
                    _query("type", _TEXT, "Usage type (the GenAI operation)."),
                    *[_query(name, _TEXT, f"Filter by {name}.") for name in RELATION_FILTERS],
                    {
                        "name": "meta",
                        "in": "query",
                        "required": False,
                        "style": "deepObject",
                        "explode": True,
                        "schema": {
                            "type": "object",
                            "additionalProperties": {"type": "string", "maxLength": 1000},
                        },
                        "description": "meta[key]=value: records whose metadata has that value; a key is "
                        "any 1-200 characters without control characters (spaces included).",
                    },
                ],
                "responses": {
                    "200": _json(_ref("UsageRecordList"), "A page of usage records"),
                    **_errors("SpringError", 400, 401, 403, 503),
                },
            },
        },
        "/api/v1/usage/series/fetch": {
            "get": {
                "operationId": "fetchUsageSeries",
                "summary": "Daily tokens, new conversations and messages over the last 90 days",
                "responses": {
                    "200": _json(_ref("UsageSeries"), "Three series of 90 daily points"),
                    **_errors("SpringError", 401, 403, 503),
                },
            }
        },
    }
    for modality in MODALITIES:
        path = "/v2/api/sources/metrics/ai" + ("" if modality == "all" else f"/{modality}")
        for base in ("", "/profitstream"):
            page = _json(_paged_schema(modality), "One page (Spring HATEOAS paged model)")
            page["content"]["application/hal+json"] = page["content"]["application/json"]
            paths[base + path] = {
                "get": {
                    "operationId": f"listAiMetrics{modality.capitalize()}" + ("Profitstream" if base else ""),
                    "summary": f"AI metrics ({modality}), paged"
                    + (" (Revenium's base path)" if base else ""),
                    "parameters": _ai_metrics_parameters(modality),
                    "responses": {
                        "200": page,
                        **_errors("SpringError", 400, 401, 403, 503),
                    },
                }
            }
    return paths


def _dashboard_paths() -> dict[str, Any]:
    from tokenscale.dashboard._openapi import dashboard_paths  # noqa: PLC0415 - served beside the API

    return dashboard_paths()


def openapi_document() -> dict[str, Any]:
    """The whole document (a new dict on each call)."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "tokenscale usage API",
            "version": __version__,
            "description": "Push, query and budget AI usage. See docs/api.md.",
        },
        "security": [{"bearerAuth": []}, {"apiKeyHeader": []}],
        "paths": {**_paths(), **budget_paths(), **_dashboard_paths()},
        "components": _components(),
    }
