"""AI metrics listings (the Revenium seed) over HTTP and gRPC: filters, sorting, deep pages, counted rows."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest
from api_servers import ApiServers
from psycopg import sql

from tokenscale.api._values import Params
from tokenscale.api.ai_metrics import _boundary_sql, _page_sql, parse_ai_metrics_query
from tokenscale.api.gen.tokenscale.v1 import usage_api_pb2 as pb
from tokenscale.mapping import UsageEvent

PATH = "/v2/api/sources/metrics/ai"
META = "tokenscale.meta."


def _ids(body: dict[str, Any], collection: str = "aIMetricResourceList") -> list[str]:
    return [item["transactionId"] for item in body["_embedded"][collection]]


@pytest.fixture
def seeded(api: ApiServers, make_event: Callable[..., UsageEvent]) -> tuple[ApiServers, str]:
    """Tenant acme with one request of each kind the filters tell apart; globex with one."""
    events = [
        make_event(
            "acme",
            age_days=5,
            request_id="chat-1",
            provider="openai",
            model="gpt-4o",
            operation="chat",
            user_id="u1",
            user_email="ann@acme.com",
            input_tokens=100,
            output_tokens=20,
            cache_read_tokens=5,
            cache_write_tokens=3,
            reasoning_tokens=4,
            cost_usd=0.5,
            duration_ms=1200.0,
            attributes={
                META + "trace_id": "trace-a",
                META + "trace_type": "workflow",
                META + "organization_name": "Acme Corp",
                META + "subscription_id": "sub-1",
                META + "product_id": "prod-1",
                META + "model_source": "LITELLM",
                "deployment.environment.name": "production",
            },
        ),
        make_event(
            "acme",
            age_days=4,
            request_id="embed-1",
            provider="openai",
            model="text-embedding-3",
            operation="embeddings",
            input_tokens=50,
            cost_usd=0.01,
            duration_ms=90.0,
            error_type="timeout",
            attributes={META + "billing_skipped": True},
        ),
        make_event(
            "acme",
            age_days=3,
            request_id="cc-1",
            tool="claude_code",
            provider="anthropic",
            model="claude-opus-4",
            operation=None,
            input_tokens=1000,
            output_tokens=100,
            cost_usd=2.0,
            duration_ms=20_000.0,
        ),
        make_event("acme", age_days=2, request_id="img-1", operation="image_generation", model="dall-e-3"),
        make_event("acme", age_days=1, request_id="tts-1", operation="audio.speech", model="tts-1"),
        make_event("globex", age_days=1, request_id="globex-1", model="gpt-4o"),
    ]
    api.write(events)
    return api, api.key("acme", ["read"])


def test_default_listing_is_the_paged_envelope_newest_first(seeded: tuple[ApiServers, str]) -> None:
    api, key = seeded
    response = api.http("GET", f"{PATH}?teamId=acme", key)
    assert response.status_code == 200, response.text
    body = response.json()
    # Coding-assistant completions are left out unless asked for; globex is never seen.
    assert _ids(body) == ["tts-1", "img-1", "embed-1", "chat-1"]
    assert body["page"] == {"size": 20, "totalElements": 4, "totalPages": 1, "number": 0}
    assert set(body["_links"]) == {"self"}
    chat = body["_embedded"]["aIMetricResourceList"][-1]
    assert chat == {
        "id": chat["id"],
        "metricType": "COMPLETION",
        "transactionId": "chat-1",
        "traceId": "trace-a",
        "traceType": "workflow",
        "requestTime": chat["requestTime"],
        "requestDuration": 1200,
        "model": "gpt-4o",
        "provider": "openai",
        "agent": "my-service",
        "operationType": "CHAT",
        "environment": "PRODUCTION",
        "subscriber": {"id": "u1", "email": "ann@acme.com"},
        "organizationName": "Acme Corp",
        "subscriptionId": "sub-1",
        "productId": "prod-1",
        "modelSource": "LITELLM",
        "errorReason": None,
        "totalCost": 0.5,
        "billingSkipped": False,
        "isCodingAssistant": False,
        # Agent and tool rows' fields (tests/test_agent_spans.py): null on a request's row.
        "spanId": None,
        "agentName": None,
        "agentId": None,
        "toolName": None,
        "toolCallId": None,
    }
    assert len(chat["id"]) == 32 and chat["requestTime"].endswith("Z")
    everything = api.http("GET", f"{PATH}?teamId=acme&includeCodingAssistants=true", key).json()
    assert _ids(everything) == ["tts-1", "img-1", "cc-1", "embed-1", "chat-1"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("metricType=IMAGE", ["img-1"]),
        ("metricType=audio", ["tts-1"]),
        ("transactionId=embed-1", ["embed-1"]),
        ("traceId=trace-a", ["chat-1"]),
        ("traceType=workflow", ["chat-1"]),
        ("traceType=unknown", ["tts-1", "img-1", "cc-1", "embed-1"]),
        ("organizationName=Acme%20Corp", ["chat-1"]),
        ("subscriberId=u1", ["chat-1"]),
        ("subscriberEmail=ann@acme.com", ["chat-1"]),
        ("subscriptionId=sub-1", ["chat-1"]),
        ("productId=prod-1", ["chat-1"]),
        ("agent=claude_code", ["cc-1"]),
        ("provider=openai", ["embed-1", "chat-1"]),
        ("model=gpt-4o", ["chat-1"]),
        ("modelSource=LITELLM", ["chat-1"]),
        ("errorReason=timeout", ["embed-1"]),
        ("operationType=EMBED", ["embed-1"]),
        ("operationType=CHAT", ["cc-1", "chat-1"]),
        ("environment=production", ["chat-1"]),
        ("billingSkipped=true", ["embed-1"]),
        ("billingSkipped=false", ["tts-1", "img-1", "cc-1", "chat-1"]),
        ("requestDurationMin=1000", ["cc-1", "chat-1"]),
        ("requestDurationMax=1000", ["embed-1"]),
        ("totalCostMin=0.4&totalCostMax=1", ["chat-1"]),
        ("totalCostMax=0.2", ["embed-1"]),
        ("startDate={d4}", ["tts-1", "img-1", "cc-1"]),
        ("endDate={d4}", ["embed-1", "chat-1"]),
        ("sort=totalCost,desc", ["cc-1", "chat-1", "embed-1", "tts-1", "img-1"]),
        ("sort=requestTime,asc", ["chat-1", "embed-1", "cc-1", "img-1", "tts-1"]),
        ("sort=requestTime", ["chat-1", "embed-1", "cc-1", "img-1", "tts-1"]),
        ("sort=model,asc&sort=requestTime,desc", ["cc-1", "img-1", "chat-1", "embed-1", "tts-1"]),
    ],
)
def test_every_filter_and_sort(seeded: tuple[ApiServers, str], query: str, expected: list[str]) -> None:
    api, key = seeded
    d4 = (datetime.now(UTC) - timedelta(days=3.5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    url = f"{PATH}?teamId=acme&includeCodingAssistants=true&{query.format(d4=d4)}"
    response = api.http("GET", url, key)
    assert response.status_code == 200, response.text
    assert _ids(response.json()) == expected


def test_modality_listings(seeded: tuple[ApiServers, str]) -> None:
    api, key = seeded
    completions = api.http("GET", f"{PATH}/completions?teamId=acme", key).json()
    items = completions["_embedded"]["aICompletionMetricResourceList"]
    assert [i["transactionId"] for i in items] == ["embed-1", "chat-1"]
    assert {k: v for k, v in items[1].items() if k.endswith("TokenCount")} == {
        "inputTokenCount": 100,
        "outputTokenCount": 20,
        "reasoningTokenCount": 4,
        "cacheCreationTokenCount": 3,
        "cacheReadTokenCount": 5,
        "totalTokenCount": 128,
    }
    for modality, collection, expected in [
        ("images", "aIImageMetricResourceList", ["img-1"]),
        ("audio", "aIAudioMetricResourceList", ["tts-1"]),
        ("video", "aIVideoMetricResourceList", []),
    ]:
        body = api.http("GET", f"{PATH}/{modality}?teamId=acme", key).json()
        assert _ids(body, collection) == expected
    # metricType on a typed listing narrows, never widens.
    assert (
        _ids(
            api.http("GET", f"{PATH}/images?teamId=acme&metricType=AUDIO", key).json(),
            "aIImageMetricResourceList",
        )
        == []
    )


def test_grpc_listing_matches_http(seeded: tuple[ApiServers, str]) -> None:
    api, key = seeded
    reply = api.stub.ListAiMetrics(
        pb.ListAiMetricsRequest(
            team_id="acme", include_coding_assistants=True, size=2, page=1, sort=["totalCost,desc"]
        ),
        metadata=api.metadata(key),
    )
    assert [i.transaction_id for i in reply.items] == ["embed-1", "tts-1"]
    assert (reply.page.size, reply.page.total_elements, reply.page.total_pages, reply.page.number) == (
        2,
        5,
        3,
        1,
    )
    completions = api.stub.ListAiCompletionMetrics(
        pb.ListAiMetricsRequest(team_id="acme", model="gpt-4o"), metadata=api.metadata(key)
    )
    [chat] = completions.items
    assert (chat.subscriber_email, chat.total_token_count, chat.environment) == (
        "ann@acme.com",
        128,
        "PRODUCTION",
    )
    images = api.stub.ListAiImageMetrics(pb.ListAiMetricsRequest(team_id="acme"), metadata=api.metadata(key))
    assert [i.transaction_id for i in images.items] == ["img-1"]
    with pytest.raises(grpc.RpcError) as caught:
        api.stub.ListAiMetrics(pb.ListAiMetricsRequest(), metadata=api.metadata(key))
    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "teamId: is required",
    )


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("", "teamId"),
        ("teamId=acme&size=0", "size"),
        ("teamId=acme&size=1001", "size"),
        ("teamId=acme&page=-1", "page"),
        ("teamId=acme&sort=bogus,asc", "sort"),
        ("teamId=acme&metricType=TEXT", "metricType"),
        ("teamId=acme&startDate=yesterday", "startDate"),
        ("teamId=acme&requestDurationMax=300001", "requestDurationMax"),
        ("teamId=acme&totalCostMin=-1", "totalCostMin"),
        ("teamId=acme&billingSkipped=maybe", "billingSkipped"),
        ("teamId=acme&model=", "model"),
        ("teamId=acme&model=a%00b", "model"),
    ],
)
def test_invalid_parameters_are_400_naming_the_parameter(
    seeded: tuple[ApiServers, str], query: str, field: str
) -> None:
    api, key = seeded
    response = api.http("GET", f"{PATH}?{query}", key)
    assert response.status_code == 400, response.text
    body = response.json()
    assert (body["status"], body["error"], body["field"]) == (400, "Bad Request", field)
    assert body["path"] == PATH


def test_deep_pages_by_keyset_match_the_full_ordering(
    api: ApiServers, make_event: Callable[..., UsageEvent]
) -> None:
    # Identical timestamps across many rows exercise the dedupe_key tie-break of the keyset.
    events = [make_event("acme", age_days=(n % 9) / 10, request_id=f"r{n:03d}") for n in range(95)]
    api.write(events)
    key = api.key("acme", ["read"])
    for direction in ("desc", "asc"):
        full = _ids(api.http("GET", f"{PATH}?teamId=acme&size=1000&sort=requestTime,{direction}", key).json())
        assert len(full) == 95
        paged: list[str] = []
        for page in range(14):
            body = api.http(
                "GET", f"{PATH}?teamId=acme&size=7&page={page}&sort=requestTime,{direction}", key
            ).json()
            assert body["page"] == {"size": 7, "totalElements": 95, "totalPages": 14, "number": page}
            paged += _ids(body)
        assert paged == full
        beyond = api.http("GET", f"{PATH}?teamId=acme&size=7&page=14", key).json()
        assert _ids(beyond) == []
    by_model = _ids(api.http("GET", f"{PATH}?teamId=acme&size=10&page=9&sort=transactionId,asc", key).json())
    assert by_model == ["r090", "r091", "r092", "r093", "r094"]


def test_a_request_is_listed_once_and_amended_by_a_better_carrier(
    api: ApiServers, make_event: Callable[..., UsageEvent]
) -> None:
    # A request reported as a span (rank 3) and then as an event (rank 1) with the same identity:
    # ONE record, first the span's, then amended with the event's values; the event itself is kept
    # as uncounted evidence and never listed.
    same = b"request-1"
    api.write(
        [make_event("acme", stream="sess", rank=3, carrier="gen_ai.span", request_id="span", identity=same)]
    )
    key = api.key("acme", ["read"])
    assert _ids(api.http("GET", f"{PATH}?teamId=acme", key).json()) == ["span"]
    api.write(
        [
            make_event(
                "acme",
                stream="sess",
                rank=1,
                carrier="claude_code.api_request",
                request_id="event",
                identity=same,
            )
        ]
    )
    rows = api.query(
        "SELECT request_id, source, counted, amended_at IS NOT NULL FROM tokenscale.usage_events"
    )
    assert sorted(rows) == [
        ("event", "claude_code.api_request", False, False),
        ("event", "claude_code.api_request", True, True),
    ]
    body = api.http("GET", f"{PATH}?teamId=acme", key).json()
    assert _ids(body) == ["event"]
    assert body["page"]["totalElements"] == 1


def test_the_deep_page_boundary_is_an_index_only_scan(
    api: ApiServers, make_event: Callable[..., UsageEvent]
) -> None:
    api.write([make_event("acme", age_days=n / 50) for n in range(200)])
    query = parse_ai_metrics_query(Params({"teamId": ["acme"], "page": [20], "size": [5]}), "all")
    query.params["tenant"] = "acme"
    where = sql.SQL(" AND ").join([sql.SQL("e.tenant = %(tenant)s"), sql.SQL("e.counted"), *query.conditions])
    with psycopg.connect(api.url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE tokenscale.usage_events")
        # Tiny tables are cheaper to scan whole; the point is which path exists for large ones.
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = off")
        explain_boundary = sql.SQL("EXPLAIN ") + _boundary_sql(query, where, 100)
        boundary = "\n".join(row[0] for row in conn.execute(explain_boundary, query.params))
        page = _page_sql(conn, query, where, 100)
        assert page is not None
        plan = "\n".join(row[0] for row in conn.execute(sql.SQL("EXPLAIN ") + page, query.params))
    assert "Index Only Scan" in boundary, boundary
    # The page starts at the boundary row through the index, not by skipping rows.
    assert re.search(r'Index Cond: .*\("?time"? <= ', plan), plan
