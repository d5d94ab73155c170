"""aiToolMetrics.push / pushAll (the DX seed) over HTTP and gRPC, on real PostgreSQL and TimescaleDB."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import uuid
from typing import Any

import grpc
import pytest
from api_servers import ApiServers
from google.protobuf.json_format import MessageToDict

from tokenscale.api.gen.tokenscale.v1 import usage_api_pb2 as pb

# The seed's example request, verbatim.
SEED_RECORD: dict[str, Any] = {
    "email": "engineer1@company.com",
    "date": "2025-01-15",
    "is_active": True,
    "tool": "tabnine",
    "metrics": {"lines": 150},
    "input_tokens": 10000,
    "output_tokens": 500,
    "cache_write_tokens": 2000,
    "cache_read_tokens": 1000,
    "spend_cents": 100,
}


def _without_id(record: dict[str, Any]) -> dict[str, Any]:
    uuid.UUID(record["id"])  # a generated id
    return {k: v for k, v in record.items() if k != "id"}


def _grpc_record(message: pb.AiToolMetricRecord) -> dict[str, Any]:
    out = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    for name in ("input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens", "spend_cents"):
        if name in out:
            out[name] = int(out[name])
    if "metrics" in out:
        # The exact JSON text travels beside the Struct (whose numbers are doubles).
        out["metrics"] = json.loads(out.pop("metrics_json"))
    return out


def test_push_all_seed_example_returns_created_records(api: ApiServers) -> None:
    key = api.key("acme")
    response = api.http(
        "POST",
        "/api/aiToolMetrics.pushAll",
        key,
        headers={"Accept": "application/json", "Content-Type": "application/json"},
        json={"data": [SEED_RECORD]},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, list) and len(body) == 1
    assert _without_id(body[0]) == SEED_RECORD
    rows = api.query(
        "SELECT tenant, email, date::text, is_active, tool, metrics, input_tokens, output_tokens, "
        "cache_write_tokens, cache_read_tokens, spend_cents FROM tokenscale.bespoke_ai_tool_daily_metrics"
    )
    assert rows == [("acme", *SEED_RECORD.values())]


def test_push_single_record_over_http_and_grpc(api: ApiServers) -> None:
    key = api.key("acme")
    response = api.http("POST", "/api/aiToolMetrics.push", key, json=SEED_RECORD)
    assert response.status_code == 200, response.text
    assert _without_id(response.json()) == SEED_RECORD

    other = {**SEED_RECORD, "tool": "cody"}
    reply = api.stub.PushAiToolMetric(pb.AiToolMetric(**other), metadata=api.metadata(key))
    assert _without_id(_grpc_record(reply)) == other
    reply_all = api.stub.PushAllAiToolMetrics(
        pb.PushAllAiToolMetricsRequest(data=[pb.AiToolMetric(**{**SEED_RECORD, "tool": "q"})]),
        metadata=api.metadata(key),
    )
    assert [_without_id(_grpc_record(r)) for r in reply_all.data] == [{**SEED_RECORD, "tool": "q"}]
    assert api.query("SELECT count(*) FROM tokenscale.bespoke_ai_tool_daily_metrics") == [(3,)]


def test_pushing_the_same_email_date_and_tool_again_replaces_that_day(api: ApiServers) -> None:
    key = api.key("acme")
    first = api.http("POST", "/api/aiToolMetrics.push", key, json=SEED_RECORD).json()
    again = {"email": "Engineer1@Company.com ", "date": "2025-01-15", "is_active": False, "tool": "tabnine"}
    second = api.http("POST", "/api/aiToolMetrics.push", key, json=again).json()
    assert second["id"] == first["id"]
    assert second == {
        "id": first["id"],
        "email": "engineer1@company.com",
        "date": "2025-01-15",
        "is_active": False,
        "tool": "tabnine",
        "metrics": None,
        "input_tokens": None,
        "output_tokens": None,
        "cache_write_tokens": None,
        "cache_read_tokens": None,
        "spend_cents": None,
    }
    assert api.query("SELECT count(*), bool_or(is_active) FROM tokenscale.bespoke_ai_tool_daily_metrics") == [
        (1, False)
    ]
    # Within one request the last copy wins, and both copies answer the stored row.
    both = api.http(
        "POST",
        "/api/aiToolMetrics.pushAll",
        key,
        json={"data": [SEED_RECORD, {**SEED_RECORD, "spend_cents": 7}]},
    ).json()
    assert [r["spend_cents"] for r in both] == [7, 7]
    assert both[0]["id"] == both[1]["id"] == first["id"]
    # Pushed rows appear in tokenscale.ai_tool_daily_metrics as source 'push'.
    pushed = api.query("SELECT * FROM tokenscale.ai_tool_daily_metrics WHERE source = 'push'")
    expected = ["acme", "engineer1@company.com", "2025-01-15", "True", "tabnine", "{'lines': 150}"]
    expected += ["10000", "500", "2000", "1000", "7", "push"]
    assert [list(map(str, row)) for row in pushed] == [expected]
    columns = (
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'tokenscale' "
    )
    hook = api.query(columns + "AND table_name = 'ai_tool_daily_metrics_pushed' ORDER BY ordinal_position")
    otlp = api.query(columns + "AND table_name = 'ai_tool_daily_metrics_otlp' ORDER BY ordinal_position")
    assert hook == otlp  # the two halves of the union: same columns, same types, same order


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"date": "2025-13-45"}, "date"),
        ({"date": "15/01/2025"}, "date"),
        ({"email": None}, "email"),
        ({"email": "not-an-email"}, "email"),
        ({"is_active": "yes"}, "is_active"),
        ({"tool": ""}, "tool"),
        ({"input_tokens": -1}, "input_tokens"),
        ({"output_tokens": 1.5}, "output_tokens"),
        ({"spend_cents": "100"}, "spend_cents"),
        ({"metrics": [1, 2]}, "metrics"),
        ({"metrics": {"bad": "nul\u0000"}}, "metrics"),
    ],
)
def test_a_bad_record_names_its_index_and_field_and_nothing_is_written(
    api: ApiServers, record: dict[str, Any], field: str
) -> None:
    key = api.key("acme")
    bad = {**SEED_RECORD, "tool": "other", **record}
    if record.get("email", "") is None:
        del bad["email"]
    response = api.http(
        "POST", "/api/aiToolMetrics.pushAll", key, json={"data": [SEED_RECORD, bad, SEED_RECORD]}
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["ok"] is False
    assert body["error"] == "invalid_request"
    assert (body["index"], body["field"]) == (1, field)
    assert body["message"].startswith(f"data[1].{field}:")
    assert api.query("SELECT count(*) FROM tokenscale.bespoke_ai_tool_daily_metrics") == [(0,)]


def test_invalid_requests_over_grpc_are_invalid_argument(api: ApiServers) -> None:
    key = api.key("acme")
    with pytest.raises(grpc.RpcError) as caught:
        api.stub.PushAllAiToolMetrics(
            pb.PushAllAiToolMetricsRequest(
                data=[
                    pb.AiToolMetric(**SEED_RECORD),
                    pb.AiToolMetric(**{**SEED_RECORD, "date": "2025-02-30"}),
                ]
            ),
            metadata=api.metadata(key),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("data[1].date:")
    with pytest.raises(grpc.RpcError) as missing:
        api.stub.PushAiToolMetric(
            pb.AiToolMetric(email="a@b.c", date="2025-01-01", tool="x"), metadata=api.metadata(key)
        )
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert missing.value.details() == "is_active: is required"
    assert api.query("SELECT count(*) FROM tokenscale.bespoke_ai_tool_daily_metrics") == [(0,)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "data: is required and must be an array"),
        ({"data": []}, "data: must hold at least one record"),
        ({"data": [1]}, "data[0]: must be a JSON object"),
    ],
)
def test_malformed_push_all_bodies(api: ApiServers, body: dict[str, Any], message: str) -> None:
    response = api.http("POST", "/api/aiToolMetrics.pushAll", api.key("acme"), json=body)
    assert (response.status_code, response.json()["message"]) == (400, message)
    not_json = api.http("POST", "/api/aiToolMetrics.pushAll", api.key("acme"), data=b"{nope")
    assert not_json.status_code == 400
    assert not_json.json()["message"].startswith("request body: not valid JSON")


def test_push_needs_a_valid_key_with_the_ingest_scope(api: ApiServers) -> None:
    body = {"data": [SEED_RECORD]}
    missing = api.http("POST", "/api/aiToolMetrics.pushAll", None, json=body)
    assert missing.status_code == 401
    assert missing.json()["error"] == "not_authed"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = api.http("POST", "/api/aiToolMetrics.pushAll", "tsk_not-a-real-key", json=body)
    assert wrong.status_code == 401
    read_only = api.http("POST", "/api/aiToolMetrics.pushAll", api.key("acme", ["read"]), json=body)
    assert read_only.status_code == 403
    assert read_only.json()["error"] == "not_allowed"
    with pytest.raises(grpc.RpcError) as caught:
        api.stub.PushAiToolMetric(pb.AiToolMetric(**SEED_RECORD))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert api.query("SELECT count(*) FROM tokenscale.bespoke_ai_tool_daily_metrics") == [(0,)]


# The seed's example request as its documentation prints it; only the instance URL and the key differ.
SEED_CURL = """curl -X POST https://yourinstance.getdx.net/api/aiToolMetrics.pushAll \\
-H 'Accept: application/json' \\
-H 'Authorization: Bearer xxxx-xxxxxxxxx-xxxx' \\
-H 'Content-Type: application/json' \\
--data '{
"data": [
{
"email": "engineer1@company.com",
"date": "2025-01-15",
"is_active": true,
"tool": "tabnine",
"metrics": {"lines": 150},
"input_tokens": 10000,
"output_tokens": 500,
"cache_write_tokens": 2000,
"cache_read_tokens": 1000,
"spend_cents": 100
}
]
}'"""


def test_the_seed_curl_command_replayed_verbatim(api: ApiServers) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    key = api.key("acme")
    command = SEED_CURL.replace("https://yourinstance.getdx.net", api.base).replace(
        "xxxx-xxxxxxxxx-xxxx", key
    )
    argv = shlex.split(command.replace("\\\n", " "))
    assert argv[0] == "curl"
    result = subprocess.run(
        [curl, "-sS", "-w", "\\n%{http_code} %{content_type}", *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    body, _, status_line = result.stdout.rpartition("\n")
    assert status_line == "200 application/json"
    [stored] = json.loads(body)
    assert uuid.UUID(stored.pop("id"))
    assert stored == SEED_RECORD
