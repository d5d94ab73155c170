"""Per-unit cost end to end: an instrumented app generates images, transcribes and synthesises speech
against the fake API; the price book's per-unit prices (by image size and quality) give each request
its exact cost in the modality listings and the usage totals; a model without a price stays unpriced."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal

import openai
import psycopg
import pytest
from fake_llm_api import TRANSCRIPTION_DURATION_USAGE, FakeLLMAPI

import tokenscale
from api.api_servers import ApiServers
from otlp_clients import background_loop, running
from tokenscale.api.gen.tokenscale.v1 import usage_api_pb2 as pb
from tokenscale.auth import create_key
from tokenscale.mapping.pricebook import CustomPrice
from tokenscale.pipeline import ExportPipeline
from tokenscale.receiver.server import Receiver
from tokenscale.store import migrate
from tokenscale.store.prices import PriceBookCache, set_price
from tokenscale.store.writer import UsageWriter, open_pool
from usage_db import assert_rollups_match_events

IMAGE = "gen_ai.usage.image.count"
#: OpenAI's list prices of DALL-E 3 per image, by size and quality (USD).
DALLE_PRICES = {
    IMAGE: Decimal("0.04"),  # 1024x1024, standard
    f"{IMAGE}[quality=hd]": Decimal("0.08"),  # 1024x1024, hd
    f"{IMAGE}[size=1024x1792]": Decimal("0.08"),
    f"{IMAGE}[size=1024x1792,quality=hd]": Decimal("0.12"),
}
WHISPER_PER_SECOND = Decimal("0.0001")  # $0.006 per minute
TTS_PER_CHARACTER = Decimal("0.000015")  # $15 per million characters
SORA_PER_SECOND = Decimal("0.10")


@pytest.fixture
def receiver(db_url: str) -> Iterator[Receiver]:
    migrate(db_url)
    pool = open_pool(db_url)
    with psycopg.connect(db_url) as conn:
        set_price(conn, CustomPrice("dall-e-3", input=Decimal(0), output=Decimal(0), units=DALLE_PRICES))
        set_price(
            conn,
            CustomPrice(
                "whisper-1",
                input=Decimal(0),
                output=Decimal(0),
                units={"gen_ai.usage.audio.seconds": WHISPER_PER_SECOND},
            ),
        )
        set_price(
            conn,
            CustomPrice(
                "tts-1",
                input=Decimal(0),
                output=Decimal(0),
                units={"gen_ai.usage.text.characters": TTS_PER_CHARACTER},
            ),
        )
        set_price(
            conn,
            CustomPrice(
                "sora-2",
                input=Decimal(0),
                output=Decimal(0),
                units={"gen_ai.usage.video.seconds": SORA_PER_SECOND},
            ),
        )
        # A price for tts-1-hd's tokens only: nothing for its characters, so it stays unpriced.
        set_price(conn, CustomPrice("tts-1-hd", input=Decimal(1), output=Decimal(2)))
    try:
        writer = UsageWriter(pool, prices=PriceBookCache(pool, ttl=0))
        with background_loop() as loop, running(loop, ExportPipeline(writer)) as live:
            yield live
    finally:
        pool.close()


def test_unit_billed_requests_cost_their_units_at_the_price_books_unit_prices(
    receiver: Receiver, db_url: str, fake_api: FakeLLMAPI
) -> None:
    handle = tokenscale.instrument(f"http://127.0.0.1:{receiver.grpc_port}", service_name="studio")
    speech_text = "Hello there, general Kenobi"
    try:
        oa = openai.OpenAI(base_url=fake_api.openai_base_url, api_key="k", max_retries=0)
        oa.images.generate(model="dall-e-3", prompt="a fox", size="1024x1792", quality="hd", n=2)
        oa.images.generate(model="dall-e-3", prompt="a fox", size="1024x1024", quality="standard")
        oa.images.generate(model="dall-e-3", prompt="a fox", size="1024x1024", quality="hd")
        oa.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"mp3", "audio/mpeg"))
        oa.audio.speech.create(model="tts-1", voice="alloy", input=speech_text)
        oa.audio.speech.create(model="tts-1-hd", voice="alloy", input=speech_text)
        assert handle.force_flush()
    finally:
        handle.shutdown()

    # Independently of the price book's code: count x the price the parameters select.
    images = [
        2 * DALLE_PRICES[f"{IMAGE}[size=1024x1792,quality=hd]"],
        1 * DALLE_PRICES[IMAGE],
        1 * DALLE_PRICES[f"{IMAGE}[quality=hd]"],
    ]
    whisper = Decimal(TRANSCRIPTION_DURATION_USAGE["seconds"]) * WHISPER_PER_SECOND
    tts = len(speech_text) * TTS_PER_CHARACTER
    assert images == [Decimal("0.24"), Decimal("0.04"), Decimal("0.08")]
    assert (whisper, tts) == (Decimal("0.0014"), Decimal("0.000405"))

    with psycopg.connect(db_url) as conn:
        [tenant] = conn.execute("SELECT DISTINCT tenant FROM tokenscale.usage_events").fetchone() or [None]
        stored = conn.execute(
            "SELECT model, cost_usd, cost_source FROM tokenscale.usage_events WHERE counted ORDER BY time"
        ).fetchall()
        totals = conn.execute(
            "SELECT sum(cost_usd), sum(requests), sum(unpriced_events) FROM tokenscale.usage_daily"
        ).fetchone()
        key = create_key(conn, str(tenant), ["read"])
    assert stored == [
        ("dall-e-3", images[0], "price_book"),
        ("dall-e-3", images[1], "price_book"),
        ("dall-e-3", images[2], "price_book"),
        ("whisper-1", whisper, "price_book"),
        ("tts-1", tts, "price_book"),
        ("tts-1-hd", None, None),
    ]
    # tts-1-hd has a price, but none for characters: one unpriced request.
    assert totals == (sum(images) + whisper + tts, 6, 1)
    assert_rollups_match_events(db_url)

    servers = ApiServers(db_url).start()
    try:
        path = f"/v2/api/sources/metrics/ai/images?teamId={tenant}&sort=timestamp,asc"
        listed = servers.http("GET", path, key).json()["_embedded"]["aIImageMetricResourceList"]
        assert [(i["imageCount"], i["imageSize"], i["imageQuality"], i["totalCost"]) for i in listed] == [
            (2, "1024x1792", "hd", float(images[0])),
            (1, "1024x1024", "standard", float(images[1])),
            (1, "1024x1024", "hd", float(images[2])),
        ]
        path = f"/v2/api/sources/metrics/ai/audio?teamId={tenant}&sort=timestamp,asc"
        audio = servers.http("GET", path, key).json()["_embedded"]["aIAudioMetricResourceList"]
        assert [(a["model"], a["audioSeconds"], a["characterCount"], a["totalCost"]) for a in audio] == [
            ("whisper-1", float(TRANSCRIPTION_DURATION_USAGE["seconds"]), None, float(whisper)),
            ("tts-1", None, len(speech_text), float(tts)),
            ("tts-1-hd", None, len(speech_text), None),
        ]
    finally:
        servers.stop()


def test_a_generated_video_is_one_request_of_its_seconds_however_often_it_is_polled(
    receiver: Receiver, db_url: str, fake_api: FakeLLMAPI
) -> None:
    handle = tokenscale.instrument(f"http://127.0.0.1:{receiver.grpc_port}", service_name="studio")
    try:
        fake_api.unique_ids = True  # two jobs, two ids: two requests
        oa = openai.OpenAI(base_url=fake_api.openai_base_url, api_key="k", max_retries=0)
        # create_and_poll: one create and two retrieves (in_progress, completed) of the same job.
        video = oa.videos.create_and_poll(
            model="sora-2", prompt="a fox", seconds="8", size="1280x720", poll_interval_ms=1
        )
        assert video.status == "completed"
        short = oa.videos.create(model="sora-2", prompt="a cat", seconds="4")
        assert handle.force_flush()
    finally:
        fake_api.unique_ids = False
        handle.shutdown()

    with psycopg.connect(db_url) as conn:
        [tenant] = conn.execute("SELECT DISTINCT tenant FROM tokenscale.usage_events").fetchone() or [None]
        carriers = conn.execute(
            "SELECT request_id, count(*), count(*) FILTER (WHERE counted) FROM tokenscale.usage_events "
            "GROUP BY 1 ORDER BY 1"
        ).fetchall()
        totals = conn.execute("SELECT sum(requests), sum(cost_usd) FROM tokenscale.usage_daily").fetchone()
        key = create_key(conn, str(tenant), ["read"])
    # Every span of a job names it (its id): 3 carriers of the first job, 1 counted; 1 of the second.
    assert carriers == [(video.id, 3, 1), (short.id, 1, 1)]
    long_cost, short_cost = 8 * SORA_PER_SECOND, 4 * SORA_PER_SECOND
    assert totals == (2, long_cost + short_cost)
    assert_rollups_match_events(db_url)

    servers = ApiServers(db_url).start()
    try:
        path = f"/v2/api/sources/metrics/ai/video?teamId={tenant}&sort=timestamp,asc"
        listed = servers.http("GET", path, key).json()["_embedded"]["aIVideoMetricResourceList"]
        fields = (
            "metricType",
            "operationType",
            "model",
            "videoSeconds",
            "videoCount",
            "videoSize",
            "totalCost",
        )
        assert [tuple(v[f] for f in fields) for v in listed] == [
            ("VIDEO", "VIDEO", "sora-2", 8.0, 1, "1280x720", float(long_cost)),
            ("VIDEO", "VIDEO", "sora-2", 4.0, 1, "720x1280", float(short_cost)),
        ]
        assert [v["transactionId"] for v in listed] == [video.id, short.id]
        request = pb.ListAiMetricsRequest(team_id=str(tenant), sort=["timestamp,asc"])
        reply = servers.stub.ListAiVideoMetrics(request, metadata=servers.metadata(key))
        assert [(v.video_seconds, v.video_count, v.video_size) for v in reply.items] == [
            (8.0, 1, "1280x720"),
            (4.0, 1, "720x1280"),
        ]
    finally:
        servers.stop()


def test_an_unpriced_unit_billed_record_amended_by_a_better_carrier_is_counted_unpriced_once(
    receiver: Receiver, db_url: str
) -> None:
    """An SDK's own span of a speech request (rank 3) arrives before tokenscale's (rank 2): the
    record takes the better carrier's values; the rollups take the old record out and the new in."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: PLC0415
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue  # noqa: PLC0415

    def kv(key: str, value: str | int) -> KeyValue:
        if isinstance(value, str):
            return KeyValue(key=key, value=AnyValue(string_value=value))
        return KeyValue(key=key, value=AnyValue(int_value=value))

    start = (time.time_ns() // 10**9 - 600) * 10**9
    for scope, span_id, characters in (
        ("openai.sdk", b"2" * 8, 11),
        ("tokenscale.instrumentation.openai", b"1" * 8, 12),
    ):
        request = ExportTraceServiceRequest()
        rs = request.resource_spans.add()
        rs.resource.attributes.append(kv("service.name", "voice"))
        scope_spans = rs.scope_spans.add()
        scope_spans.scope.name = scope
        span = scope_spans.spans.add(
            name="speech tts-1-hd",
            trace_id=b"t" * 16,
            span_id=span_id,
            start_time_unix_nano=start,
            end_time_unix_nano=start + 10**9,
        )
        span.attributes.extend(
            [
                kv("gen_ai.operation.name", "speech"),
                kv("gen_ai.request.model", "tts-1-hd"),
                kv("gen_ai.response.id", "speech-1"),
                kv("gen_ai.usage.text.characters", characters),
            ]
        )
        assert receiver.pipeline.export("traces", request, "default").rejected == 0
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT source, counted, attributes->'gen_ai.usage.text.characters', amended_at IS NOT NULL "
            "FROM tokenscale.usage_events ORDER BY counted DESC"
        ).fetchall()
        daily = conn.execute(
            "SELECT sum(requests), sum(unpriced_events), sum(events) FROM tokenscale.usage_daily"
        ).fetchone()
    # The record (first stored from the SDK's span) now holds tokenscale's values; the carrier is kept.
    assert rows == [
        ("tokenscale.instrumentation", True, 12, True),
        ("tokenscale.instrumentation", False, 12, False),
    ]
    assert daily == (1, 1, 1)
    assert_rollups_match_events(db_url)
