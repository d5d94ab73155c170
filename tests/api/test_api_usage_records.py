"""Usage records (cursor pages, filters, immutability) and the 90-day series, over HTTP and gRPC."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from api_servers import ApiServers

from tokenscale.api.gen.tokenscale.v1 import usage_api_pb2 as pb
from tokenscale.mapping import UsageEvent

META = "tokenscale.meta."


@pytest.fixture
def records(api: ApiServers, make_event: Callable[..., UsageEvent]) -> tuple[ApiServers, str]:
    api.write(
        [
            make_event(
                "acme",
                age_days=3,
                request_id="m1",
                conversation_id="conv-1",
                user_id="contact-1",
                operation="chat",
                input_tokens=10,
                output_tokens=5,
                attributes={
                    META + "bot_id": "bot-1",
                    META + "task_id": "task-1",
                    META + "blueprint_id": "bp-1",
                    META + "dataset_id": "ds-1",
                    META + "skillset_id": "sk-1",
                    META + "ability_id": "ab-1",
                    META + "reason": "conversation/complete",
                    META + "priority": 3,
                    "service.name": "bots",
                },
            ),
            make_event(
                "acme",
                age_days=2,
                request_id="m2",
                conversation_id="conv-1",
                operation="chat",
                input_tokens=7,
            ),
            make_event(
                "acme",
                age_days=1,
                request_id="m3",
                conversation_id="conv-2",
                operation="embeddings",
                cache_read_tokens=2,
            ),
            make_event("globex", age_days=1, request_id="g1", conversation_id="conv-1"),
        ]
    )
    return api, api.key("acme", ["read"])


def _messages(body: dict[str, object]) -> list[str]:
    return [item["messageId"] for item in body["items"]]  # type: ignore[index, attr-defined]


def test_list_newest_first_with_relations_and_meta(records: tuple[ApiServers, str]) -> None:
    api, key = records
    response = api.http("GET", "/api/v1/usage/list", key)
    assert response.status_code == 200, response.text
    body = response.json()
    assert _messages(body) == ["m3", "m2", "m1"]
    assert "cursor" not in body
    first = body["items"][2]
    assert first == {
        "id": first["id"],
        "createdAt": first["createdAt"],
        "updatedAt": first["createdAt"],
        "type": "chat",
        "count": 15,
        "conversationId": "conv-1",
        "messageId": "m1",
        "contactId": "contact-1",
        "taskId": "task-1",
        "blueprintId": "bp-1",
        "botId": "bot-1",
        "datasetId": "ds-1",
        "skillsetId": "sk-1",
        "abilityId": "ab-1",
        "meta": {
            "bot_id": "bot-1",
            "task_id": "task-1",
            "blueprint_id": "bp-1",
            "dataset_id": "ds-1",
            "skillset_id": "sk-1",
            "ability_id": "ab-1",
            "reason": "conversation/complete",
            "priority": 3,
        },
    }
    age = datetime.now(UTC) - datetime.fromtimestamp(first["createdAt"] / 1000, UTC)
    assert timedelta(days=2.9) < age < timedelta(days=3.1)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("type=chat", ["m2", "m1"]),
        ("type=embeddings", ["m3"]),
        ("conversationId=conv-1", ["m2", "m1"]),
        ("messageId=m2", ["m2"]),
        ("contactId=contact-1", ["m1"]),
        ("taskId=task-1", ["m1"]),
        ("blueprintId=bp-1", ["m1"]),
        ("botId=bot-1", ["m1"]),
        ("datasetId=ds-1", ["m1"]),
        ("skillsetId=sk-1", ["m1"]),
        ("abilityId=ab-1", ["m1"]),
        ("meta[reason]=conversation%2Fcomplete", ["m1"]),
        ("meta[priority]=3", ["m1"]),
        ("meta[priority]=4", []),
        ("conversationId=conv-1&type=chat&botId=bot-1", ["m1"]),
        ("order=asc", ["m1", "m2", "m3"]),
    ],
)
def test_filters(records: tuple[ApiServers, str], query: str, expected: list[str]) -> None:
    api, key = records
    response = api.http("GET", f"/api/v1/usage/list?{query}", key)
    assert response.status_code == 200, response.text
    assert _messages(response.json()) == expected


def test_cursor_pages_cover_everything_once(api: ApiServers, make_event: Callable[..., UsageEvent]) -> None:
    # Ages from minutes to most of a year, so pages are found in every search window (1, 8, 40 days,
    # then unbounded) and some pages straddle them.
    ages = (0.001, 0.5, 0.9, 2, 5, 9, 30, 45, 100, 250)
    api.write(
        [make_event("acme", age_days=ages[n % 10] + n / 1000, request_id=f"r{n:02d}") for n in range(23)]
    )
    key = api.key("acme", ["read"])
    for order in ("desc", "asc"):
        full = _messages(api.http("GET", f"/api/v1/usage/list?take=100&order={order}", key).json())
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            query = f"take=5&order={order}" + (f"&cursor={cursor}" if cursor else "")
            body = api.http("GET", f"/api/v1/usage/list?{query}", key).json()
            seen += _messages(body)
            cursor = body.get("cursor")
            if cursor is None:
                break
        assert seen == full and len(full) == 23
    bad = api.http("GET", "/api/v1/usage/list?cursor=garbage", key)
    assert (bad.status_code, bad.json()["field"]) == (400, "cursor")


def test_records_are_immutable(records: tuple[ApiServers, str]) -> None:
    api, key = records
    for method in ("PUT", "PATCH", "DELETE", "POST"):
        response = api.http(method, "/api/v1/usage/list", key, json={"count": 0})
        assert response.status_code == 405, method
        assert response.headers["Allow"] == "GET, HEAD"
        assert response.json()["status"] == 405
    assert api.query("SELECT count(*) FROM tokenscale.usage_events") == [(4,)]


def test_grpc_list_matches_http(records: tuple[ApiServers, str]) -> None:
    api, key = records
    reply = api.stub.ListUsageRecords(
        pb.ListUsageRecordsRequest(
            take=2, conversation_id="conv-1", meta={"reason": "conversation/complete"}
        ),
        metadata=api.metadata(key),
    )
    assert [r.message_id for r in reply.items] == ["m1"]
    assert reply.items[0].bot_id == "bot-1" and reply.items[0].count == 15
    assert reply.items[0].meta["reason"] == "conversation/complete"
    page = api.stub.ListUsageRecords(pb.ListUsageRecordsRequest(take=2), metadata=api.metadata(key))
    assert [r.message_id for r in page.items] == ["m3", "m2"] and page.HasField("cursor")
    rest = api.stub.ListUsageRecords(
        pb.ListUsageRecordsRequest(take=2, cursor=page.cursor), metadata=api.metadata(key)
    )
    assert [r.message_id for r in rest.items] == ["m1"] and not rest.HasField("cursor")
    with pytest.raises(grpc.RpcError) as caught:
        api.stub.ListUsageRecords(pb.ListUsageRecordsRequest(order="sideways"), metadata=api.metadata(key))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _midnight_ms(days_ago: int) -> int:
    now = datetime.now(UTC)
    day = datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=days_ago)
    return int(day.timestamp() * 1000)


def test_series_has_90_midnight_points_with_zero_days(
    api: ApiServers, make_event: Callable[..., UsageEvent]
) -> None:
    api.write(
        [
            make_event("acme", age_days=0, conversation_id="c-new", input_tokens=5, output_tokens=5),
            make_event("acme", age_days=0, conversation_id="c-new", input_tokens=1, requests=2),
            make_event("acme", age_days=2, conversation_id="c-old", cache_write_tokens=3),
            make_event("acme", age_days=1, conversation_id="c-old", output_tokens=1),
            make_event("acme", age_days=95, input_tokens=1000),  # before the series
            make_event("globex", age_days=0, input_tokens=77),
        ]
    )
    key = api.key("acme", ["read"])
    body = api.http("GET", "/api/v1/usage/series/fetch", key).json()
    assert set(body) == {"tokens", "conversations", "messages"}
    for series in body.values():
        assert len(series) == 90
        assert [p["date"] for p in series] == [_midnight_ms(n) for n in range(89, -1, -1)]
    tokens = {p["date"]: p["total"] for p in body["tokens"] if p["total"]}
    messages = {p["date"]: p["total"] for p in body["messages"] if p["total"]}
    conversations = {p["date"]: p["total"] for p in body["conversations"] if p["total"]}
    today, yesterday, two_days = _midnight_ms(0), _midnight_ms(1), _midnight_ms(2)
    assert tokens == {today: 11, yesterday: 1, two_days: 3}
    # Messages: each request without a prompt id is a user input and a bot response.
    assert messages == {today: 6, yesterday: 2, two_days: 2}
    assert conversations == {today: 1, two_days: 1}  # c-old counts on its first day only
    reply = api.stub.FetchUsageSeries(pb.FetchUsageSeriesRequest(), metadata=api.metadata(key))
    assert [(p.date, p.total) for p in reply.tokens] == [(p["date"], p["total"]) for p in body["tokens"]]
    assert len(reply.conversations) == len(reply.messages) == 90


def test_series_messages_tell_user_inputs_from_responses_and_conversations_count_once_ever(
    api: ApiServers, make_event: Callable[..., UsageEvent]
) -> None:
    today, yesterday = _midnight_ms(0), _midnight_ms(1)
    before_midnight = make_event("acme", input_tokens=1, attributes={"prompt.id": "p-2"})
    before_midnight.time_ns = (today - 1000) * 10**6
    after_midnight = make_event("acme", input_tokens=1, attributes={"prompt.id": "p-2"})
    after_midnight.time_ns = (today + 1000) * 10**6
    api.write(
        [
            # One user prompt of an agentic turn: three AI requests (responses), one input.
            *[make_event("acme", input_tokens=1, attributes={"prompt.id": "p-1"}) for _ in range(3)],
            make_event("acme", input_tokens=1, attributes={"prompt_id": "g-1"}),  # Gemini CLI's key
            # A prompt whose requests span midnight is an input on its first day only.
            before_midnight,
            after_midnight,
            # A conversation that started before the series is not new inside it.
            make_event("acme", age_days=120, conversation_id="c-ancient", input_tokens=1),
            make_event("acme", conversation_id="c-ancient", input_tokens=1),
            make_event("acme", conversation_id="c-today", input_tokens=1),
        ]
    )
    key = api.key("acme", ["read"])
    body = api.http("GET", "/api/v1/usage/series/fetch", key).json()
    messages = {p["date"]: p["total"] for p in body["messages"] if p["total"]}
    conversations = {p["date"]: p["total"] for p in body["conversations"] if p["total"]}
    # Today: 7 responses (p-1 x3, g-1, p-2's second, two conversation requests) and 4 inputs
    # (p-1, g-1, one per conversation request); yesterday: p-2's first response and its input.
    assert messages == {today: 7 + 4, yesterday: 1 + 1}
    assert conversations == {today: 1}  # c-today only: c-ancient began 120 days ago
