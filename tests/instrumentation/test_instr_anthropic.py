"""The anthropic instrumentor against the real anthropic SDK talking to the local fake API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import anthropic
import pytest
from fake_llm_api import (
    ANTHROPIC_USAGE,
    MESSAGE_ID,
    MODEL_BAD_REQUEST,
    MODEL_STREAM_ERROR,
    FakeLLMAPI,
)
from instr_support import Telemetry, assert_metrics, assert_ok, span_attributes, usage_attributes
from opentelemetry.trace import StatusCode

from tokenscale.instrumentation import AnthropicInstrumentor

MODEL = "claude-opus-4-8"
MESSAGES = [{"role": "user", "content": "Say hello"}]
MAX_TOKENS = 1024

# Anthropic's input_tokens excludes cache reads and writes; semconv input_tokens includes them.
ALL_INPUT = (
    ANTHROPIC_USAGE["input_tokens"]
    + ANTHROPIC_USAGE["cache_read_input_tokens"]
    + ANTHROPIC_USAGE["cache_creation_input_tokens"]
)

pytestmark = pytest.mark.usefixtures("anthropic_instrumentor")


def run(
    coroutine_function: Callable[[anthropic.AsyncAnthropic], Coroutine[Any, Any, Any]], api: FakeLLMAPI
) -> Any:
    async def main() -> Any:
        async with anthropic.AsyncAnthropic(
            base_url=api.anthropic_base_url, api_key="sk-ant-test", max_retries=0
        ) as client:
            return await coroutine_function(client)

    return asyncio.run(main())


def expected_attributes(api: FakeLLMAPI, *, stream: bool, usage: bool = True) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": MODEL,
        "gen_ai.request.max_tokens": MAX_TOKENS,
        "server.address": "127.0.0.1",
        "server.port": api.port,
        "gen_ai.response.model": MODEL,
        "gen_ai.response.id": MESSAGE_ID,
    }
    if stream:
        attributes["gen_ai.request.stream"] = True
    if usage:
        attributes["gen_ai.response.finish_reasons"] = ("end_turn",)
        attributes.update(
            usage_attributes(
                input_tokens=ALL_INPUT,
                output_tokens=ANTHROPIC_USAGE["output_tokens"],
                cache_read=ANTHROPIC_USAGE["cache_read_input_tokens"],
                cache_creation=ANTHROPIC_USAGE["cache_creation_input_tokens"],
                reasoning=ANTHROPIC_USAGE["output_tokens_details"]["thinking_tokens"],
            )
        )
    return attributes


def assert_anthropic_metrics(telemetry: Telemetry) -> None:
    assert_metrics(
        telemetry,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": MODEL,
            "gen_ai.response.model": MODEL,
        },
        input_tokens=ALL_INPUT,
        output_tokens=ANTHROPIC_USAGE["output_tokens"],
        cache_read=ANTHROPIC_USAGE["cache_read_input_tokens"],
        cache_write=ANTHROPIC_USAGE["cache_creation_input_tokens"],
        reasoning=ANTHROPIC_USAGE["output_tokens_details"]["thinking_tokens"],
    )


def create(client: anthropic.Anthropic, **kwargs: Any) -> Any:
    return client.messages.create(model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES, **kwargs)


def test_create_sync(
    anthropic_client: anthropic.Anthropic, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    message = create(anthropic_client)
    assert message.content[0].text == "Hello from Claude."
    assert_ok(telemetry, f"chat {MODEL}")
    assert span_attributes(telemetry, stream=False) == expected_attributes(fake_api, stream=False)
    assert_anthropic_metrics(telemetry)


def test_create_async(fake_api: FakeLLMAPI, telemetry: Telemetry) -> None:
    async def call(client: anthropic.AsyncAnthropic) -> Any:
        return await client.messages.create(model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES)

    assert run(call, fake_api).id == MESSAGE_ID
    assert_ok(telemetry, f"chat {MODEL}")
    assert span_attributes(telemetry, stream=False) == expected_attributes(fake_api, stream=False)
    assert_anthropic_metrics(telemetry)


def _iterate(client: anthropic.Anthropic) -> list[Any]:
    return list(create(client, stream=True))


def _with(client: anthropic.Anthropic) -> list[Any]:
    with create(client, stream=True) as stream:
        return [event for event in stream]


def _helper_text(client: anthropic.Anthropic) -> list[Any]:
    with client.messages.stream(model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES) as stream:
        return list(stream.text_stream)


def _helper_final(client: anthropic.Anthropic) -> list[Any]:
    with client.messages.stream(model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES) as stream:
        return [stream.get_final_message()]


def _helper_events(client: anthropic.Anthropic) -> list[Any]:
    with client.messages.stream(model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES) as stream:
        return [event.type for event in stream]


@pytest.mark.parametrize(
    "consume",
    [_iterate, _with, _helper_text, _helper_final, _helper_events],
    ids=["create-iterate", "create-with", "helper-text_stream", "helper-final_message", "helper-events"],
)
def test_stream_sync(
    consume: Callable[[anthropic.Anthropic], list[Any]],
    anthropic_client: anthropic.Anthropic,
    fake_api: FakeLLMAPI,
    telemetry: Telemetry,
) -> None:
    assert consume(anthropic_client)
    assert_ok(telemetry, f"chat {MODEL}")
    assert span_attributes(telemetry, stream=True) == expected_attributes(fake_api, stream=True)
    assert_anthropic_metrics(telemetry)


async def _async_iterate(client: anthropic.AsyncAnthropic) -> list[Any]:
    stream = await client.messages.create(model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES, stream=True)
    return [event async for event in stream]


async def _async_with(client: anthropic.AsyncAnthropic) -> list[Any]:
    async with await client.messages.create(
        model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES, stream=True
    ) as stream:
        return [event async for event in stream]


async def _async_helper_text(client: anthropic.AsyncAnthropic) -> list[Any]:
    async with client.messages.stream(model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES) as stream:
        return [text async for text in stream.text_stream]


async def _async_helper_final(client: anthropic.AsyncAnthropic) -> list[Any]:
    async with client.messages.stream(model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES) as stream:
        return [await stream.get_final_message()]


@pytest.mark.parametrize(
    "consume",
    [_async_iterate, _async_with, _async_helper_text, _async_helper_final],
    ids=["create-iterate", "create-with", "helper-text_stream", "helper-final_message"],
)
def test_stream_async(
    consume: Callable[[anthropic.AsyncAnthropic], Coroutine[Any, Any, list[Any]]],
    fake_api: FakeLLMAPI,
    telemetry: Telemetry,
) -> None:
    assert run(consume, fake_api)
    assert_ok(telemetry, f"chat {MODEL}")
    assert span_attributes(telemetry, stream=True) == expected_attributes(fake_api, stream=True)
    assert_anthropic_metrics(telemetry)


def test_stream_helper_closed_before_reading(
    anthropic_client: anthropic.Anthropic, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    with anthropic_client.messages.stream(model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES):
        pass
    # Nothing was read: the span ends at close, without usage it never saw.
    attributes = span_attributes(telemetry, stream=False)
    assert "gen_ai.usage.input_tokens" not in attributes
    assert attributes["gen_ai.request.stream"] is True


def test_stream_cut_before_message_delta_records_input_only(
    anthropic_client: anthropic.Anthropic, telemetry: Telemetry
) -> None:
    with create(anthropic_client, stream=True) as stream:
        for event in stream:
            if event.type == "content_block_delta":
                break
    attributes = dict(telemetry.only_span().attributes or {})
    assert attributes["gen_ai.usage.input_tokens"] == ALL_INPUT
    # message_start's output count is a placeholder: not recorded as the output.
    assert "gen_ai.usage.output_tokens" not in attributes


# --- errors -------------------------------------------------------------------------------------


def test_bad_request_propagates(anthropic_client: anthropic.Anthropic, telemetry: Telemetry) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        anthropic_client.messages.create(model=MODEL_BAD_REQUEST, max_tokens=MAX_TOKENS, messages=MESSAGES)
    assert caught.value.status_code == 400
    span = telemetry.only_span()
    assert span.name == f"chat {MODEL_BAD_REQUEST}"
    assert span.attributes["error.type"] == "BadRequestError"
    assert span.status.status_code is StatusCode.ERROR
    assert list(telemetry.metrics()) == ["gen_ai.client.operation.duration"]


def test_bad_request_async(fake_api: FakeLLMAPI, telemetry: Telemetry) -> None:
    async def call(client: anthropic.AsyncAnthropic) -> BaseException:
        try:
            await client.messages.create(model=MODEL_BAD_REQUEST, max_tokens=MAX_TOKENS, messages=MESSAGES)
        except anthropic.BadRequestError as error:
            return error
        raise AssertionError("no error")

    assert run(call, fake_api).status_code == 400
    assert telemetry.only_span().attributes["error.type"] == "BadRequestError"


def test_bad_request_stream_helper(anthropic_client: anthropic.Anthropic, telemetry: Telemetry) -> None:
    with (
        pytest.raises(anthropic.BadRequestError),
        anthropic_client.messages.stream(model=MODEL_BAD_REQUEST, max_tokens=MAX_TOKENS, messages=MESSAGES),
    ):
        pass
    assert telemetry.only_span().attributes["error.type"] == "BadRequestError"


def test_error_event_mid_stream(anthropic_client: anthropic.Anthropic, telemetry: Telemetry) -> None:
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        list(
            anthropic_client.messages.create(
                model=MODEL_STREAM_ERROR, max_tokens=10, messages=MESSAGES, stream=True
            )
        )
    span = telemetry.only_span()
    assert span.attributes["error.type"] == "APIStatusError"
    assert span.status.status_code is StatusCode.ERROR


# --- identical behaviour ------------------------------------------------------------------------


def test_events_identical_to_uninstrumented(
    anthropic_client: anthropic.Anthropic,
    fake_api: FakeLLMAPI,
    anthropic_instrumentor: AnthropicInstrumentor,
    telemetry: Telemetry,
) -> None:
    def everything() -> list[Any]:
        raw = [
            (type(event).__qualname__, event.model_dump()) for event in create(anthropic_client, stream=True)
        ]
        with anthropic_client.messages.stream(
            model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES
        ) as stream:
            helper = [(type(event).__qualname__, event.model_dump()) for event in stream]
            final = stream.get_final_message().model_dump()
        message = create(anthropic_client).model_dump()
        return [raw, helper, final, message, run(_async_iterate_dump, fake_api)]

    instrumented = everything()
    anthropic_instrumentor.uninstrument()
    try:
        plain = everything()
    finally:
        anthropic_instrumentor.instrument(
            tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
        )
    assert instrumented == plain
    assert len(telemetry.spans()) == 4


async def _async_iterate_dump(client: anthropic.AsyncAnthropic) -> list[Any]:
    return [(type(event).__qualname__, event.model_dump()) for event in await _async_iterate(client)]


def test_sdk_native_span_is_a_child_of_ours(fake_api: FakeLLMAPI, telemetry: Telemetry) -> None:
    """anthropic>=2 traces its own calls; with a tracer provider its span nests under ours."""
    client = anthropic.Anthropic(
        base_url=fake_api.anthropic_base_url,
        api_key="sk-ant-test",
        max_retries=0,
        open_telemetry={"tracer_provider": telemetry.tracer_provider},
    )
    with client:
        create(client)
    spans = {span.name: span for span in telemetry.spans()}
    assert set(spans) == {f"chat {MODEL}", "anthropic.messages.create"}
    ours, native = spans[f"chat {MODEL}"], spans["anthropic.messages.create"]
    assert native.parent is not None and native.parent.span_id == ours.context.span_id
    assert ours.instrumentation_scope.name == "tokenscale.instrumentation.anthropic"


def test_beta_messages(
    anthropic_client: anthropic.Anthropic, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    anthropic_client.beta.messages.create(model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES)
    with anthropic_client.beta.messages.stream(
        model=MODEL, max_tokens=MAX_TOKENS, messages=MESSAGES
    ) as stream:
        stream.get_final_message()
    first, second = telemetry.spans()
    assert dict(first.attributes or {}) == expected_attributes(fake_api, stream=False)
    streamed = dict(second.attributes or {})
    assert streamed.pop("gen_ai.response.time_to_first_chunk") >= 0
    assert streamed == expected_attributes(fake_api, stream=True)


def test_images_and_documents_sent_are_counted(
    anthropic_client: anthropic.Anthropic, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    pdf = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
    }
    messages = [
        {"role": "user", "content": [image, {"type": "text", "text": "compare"}, image]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [pdf, {"type": "text", "text": "and this"}]},
    ]
    anthropic_client.messages.create(model=MODEL, max_tokens=MAX_TOKENS, messages=messages)  # type: ignore[arg-type]
    assert span_attributes(telemetry, stream=False) == {
        **expected_attributes(fake_api, stream=False),
        "gen_ai.request.image.count": 2,
        "gen_ai.request.document.count": 1,
    }
