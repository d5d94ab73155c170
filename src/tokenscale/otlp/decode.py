"""Decoding of OTLP export requests (protobuf or OTLP/JSON, maybe gzip) and encoding of responses."""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import Iterator
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tokenscale.errors import PermanentError
from tokenscale.mapping.model import Signal

__all__ = [
    "JSON_CONTENT_TYPE",
    "PROTOBUF_CONTENT_TYPE",
    "REJECTED_FIELDS",
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "SUPPORTED_CONTENT_TYPES",
    "PayloadTooLargeError",
    "decode_request",
    "decompress",
    "encode_response",
    "media_type",
    "response_to_json",
]

PROTOBUF_CONTENT_TYPE = "application/x-protobuf"
JSON_CONTENT_TYPE = "application/json"
SUPPORTED_CONTENT_TYPES: tuple[str, ...] = (PROTOBUF_CONTENT_TYPE, JSON_CONTENT_TYPE)

#: The ``Export*ServiceRequest`` message of each signal.
REQUEST_TYPES: dict[Signal, type[Any]] = {
    "metrics": ExportMetricsServiceRequest,
    "traces": ExportTraceServiceRequest,
    "logs": ExportLogsServiceRequest,
}

#: The ``Export*ServiceResponse`` message of each signal.
RESPONSE_TYPES: dict[Signal, type[Any]] = {
    "metrics": ExportMetricsServiceResponse,
    "traces": ExportTraceServiceResponse,
    "logs": ExportLogsServiceResponse,
}

#: The counter of ``Export*PartialSuccess`` that holds the number of rejected items.
REJECTED_FIELDS: dict[Signal, str] = {
    "metrics": "rejected_data_points",
    "traces": "rejected_spans",
    "logs": "rejected_log_records",
}

# OTLP/JSON (spec, "JSON Protobuf Encoding"): ids are hex, not base64 as the proto3 JSON mapping
# would have them. Both the JSON name and (leniently) the proto field name are accepted.
_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
_DATA_KINDS = ("gauge", "sum", "histogram", "exponentialHistogram", "exponential_histogram", "summary")
_GZIP_WBITS = 16 + zlib.MAX_WBITS
# A JSON escape of a UTF-16 surrogate: the only way a JSON body can carry a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class PayloadTooLargeError(PermanentError):
    """The (decompressed) request body exceeds the configured limit (HTTP 413)."""


def media_type(content_type: str) -> str:
    """The bare, lower-case media type of a ``Content-Type`` value (parameters dropped)."""
    return content_type.partition(";")[0].strip().lower()


def decompress(body: bytes, content_encoding: str, max_bytes: int | None = None) -> bytes:
    """Undo ``Content-Encoding`` (``gzip``, ``identity`` or none), refusing output beyond ``max_bytes``."""
    # A list of codings is applied in order, so it is undone from the last one (RFC 9110, 8.4).
    for coding in reversed([c.strip().lower() for c in content_encoding.split(",")]):
        if coding in ("", "identity"):
            continue
        if coding not in ("gzip", "x-gzip"):
            raise PermanentError(f"unsupported Content-Encoding {coding!r}; supported: gzip, identity")
        body = _gunzip(body, max_bytes)
    if max_bytes is not None and len(body) > max_bytes:
        raise PayloadTooLargeError(
            f"request body of {len(body)} bytes exceeds the limit of {max_bytes} bytes"
        )
    return body


def _gunzip(data: bytes, max_bytes: int | None) -> bytes:
    """Decompress every gzip member of ``data``, stopping as soon as the output passes ``max_bytes``."""
    limit = -1 if max_bytes is None else max_bytes + 1
    out: list[bytes] = []
    size = 0
    try:
        while True:
            inflater = zlib.decompressobj(_GZIP_WBITS)
            chunk = inflater.decompress(data, 0 if limit < 0 else limit - size)
            out.append(chunk)
            size += len(chunk)
            if limit >= 0 and size >= limit:
                raise PayloadTooLargeError(
                    f"gzip-decompressed request body exceeds the limit of {max_bytes} bytes"
                )
            if not inflater.eof:
                raise PermanentError("invalid gzip body: truncated gzip stream")
            data = inflater.unused_data
            if not data.strip(b"\0"):  # trailing zero padding after the last member is allowed
                return b"".join(out)
    except zlib.error as exc:
        raise PermanentError(f"invalid gzip body: {exc}") from None


