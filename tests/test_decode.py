"""Decoding of OTLP request bodies, checked against real client captures and the OTLP/JSON rules."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from ground_truth import CAPTURES
from tokenscale.errors import PermanentError
from tokenscale.mapping.model import Signal
from tokenscale.otlp import (
    JSON_CONTENT_TYPE,
    PROTOBUF_CONTENT_TYPE,
    REQUEST_TYPES,
    PayloadTooLargeError,
    decode_request,
    encode_response,
    response_to_json,
)

RAW_BODIES = sorted([*CAPTURES.glob("*/*.raw.pb"), *CAPTURES.glob("*/*.raw.json")])

TRACE_ID = "5B8EFFF798038103D269B633813FC60C"
SPAN_ID = "eee19b7ec3c1b174"
PARENT_ID = "eee19b7ec3c1b173"


def signal_of(path: Path) -> Signal:
    signal = path.name.split("-", 1)[0]
    assert signal in ("metrics", "traces", "logs")
    return signal  # type: ignore[return-value]


def content_type_of(path: Path) -> str:
    return JSON_CONTENT_TYPE if path.name.endswith(".raw.json") else PROTOBUF_CONTENT_TYPE


def reference_of(path: Path) -> Any:
    """The capture's decoded ``*.json`` (protobuf JSON mapping, base64 ids), parsed strictly."""
    decoded = path.with_name(path.name.replace(".raw.pb", ".json").replace(".raw.json", ".json"))
    return json_format.Parse(decoded.read_text(), REQUEST_TYPES[signal_of(path)]())


def decode_json(signal: Signal, document: Any) -> Any:
    return decode_request(signal, json.dumps(document).encode(), JSON_CONTENT_TYPE)


def test_captures_are_present() -> None:
    assert len(RAW_BODIES) >= 40, f"no captures found under {CAPTURES}"
    assert any(p.name.endswith(".raw.json") for p in RAW_BODIES)


@pytest.mark.parametrize("path", RAW_BODIES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_raw_capture_decodes_to_the_decoded_capture(path: Path) -> None:
    message = decode_request(signal_of(path), path.read_bytes(), content_type_of(path))

    assert isinstance(message, REQUEST_TYPES[signal_of(path)])
    assert message == reference_of(path)


@pytest.mark.parametrize("path", RAW_BODIES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_gzipped_capture_decodes_like_the_plain_one(path: Path) -> None:
    body = path.read_bytes()
    plain = decode_request(signal_of(path), body, content_type_of(path))

    assert decode_request(signal_of(path), gzip.compress(body), content_type_of(path), "gzip") == plain


def test_json_capture_ids_are_hex_on_the_wire() -> None:
    body = json.loads((CAPTURES / "claude-httpjson" / "traces-0.raw.json").read_bytes())
    span = body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]

    message = decode_request(
        "traces", (CAPTURES / "claude-httpjson" / "traces-0.raw.json").read_bytes(), "application/json"
    )

    decoded = message.resource_spans[0].scope_spans[0].spans[0]
    assert decoded.trace_id == bytes.fromhex(span["traceId"])
    assert decoded.span_id == bytes.fromhex(span["spanId"])
    assert decoded.parent_span_id == bytes.fromhex(span["parentSpanId"])


def test_hex_span_and_link_ids() -> None:
    document = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": TRACE_ID,
                                "spanId": SPAN_ID,
                                "parentSpanId": PARENT_ID,
                                "name": "chat",
                                "links": [{"traceId": TRACE_ID.lower(), "spanId": PARENT_ID}],
                                "events": [{"name": "gen_ai.request.attempt", "timeUnixNano": "5"}],
                            }
                        ]
                    }
                ]
            }
        ]
    }

    span = decode_json("traces", document).resource_spans[0].scope_spans[0].spans[0]

    assert span.trace_id == bytes.fromhex(TRACE_ID)
    assert span.span_id == bytes.fromhex(SPAN_ID)
    assert span.parent_span_id == bytes.fromhex(PARENT_ID)
    assert span.links[0].trace_id == bytes.fromhex(TRACE_ID)
    assert span.links[0].span_id == bytes.fromhex(PARENT_ID)
    assert span.events[0].time_unix_nano == 5


def test_hex_log_record_ids_and_empty_ids() -> None:
    document = {
        "resourceLogs": [
            {
                "scopeLogs": [
                    {
                        "logRecords": [
                            {"traceId": TRACE_ID, "spanId": SPAN_ID, "body": {"stringValue": "x"}},
                            {"traceId": "", "spanId": "", "body": None},
                        ]
                    }
                ]
            }
        ]
    }

    records = decode_json("logs", document).resource_logs[0].scope_logs[0].log_records

    assert records[0].trace_id == bytes.fromhex(TRACE_ID)
    assert records[0].span_id == bytes.fromhex(SPAN_ID)
    assert records[1].trace_id == b""
    assert not records[1].HasField("body")


