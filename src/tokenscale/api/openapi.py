"""The OpenAPI 3.0 document of the HTTP API (served at ``/openapi.json``), written by hand to match it."""

from __future__ import annotations

from typing import Any, Final

from tokenscale import __version__
from tokenscale.api.ai_metrics import (
    COLLECTIONS,
    DEFAULT_PAGE_SIZE,
    MAX_DURATION_MS,
    MAX_PAGE,
    MAX_PAGE_SIZE,
    MAX_TOTAL_COST,
    METRIC_TYPES,
    MODALITIES,
    OPERATION_TYPES,
    SORT_PROPERTIES,
)
from tokenscale.api.budgets import MAX_TURN_TOKENS
from tokenscale.api.tool_metrics import COUNT_FIELDS, EMAIL_PATTERN, MAX_RECORDS
from tokenscale.api.usage_records import DEFAULT_TAKE, MAX_TAKE, RELATION_FILTERS

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
        404: "The company has no budget",
        405: "Method not allowed",
        413: "Request body too large",
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


_TEXT: Final = {"type": "string", "minLength": 1, "maxLength": 255}
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
        _query("startDate", {"type": "string", "maxLength": 64}, "From this ISO 8601 date/time (inclusive)."),
        _query("endDate", {"type": "string", "maxLength": 64}, "Up to this ISO 8601 date/time (inclusive)."),
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
        _query("traceId", _TEXT, "Exact trace id (attribute tokenscale.meta.trace_id)."),
        _query("traceType", _TEXT, "Trace type; 'unknown' for metrics without one."),
        _query("organizationName", _TEXT, "Consuming organization name."),
        _query("subscriberId", _TEXT, "Subscriber (user) id."),
        _query("subscriberEmail", _TEXT, "Subscriber (user) email."),
        _query("subscriptionId", _TEXT, "Subscription id."),
        _query("productId", _TEXT, "Product id."),
        _query("agent", _TEXT, "Agent (tool) name, e.g. claude_code."),
        _query("provider", _TEXT, "AI provider."),
        _query("model", _TEXT, "AI model."),
        _query("modelSource", _TEXT, "Model source (routing layer)."),
        _query("errorReason", _TEXT, "Error reason (error.type)."),
        _query("operationType", {"type": "string", "enum": list(OPERATION_TYPES)}, "Operation type."),
        _query("environment", {"type": "string", "minLength": 1, "maxLength": 50}, "Deployment environment."),
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
                "items": {"type": "string", "maxLength": 500},
                "default": ["requestTime,DESC"],
            },
            "description": "property,(asc|desc); repeatable. Properties: " + ", ".join(SORT_PROPERTIES),
        },
    ]
    return params


def _ai_metric_schema(completions: bool) -> dict[str, Any]:
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
    if completions:
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
    return {"type": "object", "properties": properties, "required": required}


def _paged_schema(modality: str) -> dict[str, Any]:
    item = "AiCompletionMetric" if modality == "completions" else "AiMetric"
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
        "email": {"type": "string", "maxLength": 320, "pattern": EMAIL_PATTERN, "description": "User email."},
        "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$", "description": "YYYY-MM-DD."},
        "is_active": {"type": "boolean"},
        "tool": {"type": "string", "minLength": 1, "maxLength": 255},
        "metrics": _nullable({"type": "object", "description": "Usage data object (free-form JSON)."}),
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
            "CompanyId": {"type": "string"},
            "TokensUsed": {"type": "integer", "minimum": 0},
            "TokenLimit": {"type": "integer", "minimum": 0},
            "TokensRemaining": {"type": "integer", "minimum": 0},
            "IsWithinBudget": {"type": "boolean"},
            "WindowDays": {"type": "integer", "minimum": 1},
            "ResponseStatus": _nullable(_ref("ResponseStatus")),
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
        "AiMetric": _ai_metric_schema(completions=False),
        "AiCompletionMetric": _ai_metric_schema(completions=True),
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
        "AiChatUsageRequest": {
            "type": "object",
            "properties": {
                "CompanyId": _nullable({"type": "string", "description": "Defaults to the key's tenant."}),
                "TokensUsed": {**_TURN_TOKENS, "description": "Required (here or in the query)."},
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
        "schemas": schemas,
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
        "/assistant/ai-chat/usage": {
            "post": {
                "operationId": "recordAiChatUsage",
                "summary": "Record a chat turn's tokens against the company's rolling-window budget",
                "parameters": [
                    _query(
                        "CompanyId", {"type": "string", "maxLength": 255}, "Defaults to the key's tenant."
                    ),
                    _query("TokensUsed", _TURN_TOKENS, "When not in the body."),
                    _query("format", {"type": "string", "enum": ["json", "jsv"]}, "Response format."),
                ],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {"schema": _ref("AiChatUsageRequest")},
                        _JSV: {"schema": {"type": "string"}},
                    },
                },
                "responses": {
                    "200": {
                        "description": "Usage in the window, after this turn",
                        "content": {
                            "application/json": {"schema": _ref("AiChatUsageResponse")},
                            _JSV: {"schema": {"type": "string"}},
                        },
                    },
                    **_servicestack(400, 401, 403, 404, 413, 503),
                },
            }
        },
        "/api/budgets/check": {
            "get": {
                "operationId": "checkBudget",
                "summary": "The company's budget and its usage in the current window (read-only)",
                "parameters": [
                    _query(
                        "company_id", {"type": "string", "maxLength": 255}, "Defaults to the key's tenant."
                    ),
                    _query("format", {"type": "string", "enum": ["json", "jsv"]}, "Response format."),
                ],
                "responses": {
                    "200": {
                        "description": "Usage in the window",
                        "content": {
                            "application/json": {"schema": _ref("AiChatUsageResponse")},
                            _JSV: {"schema": {"type": "string"}},
                        },
                    },
                    **_servicestack(400, 401, 403, 404, 503),
                },
            }
        },
        "/api/v1/usage/list": {
            "get": {
                "operationId": "listUsageRecords",
                "summary": "Usage records, cursor-paginated",
                "parameters": [
                    _query("cursor", {"type": "string", "maxLength": 200}, "From a previous response."),
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
                        "description": "meta[key]=value: records whose metadata has that value.",
                    },
                ],
                "responses": {
                    "200": _json(_ref("UsageRecordList"), "A page of usage records"),
                    **_errors("SpringError", 400, 401, 403, 503),
                },
            },
            **{
                method: {
                    "operationId": f"{method}UsageRecords",
                    "summary": "Usage records are immutable",
                    "security": [],
                    "responses": _errors("SpringError", 405),
                }
                for method in ("post", "put", "patch", "delete")
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
        paths[path] = {
            "get": {
                "operationId": f"listAiMetrics{modality.capitalize()}",
                "summary": f"AI metrics ({modality}), paged",
                "parameters": _ai_metrics_parameters(modality),
                "responses": {
                    "200": _json(_paged_schema(modality), "One page (Spring HATEOAS paged model)"),
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
        "paths": {**_paths(), **_dashboard_paths()},
        "components": _components(),
    }
