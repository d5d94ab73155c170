"""End to end: an app instrumented with one call talks to the fake provider API and exports to a real
tokenscale receiver; the ledger holds exactly the usage the API returned, per kind, user, conversation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import anthropic
import openai
import psycopg
import pytest
from fake_llm_api import ANTHROPIC_USAGE, CHAT_USAGE, FakeLLMAPI

import tokenscale
from otlp_clients import background_loop, running
from tokenscale.pipeline import ExportPipeline
from tokenscale.receiver.server import Receiver
from tokenscale.store import migrate
from tokenscale.store.writer import UsageWriter, open_pool


@pytest.fixture
def receiver(db_url: str) -> Iterator[Receiver]:
    migrate(db_url)
    pool = open_pool(db_url)
    try:
        with background_loop() as loop, running(loop, ExportPipeline(UsageWriter(pool))) as live:
            yield live
    finally:
        pool.close()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_instrumented_app_usage_lands_in_the_ledger_exactly(
    receiver: Receiver, db_url: str, fake_api: FakeLLMAPI, protocol: str
) -> None:
    endpoint = (
        f"http://127.0.0.1:{receiver.grpc_port}"
        if protocol == "grpc"
        else f"http://127.0.0.1:{receiver.http_port}"
    )
    handle = tokenscale.instrument(endpoint, service_name="support-bot", protocol=protocol)  # type: ignore[arg-type]
    try:
        fake_api.unique_ids = True  # the ledger tells requests apart by their response ids
        oa = openai.OpenAI(base_url=fake_api.openai_base_url, api_key="k")
        an = anthropic.Anthropic(base_url=fake_api.anthropic_base_url, api_key="k")
        with tokenscale.usage_context(user="ana@example.com", conversation_id="conv-a", bot_id="faq"):
            oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            an.messages.create(
                model="claude-opus-4-8", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
            )
        with tokenscale.usage_context(user="bo@example.com", conversation_id="conv-b"):
            oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert handle.force_flush()
    finally:
        fake_api.unique_ids = False
        handle.shutdown()

    cached = CHAT_USAGE["prompt_tokens_details"]["cached_tokens"]
    chat = (
        CHAT_USAGE["prompt_tokens"] - cached,
        cached,
        0,
        CHAT_USAGE["completion_tokens"],
        CHAT_USAGE["completion_tokens_details"]["reasoning_tokens"],
    )
    claude = (
        ANTHROPIC_USAGE["input_tokens"],
        ANTHROPIC_USAGE["cache_read_input_tokens"],
        ANTHROPIC_USAGE["cache_creation_input_tokens"],
        ANTHROPIC_USAGE["output_tokens"],
        ANTHROPIC_USAGE.get("output_tokens_details", {}).get("thinking_tokens", 0),
    )
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT user_email, conversation_id, provider, requests, input_tokens, cache_read_tokens, "
            "cache_write_tokens, output_tokens, reasoning_tokens, attributes->>'tokenscale.meta.bot_id' "
            "FROM tokenscale.usage_events WHERE counted ORDER BY user_email, provider"
        ).fetchall()
    assert rows == [
        ("ana@example.com", "conv-a", "anthropic", 1, *claude, "faq"),
        ("ana@example.com", "conv-a", "openai", 1, *chat, "faq"),
        ("bo@example.com", "conv-b", "openai", 1, *chat, None),
    ]


def test_an_sdk_tracing_itself_is_not_added_to_our_span(receiver: Receiver, db_url: str) -> None:
    """anthropic >= 2.12 emits its own GenAI span with the same usage, as a child of ours."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: PLC0415
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue  # noqa: PLC0415

    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="bot")))
    usage = [
        KeyValue(key="gen_ai.request.model", value=AnyValue(string_value="claude-opus-4-8")),
        # both spans name the response (the SDK's _tracing sets gen_ai.response.id, as we do)
        KeyValue(key="gen_ai.response.id", value=AnyValue(string_value="msg_01")),
        KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=2350)),
        KeyValue(key="gen_ai.usage.output_tokens", value=AnyValue(int_value=400)),
    ]
    for scope, span_id in (
        ("com.anthropic.sdk.python", b"2" * 8),
        ("tokenscale.instrumentation.anthropic", b"1" * 8),
    ):
        scope_spans = rs.scope_spans.add()
        scope_spans.scope.name = scope
        span = scope_spans.spans.add(
            name="chat claude-opus-4-8",
            trace_id=b"t" * 16,
            span_id=span_id,
            start_time_unix_nano=1_795_431_600 * 10**9,
            end_time_unix_nano=1_795_431_601 * 10**9,
        )
        span.attributes.extend(usage)
    asyncio.run(asyncio.to_thread(receiver.pipeline.export, "traces", request, "default"))
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT source, counted FROM tokenscale.usage_events ORDER BY source").fetchall()
    assert rows == [("gen_ai.span", False), ("tokenscale.instrumentation", True)]