@pytest.mark.parametrize("kind", ["gauge", "sum", "histogram", "exponentialHistogram"])
def test_hex_exemplar_ids(kind: str) -> None:
    exemplar = {"traceId": TRACE_ID, "spanId": SPAN_ID, "asDouble": 1.5, "timeUnixNano": "7"}
    document = {
        "resourceMetrics": [
            {
                "scopeMetrics": [
                    {"metrics": [{"name": "m", kind: {"dataPoints": [{"exemplars": [exemplar]}]}}]}
                ]
            }
        ]
    }

    metric = decode_json("metrics", document).resource_metrics[0].scope_metrics[0].metrics[0]

    field = {"exponentialHistogram": "exponential_histogram"}.get(kind, kind)
    decoded = getattr(metric, field).data_points[0].exemplars[0]
    assert decoded.trace_id == bytes.fromhex(TRACE_ID)
    assert decoded.span_id == bytes.fromhex(SPAN_ID)


def test_snake_case_keys_are_accepted() -> None:
    document = {
        "resource_spans": [
            {
                "scope_spans": [
                    {
                        "spans": [
                            {
                                "trace_id": TRACE_ID,
                                "span_id": SPAN_ID,
                                "parent_span_id": PARENT_ID,
                                "start_time_unix_nano": "1795394880464000000",
                                "kind": "SPAN_KIND_CLIENT",
                            }
                        ]
                    }
                ]
            }
        ]
    }

    span = decode_json("traces", document).resource_spans[0].scope_spans[0].spans[0]

    assert span.trace_id == bytes.fromhex(TRACE_ID)
    assert span.parent_span_id == bytes.fromhex(PARENT_ID)
    assert span.start_time_unix_nano == 1795394880464000000
    assert span.kind == Span.SPAN_KIND_CLIENT


def test_int64_as_string_and_as_number_even_mixed() -> None:
    def point(time: Any, value: Any) -> dict[str, Any]:
        return {"timeUnixNano": time, "startTimeUnixNano": time, "asInt": value}

    document = {
        "resourceMetrics": [
            {
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "name": "tokens",
                                "sum": {
                                    "dataPoints": [
                                        point("1795394880464000000", "852"),
                                        point(1795394880464000000, 852),
                                        point("1795394880464000000", -9007199254740993),
                                    ],
                                    "aggregationTemporality": 1,
                                    "isMonotonic": True,
                                },
                            }
                        ]
                    }
                ]
            }
        ]
    }

    points = decode_json("metrics", document).resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points

    assert [p.time_unix_nano for p in points] == [1795394880464000000] * 3
    assert [p.as_int for p in points] == [852, 852, -9007199254740993]


@pytest.mark.parametrize(
    ("temporality", "kind", "code"),
    [
        (1, 1, 2),
        ("AGGREGATION_TEMPORALITY_DELTA", "SPAN_KIND_INTERNAL", "STATUS_CODE_ERROR"),
    ],
)
def test_enums_as_ints_or_names(temporality: Any, kind: Any, code: Any) -> None:
    metrics = decode_json(
        "metrics",
        {
            "resourceMetrics": [
                {"scopeMetrics": [{"metrics": [{"sum": {"aggregationTemporality": temporality}}]}]}
            ]
        },
    )
    traces = decode_json(
        "traces",
        {"resourceSpans": [{"scopeSpans": [{"spans": [{"kind": kind, "status": {"code": code}}]}]}]},
    )

    metric = metrics.resource_metrics[0].scope_metrics[0].metrics[0]
    span = traces.resource_spans[0].scope_spans[0].spans[0]
    assert metric.sum.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
    assert span.kind == Span.SPAN_KIND_INTERNAL
    assert span.status.code == Status.STATUS_CODE_ERROR


def test_unknown_fields_are_ignored_and_pretty_printing_is_fine() -> None:
    document = {
        "resourceLogs": [
            {
                "futureField": {"x": [1, 2]},
                "scopeLogs": [{"logRecords": [{"eventName": "e", "newThing": 3}], "extra": None}],
            }
        ],
        "somethingElse": "ignored",
    }

    body = json.dumps(document, indent=4).encode()
    message = decode_request("logs", body, "application/json; charset=utf-8")

    assert message.resource_logs[0].scope_logs[0].log_records[0].event_name == "e"


def test_empty_protobuf_body_is_an_empty_request() -> None:
    assert decode_request("metrics", b"", PROTOBUF_CONTENT_TYPE) == ExportMetricsServiceRequest()


def test_multi_member_gzip() -> None:
    body = (CAPTURES / "claude-grpc" / "logs-0.raw.pb").read_bytes()
    half = len(body) // 2

    message = decode_request(
        "logs", gzip.compress(body[:half]) + gzip.compress(body[half:]), PROTOBUF_CONTENT_TYPE, "gzip"
    )

    assert message == ExportLogsServiceRequest.FromString(body)


