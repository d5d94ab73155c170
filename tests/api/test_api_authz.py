"""The authorization matrix: a tenant's keys never read, push or budget-check as another tenant."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from api_servers import ApiServers

from tokenscale.api.gen.tokenscale.v1 import usage_api_pb2 as pb
from tokenscale.auth import revoke_key
from tokenscale.mapping import UsageEvent

RECORD = {"email": "a@acme.com", "date": "2025-01-15", "is_active": True, "tool": "x", "input_tokens": 9}


@pytest.fixture
def two_tenants(api: ApiServers, make_event: Callable[..., UsageEvent]) -> dict[str, Any]:
    api.budget("acme", 1000, 7)
    api.budget("globex", 2000, 7)
    api.write(
        [
            make_event("acme", age_days=1, request_id="acme-1", conversation_id="c", input_tokens=10),
            make_event("globex", age_days=1, request_id="globex-1", conversation_id="c", input_tokens=20),
        ]
    )
    return {
        "api": api,
        "a": api.key("acme", ["ingest", "read"]),
        "b": api.key("globex", ["ingest", "read"]),
        "a_admin": api.key("acme", ["admin"]),
        "a_read": api.key("acme", ["read"]),
        "a_ingest": api.key("acme", ["ingest"]),
    }


# (method, path of a request naming tenant B (globex), JSON body or None)
NAMING_THE_OTHER_TENANT = [
    ("GET", "/v2/api/sources/metrics/ai?teamId=globex", None),
    ("GET", "/v2/api/sources/metrics/ai/completions?teamId=globex", None),
    ("GET", "/v2/api/sources/metrics/ai/audio?teamId=globex", None),
    ("GET", "/v2/api/sources/metrics/ai/video?teamId=globex", None),
    ("GET", "/v2/api/sources/metrics/ai/images?teamId=globex", None),
    ("POST", "/assistant/ai-chat/usage", {"CompanyId": "globex", "TokensUsed": 5}),
    ("POST", "/assistant/ai-chat/usage?CompanyId=globex", {"TokensUsed": 5}),
    ("GET", "/api/budgets/check?company_id=globex", None),
]


@pytest.mark.parametrize("key_name", ["a", "a_admin"])
def test_naming_another_tenant_is_forbidden_on_every_endpoint(
    two_tenants: dict[str, Any], key_name: str
) -> None:
    api: ApiServers = two_tenants["api"]
    key = two_tenants[key_name]
    for method, path, body in NAMING_THE_OTHER_TENANT:
        response = api.http(method, path, key, json=body)
        assert response.status_code == 403, (method, path, response.text)
    meta = api.metadata(key)
    for call, request in [
        (api.stub.ListAiMetrics, pb.ListAiMetricsRequest(team_id="globex")),
        (api.stub.ListAiCompletionMetrics, pb.ListAiMetricsRequest(team_id="globex")),
        (api.stub.ListAiAudioMetrics, pb.ListAiMetricsRequest(team_id="globex")),
        (api.stub.ListAiVideoMetrics, pb.ListAiMetricsRequest(team_id="globex")),
        (api.stub.ListAiImageMetrics, pb.ListAiMetricsRequest(team_id="globex")),
        (api.stub.RecordAiChatUsage, pb.RecordAiChatUsageRequest(company_id="globex", tokens_used=5)),
        (api.stub.CheckBudget, pb.CheckBudgetRequest(company_id="globex")),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, metadata=meta)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, call
    # Nothing of globex was recorded, and its budget usage is untouched.
    b_status = api.http("GET", "/api/budgets/check", two_tenants["b"]).json()
    assert b_status["TokensUsed"] == 20


def test_what_a_key_reads_and_writes_is_its_own_tenant_only(two_tenants: dict[str, Any]) -> None:
    api: ApiServers = two_tenants["api"]
    a, b = two_tenants["a"], two_tenants["b"]
    assert api.http("POST", "/api/aiToolMetrics.push", a, json=RECORD).status_code == 200
    assert api.query("SELECT tenant FROM tokenscale.bespoke_ai_tool_daily_metrics") == [("acme",)]
    listing = api.http("GET", "/v2/api/sources/metrics/ai?teamId=globex", b).json()
    assert [i["transactionId"] for i in listing["_embedded"]["aIMetricResourceList"]] == ["globex-1"]
    records = api.http("GET", "/api/v1/usage/list?conversationId=c", a).json()
    assert [r["messageId"] for r in records["items"]] == ["acme-1"]
    series = api.http("GET", "/api/v1/usage/series/fetch", a).json()
    assert sum(p["total"] for p in series["tokens"]) == 10
    assert api.http("GET", "/api/budgets/check", a).json()["TokensUsed"] == 10
    grpc_records = api.stub.ListUsageRecords(pb.ListUsageRecordsRequest(), metadata=api.metadata(b))
    assert [r.message_id for r in grpc_records.items] == ["globex-1"]
    # UUID-shaped company ids compare by value, any other spelling of a tenant is someone else.
    assert api.http("GET", "/api/budgets/check?company_id=ACME", a).status_code == 403


def test_scopes(two_tenants: dict[str, Any]) -> None:
    api: ApiServers = two_tenants["api"]
    read, ingest = two_tenants["a_read"], two_tenants["a_ingest"]
    writes = [
        ("POST", "/api/aiToolMetrics.push", RECORD),
        ("POST", "/api/aiToolMetrics.pushAll", {"data": [RECORD]}),
        ("POST", "/assistant/ai-chat/usage", {"TokensUsed": 1}),
    ]
    reads = [
        ("GET", "/v2/api/sources/metrics/ai?teamId=acme", None),
        ("GET", "/api/budgets/check", None),
        ("GET", "/api/v1/usage/list", None),
        ("GET", "/api/v1/usage/series/fetch", None),
    ]
    for method, path, body in writes:
        assert api.http(method, path, read, json=body).status_code == 403, path
        assert api.http(method, path, ingest, json=body).status_code == 200, path
    for method, path, body in reads:
        assert api.http(method, path, ingest, json=body).status_code == 403, path
        assert api.http(method, path, read, json=body).status_code == 200, path
    for call, request in [
        (api.stub.FetchUsageSeries, pb.FetchUsageSeriesRequest()),
        (api.stub.ListUsageRecords, pb.ListUsageRecordsRequest()),
        (api.stub.CheckBudget, pb.CheckBudgetRequest()),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, metadata=api.metadata(ingest))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as caught:
        api.stub.PushAiToolMetric(pb.AiToolMetric(**RECORD), metadata=api.metadata(read))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_no_credentials_or_bad_ones_are_refused_everywhere(two_tenants: dict[str, Any]) -> None:
    api: ApiServers = two_tenants["api"]
    paths = [
        ("POST", "/api/aiToolMetrics.push", RECORD),
        ("POST", "/api/aiToolMetrics.pushAll", {"data": [RECORD]}),
        ("GET", "/v2/api/sources/metrics/ai?teamId=acme", None),
        ("GET", "/v2/api/sources/metrics/ai/completions?teamId=acme", None),
        ("POST", "/assistant/ai-chat/usage", {"TokensUsed": 1}),
        ("GET", "/api/budgets/check", None),
        ("GET", "/api/v1/usage/list", None),
        ("GET", "/api/v1/usage/series/fetch", None),
    ]
    revoked = api.key("acme", ["admin"])
    with api.pool.connection() as conn:
        assert revoke_key(conn, revoked[:12])
    time.sleep(0.6)  # the test servers' key cache keeps answers 0.5 s
    for key in (None, "tsk_forged", revoked):
        for method, path, body in paths:
            response = api.http(method, path, key, json=body)
            assert response.status_code == 401, (key, path)
    assert api.query("SELECT count(*) FROM tokenscale.usage_events") == [(2,)]
