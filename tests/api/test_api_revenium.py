"""Revenium's AI metrics as its public clients call them: the /profitstream base path, HAL pages read by
following links, sort aliases, case-insensitive filters, date-only bounds, the OTLP trace id."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from api_servers import ApiServers
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from seed_clients import HalPageReader

from tokenscale.api.gen.tokenscale.v1 import usage_api_pb2 as pb
from tokenscale.mapping import UsageEvent, map_request
from tokenscale.mapping._core import OTEL_TRACE_ID_KEY

PATH = "/v2/api/sources/metrics/ai"
META = "tokenscale.meta."


def reader(api: ApiServers, key: str, accept: str = "application/hal+json") -> HalPageReader:
    return HalPageReader(api.session, {"Authorization": f"Bearer {key}", "Accept": accept})


@pytest.fixture
def acme(api: ApiServers, make_event: Callable[..., UsageEvent]) -> str:
    api.write(
        [
            make_event(
                "acme",
                age_days=7 - i,
                request_id=f"r{i}",
                provider="openai" if i % 2 else "anthropic",
                model="gpt-4o" if i % 2 else "claude-sonnet-4-5",
                tool="my-service",
                user_email="ann@acme.com",
                operation="chat",
                input_tokens=10 * (i + 1),
                cost_usd=0.1 * (i + 1),
            )
            for i in range(7)
        ]
    )
    api.write([make_event("globex", request_id="g0", provider="openai", input_tokens=5)])
    return api.key("acme", ["read"])


def test_the_profitstream_base_path_and_hal_pages(api: ApiServers, acme: str) -> None:
    for base in ("", "/profitstream"):
        hal = reader(api, acme)
        url = f"{api.base}{base}{PATH}/completions?teamId=acme&size=3"
        pages = list(hal.pages(url))
        assert [p["page"]["number"] for p in pages] == [0, 1, 2]
        assert pages[0]["page"] == {"size": 3, "totalElements": 7, "totalPages": 3, "number": 0}
        items = hal.items(url, "aICompletionMetricResourceList")
        assert [i["transactionId"] for i in items] == [f"r{i}" for i in range(6, -1, -1)]
        assert [i["inputTokenCount"] for i in items] == [70, 60, 50, 40, 30, 20, 10]
        # Links stay on the base path the client called.
        assert pages[0]["_links"]["next"]["href"].startswith(f"{api.base}{base}{PATH}/completions?")


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("application/hal+json", "application/hal+json"),
        ("application/json", "application/json"),
        ("*/*", "application/json"),
        ("application/hal+json;q=0.9, application/json", "application/json"),
        ("application/json;q=0.5, application/hal+json", "application/hal+json"),
        ("application/hal+json, */*;q=0.1", "application/hal+json"),
    ],
)
def test_hal_json_is_answered_as_such(api: ApiServers, acme: str, accept: str, media_type: str) -> None:
    answer = api.http("GET", f"{PATH}?teamId=acme", acme, headers={"Accept": accept})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == media_type
    assert answer.json()["page"]["totalElements"] == 7


def test_sort_aliases_real_clients_use(api: ApiServers, acme: str) -> None:
    def order(sort: str) -> list[str]:
        body = api.http("GET", f"{PATH}?teamId=acme&size=50&sort={sort}", acme).json()
        return [i["transactionId"] for i in body["_embedded"]["aIMetricResourceList"]]

    oldest_first = [f"r{i}" for i in range(7)]
    assert order("timestamp,asc") == order("requestTime,asc") == oldest_first
    assert order("timestamp,desc") == oldest_first[::-1]
    assert order("cost,desc") == order("totalCost,desc") == oldest_first[::-1]
    assert order("totalTokens,asc") == oldest_first
    refused = api.http("GET", f"{PATH}?teamId=acme&sort=nonsense", acme)
    assert refused.status_code == 400 and refused.json()["field"] == "sort"


def test_normalised_values_match_case_insensitively(api: ApiServers, acme: str) -> None:
    def ids(query: str) -> set[str]:
        body = api.http("GET", f"{PATH}?teamId=acme&size=50&{query}", acme).json()
        return {i["transactionId"] for i in body["_embedded"]["aIMetricResourceList"]}

    openai = {"r1", "r3", "r5"}
    for spelled in ("openai", "OpenAI", "OPENAI"):
        assert ids(f"provider={spelled}") == openai
    assert ids("model=GPT-4o") == openai
    assert ids("agent=My-Service") == {f"r{i}" for i in range(7)}
    assert ids("subscriberEmail=Ann@Acme.com") == {f"r{i}" for i in range(7)}
    assert ids("transactionId=R1") == set()  # ids are not normalised: exact


def test_a_date_only_end_includes_that_day(api: ApiServers, make_event: Callable[..., UsageEvent]) -> None:
    noon = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=3)
    late = noon.replace(hour=23, minute=59, second=59, microsecond=999_000)
    events = [make_event("acme", request_id=name, input_tokens=1) for name in ("noon", "late", "next")]
    for event, moment in zip(events, (noon, late, late + timedelta(seconds=1)), strict=True):
        event.time_ns = int(moment.timestamp() * 10**6) * 1000
    api.write(events)
    key = api.key("acme", ["read"])
    day = noon.date().isoformat()

    def ids(query: str) -> list[str]:
        body = api.http("GET", f"{PATH}?teamId=acme&sort=timestamp,asc&{query}", key).json()
        return [i["transactionId"] for i in body["_embedded"]["aIMetricResourceList"]]

    assert ids(f"startDate={day}&endDate={day}") == ["noon", "late"]
    assert ids(f"endDate={day}") == ["noon", "late"]
    assert ids(f"startDate={day}T12:00:00Z&endDate={day}T12:00:00Z") == ["noon"]  # a time is exact
    next_day = (noon.date() + timedelta(days=1)).isoformat()
    assert ids(f"startDate={next_day}") == ["next"]


def test_trace_id_is_the_otlp_one_unless_the_app_sets_its_own(
    api: ApiServers, make_event: Callable[..., UsageEvent]
) -> None:
    otlp = "0af7651916cd43dd8448eb211c80319c"
    api.write(
        [
            make_event("acme", request_id="plain", input_tokens=1, attributes={"otel.trace_id": otlp}),
            make_event(
                "acme",
                request_id="own",
                input_tokens=1,
                attributes={"otel.trace_id": "1" * 32, META + "trace_id": "checkout-42"},
            ),
        ]
    )
    key = api.key("acme", ["read"])
    body = api.http("GET", f"{PATH}?teamId=acme", key).json()
    traces = {i["transactionId"]: i["traceId"] for i in body["_embedded"]["aIMetricResourceList"]}
    assert traces == {"plain": otlp, "own": "checkout-42"}

    def ids(trace: str) -> list[str]:
        found = api.http("GET", f"{PATH}?teamId=acme&traceId={trace}", key).json()
        return [i["transactionId"] for i in found["_embedded"]["aIMetricResourceList"]]

    assert ids(otlp) == ids(otlp.upper()) == ["plain"]
    assert ids("checkout-42") == ["own"]
    assert ids("1" * 32) == []  # the app's own trace id replaces the OTLP one


def test_a_spans_otlp_trace_id_reaches_the_listing(api: ApiServers) -> None:
    trace_id = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    span = scope.spans.add(name="chat gpt-4o", trace_id=trace_id, span_id=b"\x01" * 8)
    now = time.time_ns()
    span.start_time_unix_nano, span.end_time_unix_nano = now - 10**9, now
    for key, value in [("gen_ai.operation.name", "chat"), ("gen_ai.request.model", "gpt-4o")]:
        span.attributes.add(key=key, value=AnyValue(string_value=value))
    span.attributes.add(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=12))
    result = map_request("traces", request, "acme")
    assert [e.attributes[OTEL_TRACE_ID_KEY] for e in result.events] == [trace_id.hex()]
    api.writer.write(result)
    key = api.key("acme", ["read"])
    body = api.http("GET", f"{PATH}/completions?teamId=acme&traceId={trace_id.hex()}", key).json()
    [item] = body["_embedded"]["aICompletionMetricResourceList"]
    assert (item["traceId"], item["inputTokenCount"]) == (trace_id.hex(), 12)


def test_modality_listings_carry_their_type_specific_fields(
    api: ApiServers, make_event: Callable[..., UsageEvent]
) -> None:
    api.write(
        [
            make_event(
                "acme",
                request_id="img",
                operation="image_generation",
                model="gpt-image-1",
                input_tokens=50,
                output_tokens=4160,
                attributes={
                    "gen_ai.usage.image.count": 2,
                    "gen_ai.request.image.size": "1024x1024",
                    "gen_ai.request.image.quality": "high",
                    "gen_ai.usage.image.output_tokens": 4160,
                },
            ),
            make_event(
                "acme",
                request_id="stt",
                operation="transcription",
                model="gpt-4o-transcribe",
                input_tokens=120,
                output_tokens=30,
                attributes={"gen_ai.usage.audio.seconds": 12.5, "gen_ai.usage.audio.input_tokens": 120},
            ),
            make_event("acme", request_id="chat", operation="chat", input_tokens=7),
        ]
    )
    key = api.key("acme", ["read"])
    hal = reader(api, key)
    [image] = hal.items(f"{api.base}{PATH}/images?teamId=acme", "aIImageMetricResourceList")
    assert {k: image[k] for k in image if k.startswith(("image", "input", "output", "total"))} == {
        "imageCount": 2,
        "imageSize": "1024x1024",
        "imageQuality": "high",
        "imageInputTokenCount": None,
        "imageOutputTokenCount": 4160,
        "inputTokenCount": 50,
        "outputTokenCount": 4160,
        "totalTokenCount": 4210,
        "totalCost": image["totalCost"],
    }
    assert (image["metricType"], image["operationType"]) == ("IMAGE", "IMAGE")
    [audio] = hal.items(f"{api.base}{PATH}/audio?teamId=acme", "aIAudioMetricResourceList")
    assert (audio["audioSeconds"], audio["audioInputTokenCount"], audio["characterCount"]) == (
        12.5,
        120,
        None,
    )
    assert (audio["inputTokenCount"], audio["outputTokenCount"], audio["totalTokenCount"]) == (120, 30, 150)
    # The listing of every modality keeps to the common fields.
    everything = hal.items(f"{api.base}{PATH}?teamId=acme", "aIMetricResourceList")
    assert sorted(i["transactionId"] for i in everything) == ["chat", "img", "stt"]
    assert all("imageCount" not in i and "inputTokenCount" not in i for i in everything)
    reply = api.stub.ListAiImageMetrics(pb.ListAiMetricsRequest(team_id="acme"), metadata=api.metadata(key))
    [item] = reply.items
    assert (item.image_count, item.image_size, item.output_token_count) == (2, "1024x1024", 4160)
    assert not item.HasField("image_input_token_count")


def test_team_id_names_the_tenant_by_uuid_or_name(api: ApiServers, acme: str) -> None:
    api.key("globex")
    ids = dict(api.query("SELECT name, id::text FROM tokenscale.tenants"))
    for team in ("acme", ids["acme"], ids["acme"].upper()):
        answer = api.http("GET", f"{PATH}?teamId={team}", acme)
        assert answer.status_code == 200, team
        assert answer.json()["page"]["totalElements"] == 7
    for other in (ids["globex"], "globex", "00000000-0000-0000-0000-000000000001"):
        refused = api.http("GET", f"{PATH}?teamId={other}", acme)
        assert refused.status_code == 403, other
        assert refused.json()["error"] == "Forbidden"
