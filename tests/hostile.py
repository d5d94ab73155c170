"""Builders of hostile OTLP exports (as OTLP/JSON documents) and senders over every transport."""

from __future__ import annotations

import http.client
import json
import secrets
from collections.abc import Iterator
from typing import Any

import grpc

from otlp_clients import GRPC_METHODS, RESPONSES
from tokenscale.otlp import decode_request

__all__ = [
    "Sender",
    "anyvalue",
    "claude_cost_metric",
    "kv",
    "semconv_span",
    "spans_export",
]

#: 2026-01-15T12:00:00Z, well inside the accepted time range.
BASE_NS = 1_768_478_400 * 10**9


def anyvalue(value: Any) -> dict[str, Any]:
    """The OTLP/JSON ``AnyValue`` of a Python value (lists as arrays, dicts as key-value lists)."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [anyvalue(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": [kv(k, v) for k, v in value.items()]}}
    return {"stringValue": value}


def kv(key: str, value: Any) -> dict[str, Any]:
    return {"key": key, "value": anyvalue(value)}


def semconv_span(
    attributes: dict[str, Any], *, time_ns: int = BASE_NS, span_id: str | None = None
) -> dict[str, Any]:
    """A GenAI semantic-convention span carrying one request's usage (given attributes win)."""
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 20,
    }
    attrs.update(attributes)
    return {
        "traceId": secrets.token_hex(16),
        "spanId": span_id or secrets.token_hex(8),
        "name": "chat gpt-4o",
        "kind": 3,
        "startTimeUnixNano": str(time_ns - 1_000_000_000),
        "endTimeUnixNano": str(time_ns),
        "attributes": [kv(k, v) for k, v in attrs.items()],
    }


def spans_export(spans: list[dict[str, Any]], resource: dict[str, Any] | None = None) -> dict[str, Any]:
    res = {"service.name": "hostile-app", **(resource or {})}
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [kv(k, v) for k, v in res.items()]},
                "scopeSpans": [{"scope": {"name": "hostile"}, "spans": spans}],
            }
        ]
    }


def claude_cost_metric(cost: float, session: str, *, time_ns: int = BASE_NS) -> dict[str, Any]:
    """A Claude Code ``claude_code.cost.usage`` delta point of ``cost`` USD."""
    return {
        "resourceMetrics": [
            {
                "resource": {"attributes": [kv("service.name", "claude-code")]},
                "scopeMetrics": [
                    {
                        "scope": {"name": "com.anthropic.claude_code"},
                        "metrics": [
                            {
                                "name": "claude_code.cost.usage",
                                "unit": "USD",
                                "sum": {
                                    "aggregationTemporality": 1,
                                    "isMonotonic": True,
                                    "dataPoints": [
                                        {
                                            "startTimeUnixNano": str(time_ns - 60 * 10**9),
                                            "timeUnixNano": str(time_ns),
                                            "asDouble": cost,
                                            "attributes": [
                                                kv("session.id", session),
                                                kv("model", "claude-sonnet-4-5"),
                                            ],
                                        }
                                    ],
                                },
                            }
                        ],
                    }
                ],
            }
        ]
    }


def to_protobuf(signal: str, document: dict[str, Any]) -> bytes:
    """The protobuf encoding of an OTLP/JSON document (decoded the receiver's way)."""
    message = decode_request(signal, json.dumps(document).encode(), "application/json")  # type: ignore[arg-type]
    data: bytes = message.SerializeToString()
    return data


class Sender:
    """Sends exports over one kept-alive HTTP connection and one gRPC channel; answers as (code, body)."""

    def __init__(self, grpc_port: int, http_port: int, headers: dict[str, str] | None = None) -> None:
        self.http_port = http_port
        self.headers = dict(headers or {})
        self._http: http.client.HTTPConnection | None = None
        self._channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        self._calls = {
            signal: self._channel.unary_unary(method, response_deserializer=RESPONSES[signal].FromString)
            for signal, method in GRPC_METHODS.items()
        }
        self.sent = 0

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        self._channel.close()

    def post(self, signal: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        """POST to ``/v1/<signal>``, reconnecting once if the server closed the kept-alive connection."""
        self.sent += 1
        for attempt in (0, 1):
            if self._http is None:
                self._http = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
            try:
                self._http.request(
                    "POST", f"/v1/{signal}", body=body, headers={**self.headers, "Content-Type": content_type}
                )
                response = self._http.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._http.close()
                self._http = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def grpc(self, signal: str, body: bytes) -> tuple[grpc.StatusCode, Any]:
        """The unary ``Export`` call: (OK, response) or (status code, details)."""
        self.sent += 1
        try:
            response = self._calls[signal](
                body, timeout=30, metadata=tuple((k.lower(), v) for k, v in self.headers.items())
            )
        except grpc.RpcError as exc:
            return exc.code(), exc.details()
        return grpc.StatusCode.OK, response

    def every_transport(self, signal: str, document: dict[str, Any]) -> Iterator[tuple[str, Any, Any]]:
        """Send ``document`` as OTLP/JSON, OTLP/HTTP protobuf and OTLP/gRPC: (transport, code, answer).

        A document protobuf cannot carry (a lone surrogate) goes over JSON only.
        """
        raw = json.dumps(document).encode()
        yield ("json", *self.post(signal, raw, "application/json"))
        try:
            body = to_protobuf(signal, document)
        except Exception:  # not representable in protobuf: JSON only
            return
        yield ("protobuf", *self.post(signal, body, "application/x-protobuf"))
        yield ("grpc", *self.grpc(signal, body))
