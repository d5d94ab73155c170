"""The openai instrumentor against the real openai SDK talking to the local fake API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import openai
import pytest
from fake_llm_api import (
    CHAT_ID,
    CHAT_USAGE,
    EMBEDDINGS_USAGE,
    IMAGES_USAGE,
    MODEL_BAD_REQUEST,
    MODEL_STREAM_ERROR,
    RESPONSE_ID,
    RESPONSES_USAGE,
    SPEECH_BYTES,
    TRANSCRIPTION_DURATION_USAGE,
    TRANSCRIPTION_TOKENS_USAGE,
    VIDEO_ID,
    FakeLLMAPI,
    response_model,
)
from instr_support import Telemetry, assert_metrics, assert_ok, span_attributes, usage_attributes
from opentelemetry.trace import StatusCode

from tokenscale.instrumentation import OpenAIInstrumentor

MODEL = "gpt-5-mini"
MESSAGES = [{"role": "user", "content": "Say hello"}]
INCLUDE_USAGE = {"include_usage": True}

pytestmark = pytest.mark.usefixtures("openai_instrumentor")


def run(coroutine_function: Callable[[openai.AsyncOpenAI], Coroutine[Any, Any, Any]], api: FakeLLMAPI) -> Any:
    """Run ``coroutine_function(client)`` with an async client made (and closed) inside the loop."""

    async def main() -> Any:
        async with openai.AsyncOpenAI(
            base_url=api.openai_base_url, api_key="sk-test", max_retries=0
        ) as client:
            return await coroutine_function(client)

    return asyncio.run(main())


def chat_base(api: FakeLLMAPI, model: str = MODEL) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": model,
        "server.address": "127.0.0.1",
        "server.port": api.port,
    }


def chat_usage() -> dict[str, Any]:
    return usage_attributes(
        input_tokens=CHAT_USAGE["prompt_tokens"],
        output_tokens=CHAT_USAGE["completion_tokens"],
        cache_read=CHAT_USAGE["prompt_tokens_details"]["cached_tokens"],
        reasoning=CHAT_USAGE["completion_tokens_details"]["reasoning_tokens"],
    )


def chat_attributes(
    api: FakeLLMAPI, *, stream: bool, usage: bool = True, reasons: tuple[str, ...] = ("stop",)
):
    attributes = {
        **chat_base(api),
        "openai.api.type": "chat_completions",
        "gen_ai.response.model": response_model(MODEL),
        "gen_ai.response.id": CHAT_ID,
        "gen_ai.response.finish_reasons": reasons,
    }
    if stream:
        attributes["gen_ai.request.stream"] = True
    if usage:
        attributes.update(chat_usage())
    return attributes


def metric_base(model: str = MODEL, response: str | None = None, provider: str = "openai") -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "gen_ai.response.model": response or response_model(model),
    }


def assert_chat_metrics(telemetry: Telemetry) -> None:
    assert_metrics(
        telemetry,
        metric_base(),
        input_tokens=CHAT_USAGE["prompt_tokens"],
        output_tokens=CHAT_USAGE["completion_tokens"],
        cache_read=CHAT_USAGE["prompt_tokens_details"]["cached_tokens"],
        reasoning=CHAT_USAGE["completion_tokens_details"]["reasoning_tokens"],
    )


# --- chat completions ---------------------------------------------------------------------------


def test_chat_sync(openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry) -> None:
    completion = openai_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=512, temperature=0.2, top_p=0.9
    )
    assert completion.choices[0].message.content == "Hello from the fake."
    assert_ok(telemetry, f"chat {MODEL}")
    assert span_attributes(telemetry, stream=False) == {
        **chat_attributes(fake_api, stream=False),
        "gen_ai.request.max_tokens": 512,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.request.top_p": 0.9,
    }
    assert_chat_metrics(telemetry)


def test_chat_async(fake_api: FakeLLMAPI, telemetry: Telemetry) -> None:
    async def call(client: openai.AsyncOpenAI) -> Any:
        return await client.chat.completions.create(model=MODEL, messages=MESSAGES)

    completion = run(call, fake_api)
    assert completion.usage.prompt_tokens == CHAT_USAGE["prompt_tokens"]
    assert_ok(telemetry, f"chat {MODEL}")
    assert span_attributes(telemetry, stream=False) == chat_attributes(fake_api, stream=False)
    assert_chat_metrics(telemetry)


def _sync_iterate(client: openai.OpenAI) -> list[Any]:
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options=INCLUDE_USAGE
    )
    return list(stream)


def _sync_with(client: openai.OpenAI) -> list[Any]:
    with client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options=INCLUDE_USAGE
    ) as stream:
        return [chunk for chunk in stream]


def _sync_next(client: openai.OpenAI) -> list[Any]:
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options=INCLUDE_USAGE
    )
    chunks = []
    while True:
        try:
            chunks.append(next(stream))
        except StopIteration:
            return chunks


@pytest.mark.parametrize("consume", [_sync_iterate, _sync_with, _sync_next], ids=["iterate", "with", "next"])
def test_chat_stream_sync(
    consume: Callable[[openai.OpenAI], list[Any]],
    openai_client: openai.OpenAI,
    fake_api: FakeLLMAPI,
    telemetry: Telemetry,
) -> None:
    chunks = consume(openai_client)
    assert [chunk.usage is not None for chunk in chunks] == [False] * 5 + [True]
    assert_ok(telemetry, f"chat {MODEL}")
    assert span_attributes(telemetry, stream=True) == chat_attributes(fake_api, stream=True)
    assert_chat_metrics(telemetry)


async def _async_iterate(client: openai.AsyncOpenAI) -> list[Any]:
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options=INCLUDE_USAGE
    )
    return [chunk async for chunk in stream]


async def _async_with(client: openai.AsyncOpenAI) -> list[Any]:
    async with await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options=INCLUDE_USAGE
    ) as stream:
        return [chunk async for chunk in stream]


async def _async_next(client: openai.AsyncOpenAI) -> list[Any]:
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options=INCLUDE_USAGE
    )
    chunks = []
    while True:
        try:
            chunks.append(await stream.__anext__())
        except StopAsyncIteration:
            return chunks


@pytest.mark.parametrize(
    "consume", [_async_iterate, _async_with, _async_next], ids=["iterate", "with", "next"]
)
def test_chat_stream_async(
    consume: Callable[[openai.AsyncOpenAI], Coroutine[Any, Any, list[Any]]],
    fake_api: FakeLLMAPI,
    telemetry: Telemetry,
) -> None:
    chunks = run(consume, fake_api)
    assert len(chunks) == 6
    assert_ok(telemetry, f"chat {MODEL}")
    assert span_attributes(telemetry, stream=True) == chat_attributes(fake_api, stream=True)
    assert_chat_metrics(telemetry)


def test_chat_stream_without_include_usage_records_no_tokens(
    openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    chunks = list(openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
    assert len(chunks) == 5
    # We never add stream_options to the request: that would change the chunks the app sees.
    assert "stream_options" not in fake_api.requests_to("/v1/chat/completions")[-1].body
    assert span_attributes(telemetry, stream=True) == chat_attributes(fake_api, stream=True, usage=False)
    assert_metrics(telemetry, metric_base(), input_tokens=None, output_tokens=None)


def test_chat_stream_helper_sync(
    openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    with openai_client.chat.completions.stream(
        model=MODEL, messages=MESSAGES, stream_options=INCLUDE_USAGE
    ) as stream:
        completion = stream.get_final_completion()
    assert completion.choices[0].message.content == "Hello from the fake."
    assert span_attributes(telemetry, stream=True) == chat_attributes(fake_api, stream=True)
    assert_chat_metrics(telemetry)


def test_chat_stream_helper_async(fake_api: FakeLLMAPI, telemetry: Telemetry) -> None:
    async def call(client: openai.AsyncOpenAI) -> Any:
        async with client.chat.completions.stream(
            model=MODEL, messages=MESSAGES, stream_options=INCLUDE_USAGE
        ) as stream:
            return [event.type async for event in stream]

    events = run(call, fake_api)
    assert "content.done" in events
    assert span_attributes(telemetry, stream=True) == chat_attributes(fake_api, stream=True)
    assert_chat_metrics(telemetry)


def test_chat_parse(openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry) -> None:
    parsed = openai_client.chat.completions.parse(model=MODEL, messages=MESSAGES)
    assert parsed.choices[0].message.content == "Hello from the fake."
    assert span_attributes(telemetry, stream=False) == chat_attributes(fake_api, stream=False)
    assert_chat_metrics(telemetry)


def test_chat_with_raw_response(
    openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    raw = openai_client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert raw.headers["x-request-id"] == "req_fake"
    completion = raw.parse()
    assert completion.id == CHAT_ID
    assert span_attributes(telemetry, stream=False) == chat_attributes(fake_api, stream=False)
    assert_chat_metrics(telemetry)


def test_chat_finish_reasons_of_every_choice(
    openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
    list(openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2, stream=True))
    reasons = [span.attributes["gen_ai.response.finish_reasons"] for span in telemetry.spans()]
    assert reasons == [("stop", "length"), ("stop", "length")]


def test_chat_stream_abandoned_early_still_ends_span(
    openai_client: openai.OpenAI, telemetry: Telemetry
) -> None:
    stream = openai_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options=INCLUDE_USAGE
    )
    for _chunk in stream:
        break
    attributes = dict(telemetry.only_span().attributes or {})
    assert attributes["gen_ai.response.id"] == CHAT_ID
    assert "gen_ai.usage.input_tokens" not in attributes


def test_chat_stream_closed_early_ends_span(openai_client: openai.OpenAI, telemetry: Telemetry) -> None:
    with openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True) as stream:
        next(stream)
    assert telemetry.only_span().attributes["gen_ai.response.id"] == CHAT_ID


# --- errors -------------------------------------------------------------------------------------


def _chain(error: BaseException | None) -> list[type[BaseException]]:
    chain = []
    while error is not None:
        chain.append(type(error))
        error = error.__cause__ or error.__context__
    return chain


def _bad_request(client: openai.OpenAI) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_BAD_REQUEST, messages=MESSAGES)
    return caught.value


def test_api_error_propagates_unchanged(
    openai_client: openai.OpenAI,
    fake_api: FakeLLMAPI,
    openai_instrumentor: OpenAIInstrumentor,
    telemetry: Telemetry,
) -> None:
    error = _bad_request(openai_client)
    openai_instrumentor.uninstrument()
    try:
        plain = _bad_request(openai_client)
    finally:
        openai_instrumentor.instrument(
            tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
        )
    assert type(error) is type(plain) is openai.BadRequestError
    assert (str(error), error.status_code, error.body, error.code) == (
        str(plain),
        plain.status_code,
        plain.body,
        plain.code,
    )
    # Re-raised as is: not wrapped, and chained to exactly what the SDK chains it to.
    assert _chain(error) == _chain(plain)
    span = telemetry.only_span()
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {}) == {
        **chat_base(fake_api, MODEL_BAD_REQUEST),
        "openai.api.type": "chat_completions",
        "error.type": "BadRequestError",
    }
    found = telemetry.metrics()
    assert list(found) == ["gen_ai.client.operation.duration"]
    assert found["gen_ai.client.operation.duration"][0].attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": MODEL_BAD_REQUEST,
        "error.type": "BadRequestError",
    }


def test_api_error_async(fake_api: FakeLLMAPI, telemetry: Telemetry) -> None:
    async def call(client: openai.AsyncOpenAI) -> BaseException:
        try:
            await client.chat.completions.create(model=MODEL_BAD_REQUEST, messages=MESSAGES)
        except openai.BadRequestError as error:
            return error
        raise AssertionError("no error")

    error = run(call, fake_api)
    assert error.status_code == 400
    span = telemetry.only_span()
    assert span.attributes["error.type"] == "BadRequestError"
    assert span.status.status_code is StatusCode.ERROR


def test_error_mid_stream(openai_client: openai.OpenAI, telemetry: Telemetry) -> None:
    stream = openai_client.chat.completions.create(model=MODEL_STREAM_ERROR, messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError, match="The server had an error"):
        list(stream)
    span = telemetry.only_span()
    assert span.attributes["error.type"] == "APIError"
    assert span.attributes["gen_ai.response.id"] == CHAT_ID
    assert span.status.status_code is StatusCode.ERROR


# --- identical behaviour with and without instrumentation ---------------------------------------


def _dump(items: list[Any]) -> list[tuple[str, Any]]:
    return [(type(item).__qualname__, item.model_dump()) for item in items]


def test_stream_chunks_identical_to_uninstrumented(
    openai_client: openai.OpenAI,
    fake_api: FakeLLMAPI,
    openai_instrumentor: OpenAIInstrumentor,
    telemetry: Telemetry,
) -> None:
    def everything() -> list[list[tuple[str, Any]]]:
        sync_chunks = _sync_with(openai_client)
        bare = list(openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
        events = list(openai_client.responses.create(model=MODEL, input="hi", stream=True))
        async_chunks = run(_async_iterate, fake_api)
        return [_dump(sync_chunks), _dump(bare), _dump(events), _dump(async_chunks)]

    fake_api.clear()
    instrumented = everything()
    instrumented_bodies = [request.body for request in fake_api.requests]
    openai_instrumentor.uninstrument()
    try:
        fake_api.clear()
        plain = everything()
        plain_bodies = [request.body for request in fake_api.requests]
    finally:
        openai_instrumentor.instrument(
            tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
        )
    assert instrumented == plain
    assert instrumented_bodies == plain_bodies
    assert len(telemetry.spans()) == 4


def test_stream_keeps_its_type_for_isinstance(openai_client: openai.OpenAI) -> None:
    stream = openai_client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert isinstance(stream, openai.Stream)
    assert stream.response.status_code == 200
    stream.close()


# --- Responses API ------------------------------------------------------------------------------


def responses_attributes(api: FakeLLMAPI, *, stream: bool) -> dict[str, Any]:
    attributes = {
        **chat_base(api),
        "openai.api.type": "responses",
        "gen_ai.response.model": response_model(MODEL),
        "gen_ai.response.id": RESPONSE_ID,
        "gen_ai.response.finish_reasons": ("stop",),
        **usage_attributes(
            input_tokens=RESPONSES_USAGE["input_tokens"],
            output_tokens=RESPONSES_USAGE["output_tokens"],
            cache_read=RESPONSES_USAGE["input_tokens_details"]["cached_tokens"],
            cache_creation=RESPONSES_USAGE["input_tokens_details"]["cache_write_tokens"],
            reasoning=RESPONSES_USAGE["output_tokens_details"]["reasoning_tokens"],
        ),
    }
    if stream:
        attributes["gen_ai.request.stream"] = True
    return attributes


def assert_responses_metrics(telemetry: Telemetry) -> None:
    assert_metrics(
        telemetry,
        metric_base(),
        input_tokens=RESPONSES_USAGE["input_tokens"],
        output_tokens=RESPONSES_USAGE["output_tokens"],
        cache_read=RESPONSES_USAGE["input_tokens_details"]["cached_tokens"],
        cache_write=RESPONSES_USAGE["input_tokens_details"]["cache_write_tokens"],
        reasoning=RESPONSES_USAGE["output_tokens_details"]["reasoning_tokens"],
    )


def test_responses_sync(openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry) -> None:
    response = openai_client.responses.create(model=MODEL, input="hi", max_output_tokens=256)
    assert response.output_text == "Hello from the fake."
    assert_ok(telemetry, f"chat {MODEL}")
    assert span_attributes(telemetry, stream=False) == {
        **responses_attributes(fake_api, stream=False),
        "gen_ai.request.max_tokens": 256,
    }
    assert_responses_metrics(telemetry)


def test_responses_async(fake_api: FakeLLMAPI, telemetry: Telemetry) -> None:
    async def call(client: openai.AsyncOpenAI) -> Any:
        return await client.responses.create(model=MODEL, input="hi")

    assert run(call, fake_api).id == RESPONSE_ID
    assert span_attributes(telemetry, stream=False) == responses_attributes(fake_api, stream=False)
    assert_responses_metrics(telemetry)


def test_responses_stream_sync(
    openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    with openai_client.responses.create(model=MODEL, input="hi", stream=True) as stream:
        events = [event.type for event in stream]
    assert events[-1] == "response.completed"
    assert span_attributes(telemetry, stream=True) == responses_attributes(fake_api, stream=True)
    assert_responses_metrics(telemetry)


def test_responses_stream_async(fake_api: FakeLLMAPI, telemetry: Telemetry) -> None:
    async def call(client: openai.AsyncOpenAI) -> list[str]:
        stream = await client.responses.create(model=MODEL, input="hi", stream=True)
        return [event.type async for event in stream]

    assert run(call, fake_api)[0] == "response.created"
    assert span_attributes(telemetry, stream=True) == responses_attributes(fake_api, stream=True)
    assert_responses_metrics(telemetry)


def test_responses_stream_helper(
    openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    with openai_client.responses.stream(model=MODEL, input="hi") as stream:
        final = stream.get_final_response()
    assert final.usage is not None and final.usage.output_tokens == RESPONSES_USAGE["output_tokens"]
    assert span_attributes(telemetry, stream=True) == responses_attributes(fake_api, stream=True)
    assert_responses_metrics(telemetry)


def test_responses_error_event_mid_stream(openai_client: openai.OpenAI, telemetry: Telemetry) -> None:
    events = [
        event.type
        for event in openai_client.responses.create(model=MODEL_STREAM_ERROR, input="hi", stream=True)
    ]
    assert events[-1] == "error"  # the SDK yields the event; the span records it as the error
    span = telemetry.only_span()
    assert span.attributes["error.type"] == "server_error"
    assert span.status.status_code is StatusCode.ERROR


def test_responses_bad_request(openai_client: openai.OpenAI, telemetry: Telemetry) -> None:
    with pytest.raises(openai.BadRequestError):
        openai_client.responses.create(model=MODEL_BAD_REQUEST, input="hi")
    assert telemetry.only_span().attributes["error.type"] == "BadRequestError"


# --- embeddings ---------------------------------------------------------------------------------

EMBEDDING_MODEL = "text-embedding-3-small"


def embeddings_attributes(api: FakeLLMAPI) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "embeddings",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": EMBEDDING_MODEL,
        "server.address": "127.0.0.1",
        "server.port": api.port,
        "gen_ai.response.model": EMBEDDING_MODEL,
        "gen_ai.usage.input_tokens": EMBEDDINGS_USAGE["prompt_tokens"],
    }


def assert_embeddings_metrics(telemetry: Telemetry) -> None:
    base = {
        "gen_ai.operation.name": "embeddings",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": EMBEDDING_MODEL,
        "gen_ai.response.model": EMBEDDING_MODEL,
    }
    assert_metrics(telemetry, base, input_tokens=EMBEDDINGS_USAGE["prompt_tokens"], output_tokens=None)


def test_embeddings_sync(openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry) -> None:
    result = openai_client.embeddings.create(model=EMBEDDING_MODEL, input="hello")
    assert result.data[0].embedding == [0.25, -0.5, 0.125]
    assert_ok(telemetry, f"embeddings {EMBEDDING_MODEL}")
    assert span_attributes(telemetry, stream=False) == embeddings_attributes(fake_api)
    assert_embeddings_metrics(telemetry)


def test_embeddings_async(fake_api: FakeLLMAPI, telemetry: Telemetry) -> None:
    async def call(client: openai.AsyncOpenAI) -> Any:
        return await client.embeddings.create(
            model=EMBEDDING_MODEL, input=["a", "b"], encoding_format="float"
        )

    assert len(run(call, fake_api).data) == 2
    assert span_attributes(telemetry, stream=False) == embeddings_attributes(fake_api)
    assert_embeddings_metrics(telemetry)


# --- images and audio ---------------------------------------------------------------------------


def media_base(api: FakeLLMAPI, operation: str, model: str) -> dict[str, Any]:
    return {**chat_base(api, model), "gen_ai.operation.name": operation}


def test_image_generation_reports_tokens_count_and_parameters(
    openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    openai_client.images.generate(
        model="gpt-image-1", prompt="a fox", size="1536x1024", quality="medium", n=3
    )
    assert_ok(telemetry, "image_generation gpt-image-1")
    assert span_attributes(telemetry, stream=False) == {
        **media_base(fake_api, "image_generation", "gpt-image-1"),
        "gen_ai.request.image.size": "1536x1024",
        "gen_ai.request.image.quality": "medium",
        "gen_ai.usage.image.count": 3,
        "gen_ai.usage.image.input_tokens": IMAGES_USAGE["input_tokens_details"]["image_tokens"],
        "gen_ai.usage.text.input_tokens": IMAGES_USAGE["input_tokens_details"]["text_tokens"],
        "gen_ai.usage.image.output_tokens": IMAGES_USAGE["output_tokens"],
        **usage_attributes(IMAGES_USAGE["input_tokens"], IMAGES_USAGE["output_tokens"]),
    }


def test_transcription_tokens_and_whisper_seconds(
    openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    openai_client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.mp3", b"mp3", "audio/mpeg"))
    usage = TRANSCRIPTION_TOKENS_USAGE
    assert span_attributes(telemetry, stream=False) == {
        **media_base(fake_api, "transcription", "gpt-4o-transcribe"),
        "gen_ai.usage.audio.input_tokens": usage["input_token_details"]["audio_tokens"],
        "gen_ai.usage.text.input_tokens": usage["input_token_details"]["text_tokens"],
        **usage_attributes(usage["input_tokens"], usage["output_tokens"]),
    }
    telemetry.span_exporter.clear()
    openai_client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"mp3", "audio/mpeg"))
    assert span_attributes(telemetry, stream=False) == {
        **media_base(fake_api, "transcription", "whisper-1"),
        "gen_ai.usage.audio.seconds": float(TRANSCRIPTION_DURATION_USAGE["seconds"]),
    }
    # Translations answer text only: the span says what was called, with no usage to report.
    telemetry.span_exporter.clear()
    openai_client.audio.translations.create(model="whisper-1", file=("a.mp3", b"mp3", "audio/mpeg"))
    assert span_attributes(telemetry, stream=False) == media_base(fake_api, "translation", "whisper-1")


def test_speech_reports_its_input_characters(
    openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    speech = openai_client.audio.speech.create(model="tts-1", voice="alloy", input="Hello, wörld")
    assert speech.content == SPEECH_BYTES
    assert_ok(telemetry, "speech tts-1")
    assert span_attributes(telemetry, stream=False) == {
        **media_base(fake_api, "speech", "tts-1"),
        "gen_ai.usage.text.characters": 12,
    }


def test_video_create_and_retrieve_report_the_clips_seconds_under_the_jobs_id(
    openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    video = openai_client.videos.create(model="sora-2", prompt="a fox", seconds="8", size="1280x720")
    assert (video.id, video.status) == (VIDEO_ID, "queued")
    assert_ok(telemetry, "video_generation sora-2")
    base = {
        **media_base(fake_api, "video_generation", "sora-2"),
        "gen_ai.request.video.size": "1280x720",
        "gen_ai.request.video.seconds": 8.0,
        "gen_ai.response.id": VIDEO_ID,
        "gen_ai.response.model": "sora-2",
        "gen_ai.usage.video.seconds": 8.0,
        "gen_ai.usage.video.count": 1,
    }
    assert span_attributes(telemetry, stream=False) == {**base, "gen_ai.response.video.status": "queued"}
    # Every retrieve of the job is the same request (the job's id): it reports the same clip.
    for status in ("in_progress", "completed"):
        telemetry.span_exporter.clear()
        assert openai_client.videos.retrieve(VIDEO_ID).status == status
        attributes = span_attributes(telemetry, stream=False)
        assert attributes.pop("gen_ai.request.model", None) is None  # retrieve names no model
        assert attributes == {
            **{k: v for k, v in base.items() if not k.startswith("gen_ai.request.")},
            "gen_ai.request.video.size": "1280x720",  # the job's own size
            "gen_ai.response.video.status": status,
        }


def test_a_failed_video_job_reports_its_error_and_no_seconds(
    openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    video = openai_client.videos.create(model="sora-2", prompt="fail please")
    for _ in range(2):
        telemetry.span_exporter.clear()
        video = openai_client.videos.retrieve(video.id)
    assert video.status == "failed"
    span = telemetry.only_span()
    assert span.status.status_code is StatusCode.ERROR
    attributes = dict(span.attributes or {})
    assert (attributes["error.type"], attributes["gen_ai.response.video.status"]) == (
        "moderation_blocked",
        "failed",
    )
    assert "gen_ai.usage.video.seconds" not in attributes and "gen_ai.usage.video.count" not in attributes
