"""OTLP wire formats: decoding export requests and encoding their responses. Pure, no I/O."""

from __future__ import annotations

from tokenscale.otlp.decode import (
    JSON_CONTENT_TYPE,
    PROTOBUF_CONTENT_TYPE,
    REJECTED_FIELDS,
    REQUEST_TYPES,
    RESPONSE_TYPES,
    SUPPORTED_CONTENT_TYPES,
    PayloadTooLargeError,
    decode_request,
    decompress,
    encode_response,
    media_type,
    response_to_json,
)

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
