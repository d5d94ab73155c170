"""Bookmore's RecordAiChatUsage as its clients call it: UUID companies, no budget, ServiceStack formats and
routes, the DTO's Int, idempotent retries. Real servers and databases; answers read by a typed client."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import psycopg
import pytest
from api_servers import ApiServers
from seed_clients import AiChatUsageResponse, ServiceStackClient, parse_jsv

from tokenscale.api.budgets import MAX_TOKEN_LIMIT, set_budget
from tokenscale.api.gen.tokenscale.v1 import usage_api_pb2 as pb

SEED_COMPANY = "00000000-0000-0000-0000-000000000000"
ROUTE = "/assistant/ai-chat/usage"


def company_uuid(api: ApiServers, tenant: str) -> uuid.UUID:
    rows = api.query("SELECT id FROM tokenscale.tenants WHERE name = %s", (tenant,))
    assert len(rows) == 1
    return uuid.UUID(str(rows[0][0]))


def recorded(api: ApiServers, tenant: str) -> list[tuple[int, bool]]:
    return [
        (int(r[0]), bool(r[1]))
        for r in api.query(
            "SELECT input_tokens, counted FROM tokenscale.usage_events WHERE tenant = %s ORDER BY time",
            (tenant,),
        )
    ]


def test_the_seed_jsv_sample_replayed_verbatim(api: ApiServers) -> None:
    api.budget(SEED_COMPANY, 2000, 7)
    key = api.key(SEED_COMPANY)
    body = b"{\nCompanyId: 00000000-0000-0000-0000-000000000000,\nTokensUsed: 0\n}"
    request = (
        b"POST /assistant/ai-chat/usage HTTP/1.1\r\nHost: api.bookmore.com\r\nAccept: text/jsv\r\n"
        b"Content-Type: text/jsv\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    with socket.create_connection(("127.0.0.1", api.http_port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, text = answer.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 OK"), head
    assert "content-type: text/jsv" in head.lower()
    typed = AiChatUsageResponse.read(parse_jsv(text), jsv=True)
    assert typed == AiChatUsageResponse(uuid.UUID(SEED_COMPANY), 0, 2000, 2000, True, 7, None)
    assert recorded(api, SEED_COMPANY) == []  # 0 tokens records nothing


def test_companies_are_named_and_answered_by_uuid(api: ApiServers) -> None:
    api.budget("acme", 1000, 7)
    api.budget("globex", 1000, 7)
    key = api.key("acme")
    client = ServiceStackClient(api.base, key)
    status, first = client.post("RecordAiChatUsage", ROUTE, {"TokensUsed": 10})
    assert status == 200
    acme = company_uuid(api, "acme")
    assert first.CompanyId == acme
    for named in (str(acme), str(acme).upper(), acme.hex, "acme"):
        status, answer = client.post("RecordAiChatUsage", ROUTE, {"CompanyId": named, "TokensUsed": 1})
        assert (status, answer.CompanyId) == (200, acme), named
    assert answer.TokensUsed == 14
    # Another company's UUID, or a UUID naming no company, is forbidden (and records nothing).
    api.key("globex")  # makes globex's UUID
    for other in (company_uuid(api, "globex"), uuid.uuid4()):
        status, refused = client.post("RecordAiChatUsage", ROUTE, {"CompanyId": str(other), "TokensUsed": 5})
        assert status == 403
        assert refused.ResponseStatus is not None and refused.ResponseStatus["ErrorCode"] == "Forbidden"
    assert sum(t for t, _ in recorded(api, "acme")) == 14
    assert recorded(api, "globex") == []
    # The UUID is stable: a new service over the same database answers the same one.
    servers = ApiServers(api.url).start()
    try:
        again = servers.http("GET", "/api/budgets/check", key).json()
        assert again["CompanyId"] == str(acme)
    finally:
        servers.stop()


def test_a_tenant_named_by_a_uuid_keeps_it_as_its_id(api: ApiServers) -> None:
    name = "5b1f7d0e-8f43-4a50-9a8e-2a3c4d5e6f70"
    key = api.key(name)
    answer = api.http("POST", ROUTE, key, json={"CompanyId": name.upper(), "TokensUsed": 3}).json()
    assert answer["CompanyId"] == name


def test_a_company_without_a_budget_still_records_the_turn(api: ApiServers) -> None:
    key = api.key("acme")
    for fmt in ("json", "jsv"):
        status, answer = ServiceStackClient(api.base, key, fmt=fmt).post(
            "RecordAiChatUsage", ROUTE, {"TokensUsed": 40}
        )
        assert status == 200
        assert (answer.TokenLimit, answer.TokensRemaining, answer.IsWithinBudget, answer.WindowDays) == (
            None,
            None,
            True,
            30,
        )
    assert answer.TokensUsed == 80
    json_answer = api.http("POST", ROUTE, key, json={"TokensUsed": 1}).json()
    assert json_answer["TokenLimit"] is None and json_answer["TokensRemaining"] is None
    jsv_answer = api.http("POST", ROUTE + "?format=jsv", key, json={"TokensUsed": 1}).text
    assert "TokenLimit" not in jsv_answer and "TokensUsed:82" in jsv_answer
    assert recorded(api, "acme") == [(40, True), (40, True), (1, True), (1, True)]
    reply = api.stub.CheckBudget(pb.CheckBudgetRequest(), metadata=api.metadata(key))
    assert (reply.tokens_used, reply.HasField("token_limit"), reply.HasField("tokens_remaining")) == (
        82,
        False,
        False,
    )
    assert reply.is_within_budget


@pytest.fixture
def anonymous_api(api_url: str) -> Iterator[ApiServers]:
    servers = ApiServers(api_url, allow_anonymous=True).start()
    try:
        yield servers
    finally:
        servers.stop()


def test_no_key_is_401_even_where_anonymous_access_is_allowed(anonymous_api: ApiServers) -> None:
    api = anonymous_api
    for method, path, body in [
        ("POST", ROUTE, {"TokensUsed": 1}),
        ("POST", "/json/reply/RecordAiChatUsage", {"TokensUsed": 1}),
        ("GET", "/api/budgets/check", None),
    ]:
        answer = api.http(method, path, None, json=body)
        assert answer.status_code == 401, (path, answer.text)
        assert answer.json()["ResponseStatus"]["ErrorCode"] == "Unauthorized"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert api.query("SELECT count(*) FROM tokenscale.usage_events") == [(0,)]
    # Routes without a company still serve anonymous loopback callers.
    assert api.http("GET", "/api/v1/usage/list", None).status_code == 200
    with pytest.raises(grpc.RpcError) as caught:
        api.stub.RecordAiChatUsage(pb.RecordAiChatUsageRequest(tokens_used=1))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        (ROUTE, {}, "application/json"),
        (ROUTE + ".json", {"Accept": "text/jsv"}, "application/json"),
        (ROUTE + ".jsv", {}, "text/jsv"),
        (ROUTE + "?format=jsv", {"Accept": "application/json"}, "text/jsv"),
        (ROUTE + "?format=JSON", {"Accept": "text/jsv"}, "application/json"),
        (ROUTE, {"Accept": "text/jsv, application/json"}, "text/jsv"),
        (ROUTE, {"Accept": "application/json, text/jsv"}, "application/json"),
        (ROUTE, {"Accept": "application/json;q=0.5, text/jsv;q=0.9"}, "text/jsv"),
        (ROUTE, {"Accept": "application/xml, text/html;q=0.9, */*;q=0.8"}, "application/json"),
        (ROUTE, {"Accept": "application/xml"}, "application/json"),
        ("/json/reply/RecordAiChatUsage", {"Accept": "text/jsv"}, "application/json"),
        ("/jsv/reply/RecordAiChatUsage", {}, "text/jsv"),
        ("/api/RecordAiChatUsage", {}, "application/json"),
        ("/api/assistant/ai-chat/usage", {"Accept": "text/jsv"}, "text/jsv"),
    ],
)
def test_servicestack_content_negotiation_and_predefined_routes(
    api: ApiServers, path: str, headers: dict[str, str], expected: str
) -> None:
    api.budget("acme", 100, 7)
    key = api.key("acme")
    answer = api.http("POST", path, key, headers=headers, json={"TokensUsed": 7})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].split(";")[0] == expected
    data = answer.json() if expected == "application/json" else parse_jsv(answer.text)
    typed = AiChatUsageResponse.read(data, jsv=expected == "text/jsv")
    assert (typed.CompanyId, typed.TokensUsed, typed.TokensRemaining) == (company_uuid(api, "acme"), 7, 93)


def test_request_bodies_in_every_servicestack_format(api: ApiServers) -> None:
    api.budget("acme", 100, 7)
    key = api.key("acme")
    acme = None
    for content_type, body in [
        ("application/x-www-form-urlencoded", "TokensUsed=5&companyid="),
        ("application/x-www-form-urlencoded; charset=utf-8", "tokensUsed=5"),
        ("text/jsv", "{TokensUsed:5}"),
        ("application/json; charset=utf-8", '{"tokensused": 5}'),
    ]:
        answer = api.http("POST", ROUTE, key, headers={"Content-Type": content_type}, data=body.encode())
        assert answer.status_code == 200, (content_type, answer.text)
        acme = answer.json()["CompanyId"]
    assert acme == str(company_uuid(api, "acme"))
    assert recorded(api, "acme") == [(5, True)] * 4
    unread = api.http("POST", ROUTE, key, headers={"Content-Type": "application/xml"}, data=b"<a/>")
    assert unread.status_code == 415
    assert unread.json()["ResponseStatus"]["Errors"][0]["FieldName"] == "Content-Type"
    unknown = api.http("POST", ROUTE + "?format=xml", key, json={"TokensUsed": 5})
    assert unknown.status_code == 406
    assert unknown.json()["ResponseStatus"]["ErrorCode"] == "NotAcceptable"
    assert len(recorded(api, "acme")) == 4  # neither refused request recorded anything


def test_token_limit_fits_the_dtos_int(api: ApiServers) -> None:
    with psycopg.connect(api.url) as conn:
        with pytest.raises(ValueError, match="token_limit must be between 0 and 2147483647"):
            set_budget(conn, "acme", MAX_TOKEN_LIMIT + 1, 7)
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO tokenscale.budgets VALUES ('globex', 5000000000, 7)")
    api.budget("acme", MAX_TOKEN_LIMIT, 7)
    key = api.key("acme")
    status, answer = ServiceStackClient(api.base, key).post("RecordAiChatUsage", ROUTE, {"TokensUsed": 9})
    assert (status, answer.TokenLimit, answer.TokensRemaining) == (200, MAX_TOKEN_LIMIT, MAX_TOKEN_LIMIT - 9)
    # A limit stored before the bound existed is answered with a clear 400, before anything is recorded.
    with psycopg.connect(api.url) as conn:
        conn.execute("ALTER TABLE tokenscale.budgets DROP CONSTRAINT budgets_token_limit_int")
        conn.execute("UPDATE tokenscale.budgets SET token_limit = 5000000000 WHERE tenant = 'acme'")
    status, refused = ServiceStackClient(api.base, key).post("RecordAiChatUsage", ROUTE, {"TokensUsed": 9})
    assert status == 400
    assert refused.ResponseStatus is not None
    assert refused.ResponseStatus["Errors"][0]["FieldName"] == "TokenLimit"
    assert "5000000000 exceeds the Int" in refused.ResponseStatus["Message"]
    assert recorded(api, "acme") == [(9, True)]


def test_a_retried_turn_counts_once(api: ApiServers) -> None:
    api.budget("acme", 1000, 7)
    api.budget("globex", 1000, 7)
    acme, globex = api.key("acme"), api.key("globex")
    headers = {"Idempotency-Key": "turn-1"}
    answers = [
        api.http("POST", ROUTE, acme, headers=headers, json={"TokensUsed": 300}).json() for _ in range(3)
    ]
    assert [a["TokensUsed"] for a in answers] == [300, 300, 300]
    # Concurrent retries of one turn: still one row.
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda _: (
                    api.http(
                        "POST", ROUTE, acme, headers={"Idempotency-Key": "turn-2"}, json={"TokensUsed": 50}
                    ).status_code
                ),
                range(8),
            )
        )
    assert codes == [200] * 8
    # The request id serves as the key when no Idempotency-Key is sent; over gRPC, the metadata.
    for _ in range(2):
        api.http("POST", ROUTE, acme, headers={"X-Request-Id": "req-9"}, json={"TokensUsed": 7})
        api.stub.RecordAiChatUsage(
            pb.RecordAiChatUsageRequest(tokens_used=11),
            metadata=[*api.metadata(acme), ("idempotency-key", "grpc-1")],
        )
    with pytest.raises(grpc.RpcError) as caught:
        api.stub.RecordAiChatUsage(
            pb.RecordAiChatUsageRequest(tokens_used=12),
            metadata=[*api.metadata(acme), ("idempotency-key", "grpc-1")],
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "first used for a turn of 11 tokens" in (caught.value.details() or "")
    # Keys are per company: globex's "turn-1" is another turn.
    other = api.http("POST", ROUTE, globex, headers=headers, json={"TokensUsed": 300}).json()
    assert other["TokensUsed"] == 300
    # The same key for a different turn is a conflict, naming the header; an empty key is refused.
    clash = api.http("POST", ROUTE, acme, headers=headers, json={"TokensUsed": 301})
    assert clash.status_code == 409
    assert clash.json()["ResponseStatus"]["ErrorCode"] == "Conflict"
    assert clash.json()["ResponseStatus"]["Errors"][0]["FieldName"] == "Idempotency-Key"
    empty = api.http("POST", ROUTE, acme, headers={"Idempotency-Key": ""}, json={"TokensUsed": 1})
    assert empty.status_code == 400
    assert sorted(recorded(api, "acme")) == [(7, True), (11, True), (50, True), (300, True)]
    final = api.http("GET", "/api/budgets/check", acme).json()
    assert final["TokensUsed"] == 368
    # Without a key, two identical calls are two turns.
    api.http("POST", ROUTE, acme, json={"TokensUsed": 1})
    api.http("POST", ROUTE, acme, json={"TokensUsed": 1})
    assert api.http("GET", "/api/budgets/check", acme).json()["TokensUsed"] == 370
