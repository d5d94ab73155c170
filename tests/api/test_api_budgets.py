"""Rolling-window budgets (the Bookmore seed and the budget check) over HTTP and gRPC, real databases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import psycopg
import pytest
from api_servers import ApiServers

from tokenscale.api.budgets import window_tokens
from tokenscale.api.gen.tokenscale.v1 import usage_api_pb2 as pb
from tokenscale.instrumentation import BudgetExceededError, BudgetGuard
from tokenscale.mapping import UsageEvent
from tokenscale.store.backend import recorded_backend

COMPANY = "00000000-0000-0000-0000-000000000000"  # the seed's example CompanyId
FIELDS = ("CompanyId", "TokensUsed", "TokenLimit", "TokensRemaining", "IsWithinBudget", "WindowDays")


def test_seed_example_request_and_response(api: ApiServers) -> None:
    api.budget(COMPANY, 1000, 7)
    key = api.key(COMPANY)
    response = api.http("POST", "/assistant/ai-chat/usage", key, json={"CompanyId": COMPANY, "TokensUsed": 0})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "CompanyId": COMPANY,
        "TokensUsed": 0,
        "TokenLimit": 1000,
        "TokensRemaining": 1000,
        "IsWithinBudget": True,
        "WindowDays": 7,
    }
    # A turn of 300 tokens is recorded; CompanyId defaults to the key's company.
    after = api.http("POST", "/assistant/ai-chat/usage", key, json={"TokensUsed": 300}).json()
    assert (after["TokensUsed"], after["TokensRemaining"], after["IsWithinBudget"]) == (300, 700, True)
    # ...as a counted usage event, so it shows in every read API.
    assert api.query("SELECT tenant, input_tokens, counted, operation FROM tokenscale.usage_events") == [
        (COMPANY, 300, True, "chat")
    ]


def test_seed_jsv_request_and_response(api: ApiServers) -> None:
    api.budget(COMPANY, 10, 3)
    key = api.key(COMPANY)
    response = api.http(
        "POST",
        "/assistant/ai-chat/usage",
        key,
        headers={"Accept": "text/jsv", "Content-Type": "text/jsv"},
        data=f"{{\n CompanyId: {COMPANY},\n TokensUsed: 12\n}}".encode(),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/jsv")
    assert response.text == (
        f"{{CompanyId:{COMPANY},TokensUsed:12,TokenLimit:10,TokensRemaining:0,IsWithinBudget:False,WindowDays:3}}"
    )
    query_form = api.http("POST", "/assistant/ai-chat/usage?TokensUsed=1&format=json", key)
    assert query_form.json()["TokensUsed"] == 13


def company_uuid(api: ApiServers, tenant: str) -> str:
    """The UUID the tenant is answered under."""
    rows = api.query("SELECT id FROM tokenscale.tenants WHERE name = %s", (tenant,))
    assert len(rows) == 1
    return str(rows[0][0])


def test_budget_check_endpoint_and_the_instrumentation_client(api: ApiServers) -> None:
    api.budget("acme", 500, 30)
    key = api.key("acme", ["read", "ingest"])
    check = api.http("GET", "/api/budgets/check?company_id=acme", key)
    assert check.status_code == 200
    acme = company_uuid(api, "acme")
    assert check.json() == dict(zip(FIELDS, (acme, 0, 500, 500, True, 30), strict=True))
    # The company's UUID names it as well as its name does.
    assert api.http("GET", f"/api/budgets/check?company_id={acme.upper()}", key).json() == check.json()
    assert api.http("GET", "/api/budgets/check", key).json() == check.json()
    guard = BudgetGuard(api.base, api_key=key, company_id="acme", cache_seconds=0)
    status = guard.status()  # /v1/budgets/check: the company budget is one tenant window
    assert status is not None and status.allowed is True
    assert [(w.budget_id, w.scope, w.limit, w.used) for w in status.windows] == [
        ("company", "tenant", 500, 0)
    ]
    guard.check()
    api.http("POST", "/assistant/ai-chat/usage", key, json={"TokensUsed": 500})
    spent = api.http("GET", "/api/budgets/check?company_id=acme", key).json()
    assert spent == dict(zip(FIELDS, (acme, 500, 500, 0, False, 30), strict=True))
    with pytest.raises(BudgetExceededError):
        guard.check()
    over = api.http("POST", "/assistant/ai-chat/usage", key, json={"TokensUsed": 80}).json()
    assert (over["TokensUsed"], over["TokensRemaining"], over["IsWithinBudget"]) == (580, 0, False)


def test_errors_carry_a_response_status(api: ApiServers) -> None:
    unauthenticated = api.http("POST", "/assistant/ai-chat/usage", None, json={"TokensUsed": 1})
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["ResponseStatus"]["ErrorCode"] == "Unauthorized"
    key = api.key("acme")
    missing = api.http("POST", "/assistant/ai-chat/usage", key, json={"CompanyId": "acme"})
    assert missing.status_code == 400
    assert missing.json()["ResponseStatus"] == {
        "ErrorCode": "NotNull",
        "Message": "TokensUsed: is required",
        "Errors": [{"ErrorCode": "NotNull", "FieldName": "TokensUsed", "Message": "TokensUsed: is required"}],
    }
    negative = api.http("POST", "/assistant/ai-chat/usage", key, json={"TokensUsed": -5})
    assert negative.status_code == 400
    assert negative.json()["ResponseStatus"]["Errors"][0]["FieldName"] == "TokensUsed"
    other = api.http("POST", "/assistant/ai-chat/usage", key, json={"CompanyId": "globex", "TokensUsed": 1})
    assert other.status_code == 403
    assert other.json()["ResponseStatus"]["ErrorCode"] == "Forbidden"
    assert api.http("GET", "/api/budgets/check?company_id=nobody", None).status_code == 401


def test_grpc_record_and_check(api: ApiServers) -> None:
    api.budget("acme", 1000, 7)
    key = api.key("acme")
    reply = api.stub.RecordAiChatUsage(
        pb.RecordAiChatUsageRequest(company_id="acme", tokens_used=250), metadata=api.metadata(key)
    )
    assert (reply.company_id, reply.tokens_used, reply.token_limit, reply.tokens_remaining) == (
        company_uuid(api, "acme"),
        250,
        1000,
        750,
    )
    assert (reply.is_within_budget, reply.window_days) == (True, 7)
    check = api.stub.CheckBudget(pb.CheckBudgetRequest(), metadata=api.metadata(key))
    assert check == reply
    for request, code in [
        (pb.RecordAiChatUsageRequest(company_id="acme"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.RecordAiChatUsageRequest(company_id="globex", tokens_used=1), grpc.StatusCode.PERMISSION_DENIED),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            api.stub.RecordAiChatUsage(request, metadata=api.metadata(key))
        assert caught.value.code() == code
    with pytest.raises(grpc.RpcError) as caught:
        api.stub.CheckBudget(pb.CheckBudgetRequest(company_id="acme"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_rolling_window_counts_otlp_usage_and_drops_what_is_older(
    api: ApiServers, make_event: Callable[..., UsageEvent]
) -> None:
    api.budget("acme", 10_000, 7)
    key = api.key("acme")
    # Written exactly as OTLP exports are: UsageWriter with a MappingResult of UsageEvents.
    api.write(
        [
            make_event("acme", age_days=8, input_tokens=5000),  # outside the 7-day window
            make_event("acme", age_days=7.02, output_tokens=4000),  # just outside
            make_event("acme", age_days=7 + 120 / 86_400, input_tokens=2000),  # 2 minutes outside
            make_event("acme", age_days=7 - 120 / 86_400, input_tokens=1),  # 2 minutes inside
            make_event("acme", age_days=6.9, input_tokens=100, cache_read_tokens=20),  # partial first day
            make_event("acme", age_days=3, output_tokens=300, reasoning_tokens=50),  # a whole day
            make_event("acme", age_days=0, cache_write_tokens=7),  # today
            make_event("globex", age_days=1, input_tokens=999),  # another tenant
        ]
    )
    expected = 1 + 100 + 20 + 300 + 7
    status = api.http("GET", "/api/budgets/check", key).json()
    assert (status["TokensUsed"], status["TokensRemaining"]) == (expected, 10_000 - expected)
    reply = api.stub.CheckBudget(pb.CheckBudgetRequest(), metadata=api.metadata(key))
    assert reply.tokens_used == expected
    # A 9-day window reaches the 8-day-old usage too.
    with psycopg.connect(api.url) as conn:
        assert window_tokens(conn, "acme", 9) == expected + 5000 + 4000 + 2000
        assert window_tokens(conn, "acme", 1) == 7


def test_whole_hours_are_read_from_usage_hourly(api: ApiServers, make_event: Callable[..., Any]) -> None:
    api.budget("acme", 10_000, 7)
    key = api.key("acme")
    api.write([make_event("acme", age_days=3, input_tokens=40)])
    with psycopg.connect(api.url) as conn:
        backend = recorded_backend(conn)
        assert backend is not None
        if not backend.keeps_rollups:
            pytest.skip("usage_hourly is a continuous aggregate here")
        # Doubling the rollup of that whole hour shows the check reads usage_hourly, not raw events.
        conn.execute(
            "UPDATE tokenscale.usage_hourly SET input_tokens = input_tokens * 2 WHERE tenant = 'acme'"
        )
    assert api.http("GET", "/api/budgets/check", key).json()["TokensUsed"] == 80