def decode_request(
    signal: Signal,
    body: bytes,
    content_type: str,
    content_encoding: str = "",
    *,
    max_bytes: int | None = None,
) -> Any:
    """Decode the body of an OTLP export into the signal's ``Export*ServiceRequest``.

    ``content_type`` is ``application/x-protobuf`` or ``application/json`` (parameters ignored);
    ``content_encoding`` may be ``gzip``. ``max_bytes`` bounds the decompressed size. Anything
    malformed raises :class:`~tokenscale.errors.PermanentError` saying what was wrong.
    """
    message_type = REQUEST_TYPES[signal]
    body = decompress(body, content_encoding, max_bytes)
    kind = media_type(content_type)
    if kind == PROTOBUF_CONTENT_TYPE:
        try:
            return message_type.FromString(body)
        except DecodeError as exc:
            raise PermanentError(
                f"invalid protobuf {message_type.__name__} ({len(body)} bytes): {exc}"
            ) from None
    if kind == JSON_CONTENT_TYPE:
        return _decode_json(signal, message_type, body)
    raise PermanentError(
        f"unsupported content type {content_type!r}; supported: {', '.join(SUPPORTED_CONTENT_TYPES)}"
    )


def _decode_json(signal: Signal, message_type: type[Any], body: bytes) -> Any:
    """Parse an OTLP/JSON body: hex ids, 64-bit ints as numbers or strings, enums as ints or names."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise PermanentError(f"invalid JSON body: {exc}") from None
    if not isinstance(document, dict):
        raise PermanentError(f"OTLP/JSON body must be a JSON object, not {type(document).__name__}")
    if _SURROGATE_ESCAPE.search(body) is not None:
        _reject_lone_surrogates(document)
    for record in _id_bearing_records(signal, document):
        _hex_ids_to_base64(record)
    try:
        return json_format.ParseDict(document, message_type(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise PermanentError(f"invalid OTLP/JSON {message_type.__name__}: {exc}") from None


def _reject_lone_surrogates(value: Any) -> None:
    """Raise :class:`PermanentError` if a string (or key) of a decoded JSON document holds a lone
    UTF-16 surrogate (``"\\ud800"``): JSON allows the escape, but it is no Unicode text."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = value[exc.start].encode("utf-8", "backslashreplace").decode("ascii")
                raise PermanentError(
                    f"invalid JSON body: a string holds the lone UTF-16 surrogate {bad}, which is not text"
                ) from None
    elif isinstance(value, dict):
        for key, inner in value.items():
            _reject_lone_surrogates(key)
            _reject_lone_surrogates(inner)
    elif isinstance(value, list):
        for inner in value:
            _reject_lone_surrogates(inner)


def _id_bearing_records(signal: Signal, document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a request that carry trace/span ids: spans, links, log records, exemplars."""
    if signal == "traces":
        for scope in _nested(document, ("resourceSpans", "resource_spans"), ("scopeSpans", "scope_spans")):
            for span in _items(scope, "spans"):
                yield span
                yield from _items(span, "links")
    elif signal == "logs":
        for scope in _nested(document, ("resourceLogs", "resource_logs"), ("scopeLogs", "scope_logs")):
            yield from _items(scope, "logRecords", "log_records")
    else:
        for scope in _nested(
            document, ("resourceMetrics", "resource_metrics"), ("scopeMetrics", "scope_metrics")
        ):
            for metric in _items(scope, "metrics"):
                for kind in _DATA_KINDS:
                    data = metric.get(kind)
                    if isinstance(data, dict):
                        for point in _items(data, "dataPoints", "data_points"):
                            yield from _items(point, "exemplars")


def _nested(
    document: dict[str, Any], outer: tuple[str, str], inner: tuple[str, str]
) -> Iterator[dict[str, Any]]:
    """The ``scope*`` objects of every ``resource*`` object of a request."""
    for resource in _items(document, *outer):
        yield from _items(resource, *inner)


def _items(obj: dict[str, Any], *keys: str) -> Iterator[dict[str, Any]]:
    """The objects in the list under any of ``keys``; anything ill-typed is left for ParseDict to report."""
    for key in keys:
        items = obj.get(key)
        if isinstance(items, list):
            for item in items:
                if isinstance(item, dict):
                    yield item


def _hex_ids_to_base64(record: dict[str, Any]) -> None:
    """Rewrite the hex ids of one span/link/log record/exemplar into the base64 that ParseDict expects."""
    for key in _ID_KEYS:
        value = record.get(key)
        if isinstance(value, str) and value:
            if _HEX.fullmatch(value) is None:
                raise PermanentError(
                    f"invalid OTLP/JSON {key} {value[:80]!r}: trace and span ids must be hex strings"
                )
            record[key] = base64.b64encode(binascii.unhexlify(value)).decode("ascii")


def encode_response(signal: Signal, rejected: int, error_message: str) -> Any:
    """The ``Export*ServiceResponse`` of an export; ``partial_success`` is set only when it says something.

    Per the OTLP spec a message with zero rejected items is a warning, so it is passed on too.
    """
    response = RESPONSE_TYPES[signal]()
    if rejected or error_message:
        partial = response.partial_success
        setattr(partial, REJECTED_FIELDS[signal], rejected)
        partial.error_message = error_message
    return response


def response_to_json(message: Message) -> bytes:
    """The compact OTLP/JSON body of a response (or ``google.rpc.Status``) message."""
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":")).encode()