@pytest.mark.parametrize(
    ("signal", "body", "content_type", "encoding", "fragment"),
    [
        pytest.param(
            "traces",
            b"\x0a\x05abc",
            PROTOBUF_CONTENT_TYPE,
            "",
            "invalid protobuf ExportTraceServiceRequest",
            id="truncated-protobuf",
        ),
        pytest.param(
            "metrics", b"\xff\xff\xff\xff", PROTOBUF_CONTENT_TYPE, "", "invalid protobuf", id="bad-tag"
        ),
        pytest.param("logs", b"{not json", JSON_CONTENT_TYPE, "", "invalid JSON body", id="bad-json"),
        pytest.param("logs", b"", JSON_CONTENT_TYPE, "", "invalid JSON body", id="empty-json"),
        pytest.param(
            "logs", b"\xff\xfe\x00garbage", JSON_CONTENT_TYPE, "", "invalid JSON body", id="bad-utf"
        ),
        pytest.param("logs", b"[1, 2]", JSON_CONTENT_TYPE, "", "must be a JSON object, not list", id="array"),
        pytest.param(
            "traces", b'{"resourceSpans": 5}', JSON_CONTENT_TYPE, "", "resourceSpans", id="bad-shape"
        ),
        pytest.param(
            "traces",
            b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"not-hex"}]}]}]}',
            JSON_CONTENT_TYPE,
            "",
            "traceId 'not-hex'",
            id="non-hex-trace-id",
        ),
        pytest.param(
            "logs",
            b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"spanId":"abc"}]}]}]}',
            JSON_CONTENT_TYPE,
            "",
            "must be hex strings",
            id="odd-length-span-id",
        ),
        pytest.param(
            "metrics",
            b'{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"sum":{"dataPoints":[{"asInt":"1.5"}]}}]}]}]}',
            JSON_CONTENT_TYPE,
            "",
            "asInt",
            id="fractional-int64",
        ),
        pytest.param(
            "metrics",
            b"\x1f\x8b\x08\x00garbage",
            PROTOBUF_CONTENT_TYPE,
            "gzip",
            "invalid gzip body",
            id="bad-gzip",
        ),
        pytest.param(
            "metrics",
            gzip.compress(b"x", mtime=0)[:-6],
            PROTOBUF_CONTENT_TYPE,
            "gzip",
            "invalid gzip body",
            id="truncated-gzip",
        ),
        pytest.param(
            "metrics", b"", PROTOBUF_CONTENT_TYPE, "br", "unsupported Content-Encoding 'br'", id="brotli"
        ),
        pytest.param(
            "metrics", b"", "text/plain", "", "unsupported content type 'text/plain'", id="text-plain"
        ),
    ],
)
def test_malformed_bodies_raise_permanent_errors_that_say_why(
    signal: Signal, body: bytes, content_type: str, encoding: str, fragment: str
) -> None:
    with pytest.raises(PermanentError) as raised:
        decode_request(signal, body, content_type, encoding)

    assert fragment in str(raised.value)


def test_decompressed_size_is_bounded() -> None:
    bomb = gzip.compress(b"\0" * 1_000_000)

    with pytest.raises(PayloadTooLargeError, match="exceeds the limit of 1000 bytes"):
        decode_request("metrics", bomb, PROTOBUF_CONTENT_TYPE, "gzip", max_bytes=1000)
    with pytest.raises(PayloadTooLargeError):
        decode_request("metrics", b"\0" * 1001, PROTOBUF_CONTENT_TYPE, max_bytes=1000)
    assert isinstance(PayloadTooLargeError("x"), PermanentError)


@pytest.mark.parametrize(
    ("signal", "field"),
    [("metrics", "rejected_data_points"), ("traces", "rejected_spans"), ("logs", "rejected_log_records")],
)
def test_encode_response_sets_partial_success_only_when_something_was_rejected(
    signal: Signal, field: str
) -> None:
    assert not encode_response(signal, 0, "").HasField("partial_success")

    response = encode_response(signal, 3, "bad points")

    assert getattr(response.partial_success, field) == 3
    assert response.partial_success.error_message == "bad points"


def test_response_to_json_is_the_otlp_json_form() -> None:
    assert response_to_json(encode_response("traces", 0, "")) == b"{}"
    assert json.loads(response_to_json(encode_response("traces", 2, "why"))) == {
        "partialSuccess": {"rejectedSpans": "2", "errorMessage": "why"}
    }


def test_request_types_are_the_collector_messages() -> None:
    assert REQUEST_TYPES["metrics"] is ExportMetricsServiceRequest
    assert REQUEST_TYPES["traces"] is ExportTraceServiceRequest
    assert REQUEST_TYPES["logs"] is ExportLogsServiceRequest
