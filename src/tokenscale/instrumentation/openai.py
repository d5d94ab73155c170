"""Instrumentor for the official ``openai`` SDK: chat completions, Responses API, embeddings, images
(generate, edit), audio (transcriptions, translations, speech) and videos (create, retrieve; SDKs
that have ``client.videos``)."""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

from tokenscale.instrumentation import _semconv as sc
from tokenscale.instrumentation._base import SdkInstrumentor
from tokenscale.instrumentation._telemetry import (
    Invocation,
    Request,
    Usage,
    as_float,
    as_int,
    as_text,
    server_attributes,
)
from tokenscale.instrumentation._wrappers import (
    Extractor,
    Observer,
    Patches,
    async_call_wrapper,
    sync_call_wrapper,
)

__all__ = ["OpenAIInstrumentor"]

_LOG = logging.getLogger(__name__)

#: Versions whose method locations this instrumentor knows (Responses API since 1.66).
_INSTRUMENTS: Final = ("openai >= 1.66",)
SCOPE: Final = "tokenscale.instrumentation.openai"

# Packages that re-export the resource classes across SDK layouts (module or package).
_CHAT_MODULE: Final = "openai.resources.chat.completions"
_RESPONSES_MODULE: Final = "openai.resources.responses"
_EMBEDDINGS_MODULE: Final = "openai.resources.embeddings"
_IMAGES_MODULE: Final = "openai.resources.images"
_TRANSCRIPTIONS_MODULE: Final = "openai.resources.audio.transcriptions"
_TRANSLATIONS_MODULE: Final = "openai.resources.audio.translations"
_SPEECH_MODULE: Final = "openai.resources.audio.speech"
_VIDEOS_MODULE: Final = "openai.resources.videos"

# Terminal statuses of a Responses API response (others, e.g. in_progress, are not final).
_RESPONSE_FINISH_REASONS: Final = {"completed": "stop", "failed": "error", "cancelled": "cancelled"}


# --- request ------------------------------------------------------------------------------------


def _request(
    operation: str, api_type: str | None, instance: Any, kwargs: Mapping[str, Any], max_tokens: object
) -> Request:
    attributes = server_attributes(instance)
    if api_type is not None:
        attributes[sc.OPENAI_API_TYPE] = api_type
    if (tokens := as_int(max_tokens)) is not None:
        attributes[sc.GEN_AI_REQUEST_MAX_TOKENS] = tokens
    if (temperature := as_float(kwargs.get("temperature"))) is not None:
        attributes[sc.GEN_AI_REQUEST_TEMPERATURE] = temperature
    if (top_p := as_float(kwargs.get("top_p"))) is not None:
        attributes[sc.GEN_AI_REQUEST_TOP_P] = top_p
    stream = kwargs.get("stream") is True
    if stream:
        attributes[sc.GEN_AI_REQUEST_STREAM] = True
    return Request(operation, as_text(kwargs.get("model")), stream, attributes)


def _describe_chat(instance: Any, kwargs: Mapping[str, Any]) -> Request:
    max_tokens = kwargs.get("max_completion_tokens")
    if as_int(max_tokens) is None:
        max_tokens = kwargs.get("max_tokens")
    return _request(sc.OPERATION_CHAT, sc.OPENAI_API_CHAT_COMPLETIONS, instance, kwargs, max_tokens)


def _describe_responses(instance: Any, kwargs: Mapping[str, Any]) -> Request:
    return _request(
        sc.OPERATION_CHAT, sc.OPENAI_API_RESPONSES, instance, kwargs, kwargs.get("max_output_tokens")
    )


def _describe_embeddings(instance: Any, kwargs: Mapping[str, Any]) -> Request:
    return _request(sc.OPERATION_EMBEDDINGS, None, instance, kwargs, None)


def _describe_image(operation: str) -> Callable[[Any, Mapping[str, Any]], Request]:
    def describe(instance: Any, kwargs: Mapping[str, Any]) -> Request:
        request = _request(operation, None, instance, kwargs, None)
        for key, name in (
            (sc.GEN_AI_REQUEST_IMAGE_SIZE, "size"),
            (sc.GEN_AI_REQUEST_IMAGE_QUALITY, "quality"),
        ):
            if (value := as_text(kwargs.get(name))) is not None:
                request.attributes[key] = value
        return request

    return describe


def _describe_audio(operation: str) -> Callable[[Any, Mapping[str, Any]], Request]:
    def describe(instance: Any, kwargs: Mapping[str, Any]) -> Request:
        return _request(operation, None, instance, kwargs, None)

    return describe


def _describe_speech(instance: Any, kwargs: Mapping[str, Any]) -> Request:
    request = _request(sc.OPERATION_SPEECH, None, instance, kwargs, None)
    text = kwargs.get("input")
    if isinstance(text, str):
        # Speech is billed per input character; the response (audio bytes) reports no usage.
        request.attributes[sc.GEN_AI_USAGE_TEXT_CHARACTERS] = len(text)
    return request


def _seconds(value: object) -> float | None:
    """A clip's duration: the API's ``seconds`` is a numeric string (``"8"``), or a number."""
    if isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError:
            return None
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return as_float(value)


def _describe_video(instance: Any, kwargs: Mapping[str, Any]) -> Request:
    request = _request(sc.OPERATION_VIDEO_GENERATION, None, instance, kwargs, None)
    if (size := as_text(kwargs.get("size"))) is not None:
        request.attributes[sc.GEN_AI_REQUEST_VIDEO_SIZE] = size
    if (seconds := _seconds(kwargs.get("seconds"))) is not None:
        request.attributes[sc.GEN_AI_REQUEST_VIDEO_SECONDS] = seconds
    return request


# --- response -----------------------------------------------------------------------------------


def _identify(invocation: Invocation, response: object) -> None:
    if (response_id := as_text(getattr(response, "id", None))) is not None:
        invocation.response_id = response_id
    if (model := as_text(getattr(response, "model", None))) is not None:
        invocation.response_model = model


def _chat_usage(target: Usage, usage: object) -> None:
    """Chat Completions usage: prompt_tokens includes cached tokens, completion_tokens reasoning."""
    if usage is None:
        return
    target.input_tokens = as_int(getattr(usage, "prompt_tokens", None))
    target.output_tokens = as_int(getattr(usage, "completion_tokens", None))
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    target.cache_read_input_tokens = as_int(getattr(prompt_details, "cached_tokens", None))
    target.cache_creation_input_tokens = as_int(getattr(prompt_details, "cache_write_tokens", None))
    completion_details = getattr(usage, "completion_tokens_details", None)
    target.reasoning_output_tokens = as_int(getattr(completion_details, "reasoning_tokens", None))


def _on_chat_response(invocation: Invocation, completion: object) -> None:
    if completion is None:
        return
    _identify(invocation, completion)
    reasons = [
        as_text(getattr(choice, "finish_reason", None)) for choice in getattr(completion, "choices", ())
    ]
    invocation.finish_reasons = [reason for reason in reasons if reason is not None]
    _chat_usage(invocation.usage, getattr(completion, "usage", None))


class _ChatStreamObserver:
    """Reads ``ChatCompletionChunk``s: usage only arrives with ``stream_options.include_usage``."""

    __slots__ = ("_invocation", "_reasons")

    def __init__(self, invocation: Invocation) -> None:
        self._invocation = invocation
        self._reasons: dict[int, str] = {}

    def __call__(self, chunk: object) -> None:
        invocation = self._invocation
        if invocation.response_id is None:
            _identify(invocation, chunk)
        for choice in getattr(chunk, "choices", None) or ():
            reason = as_text(getattr(choice, "finish_reason", None))
            if reason is not None:
                self._reasons[as_int(getattr(choice, "index", 0)) or 0] = reason
                invocation.finish_reasons = [self._reasons[index] for index in sorted(self._reasons)]
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            _chat_usage(invocation.usage, usage)


def _responses_usage(target: Usage, usage: object) -> None:
    """Responses API usage: input_tokens includes cached tokens, output_tokens reasoning."""
    if usage is None:
        return
    target.input_tokens = as_int(getattr(usage, "input_tokens", None))
    target.output_tokens = as_int(getattr(usage, "output_tokens", None))
    input_details = getattr(usage, "input_tokens_details", None)
    target.cache_read_input_tokens = as_int(getattr(input_details, "cached_tokens", None))
    target.cache_creation_input_tokens = as_int(getattr(input_details, "cache_write_tokens", None))
    output_details = getattr(usage, "output_tokens_details", None)
    target.reasoning_output_tokens = as_int(getattr(output_details, "reasoning_tokens", None))


def _on_responses_response(invocation: Invocation, response: object) -> None:
    if response is None:
        return
    _identify(invocation, response)
    status = as_text(getattr(response, "status", None))
    if status == "incomplete":
        details = getattr(response, "incomplete_details", None)
        invocation.finish_reasons = [as_text(getattr(details, "reason", None)) or "incomplete"]
    elif status in _RESPONSE_FINISH_REASONS:
        reason = _RESPONSE_FINISH_REASONS[status]
        if status == "completed" and any(
            getattr(item, "type", None) == "function_call" for item in getattr(response, "output", None) or ()
        ):
            reason = "tool_calls"
        invocation.finish_reasons = [reason]
    if status == "failed":
        error = getattr(response, "error", None)
        invocation.error_type = as_text(getattr(error, "code", None)) or "response_failed"
    _responses_usage(invocation.usage, getattr(response, "usage", None))


def _responses_stream_observer(invocation: Invocation) -> Observer:
    def observe(event: object) -> None:
        response = getattr(event, "response", None)
        if response is not None:
            _on_responses_response(invocation, response)
        elif getattr(event, "type", None) == "error":
            invocation.error_type = as_text(getattr(event, "code", None)) or "error"

    return observe


def _on_embeddings_response(invocation: Invocation, response: object) -> None:
    if response is None:
        return
    if (model := as_text(getattr(response, "model", None))) is not None:
        invocation.response_model = model
    usage = getattr(response, "usage", None)
    invocation.usage.input_tokens = as_int(getattr(usage, "prompt_tokens", None))


def _on_images_response(invocation: Invocation, response: object) -> None:
    """gpt-image models report tokens (image and text input, image output); every model the count."""
    if response is None:
        return
    data = getattr(response, "data", None)
    if isinstance(data, list):
        invocation.response_attributes[sc.GEN_AI_USAGE_IMAGE_COUNT] = len(data)
    usage = getattr(response, "usage", None)
    if usage is None:
        return
    invocation.usage.input_tokens = as_int(getattr(usage, "input_tokens", None))
    invocation.usage.output_tokens = as_int(getattr(usage, "output_tokens", None))
    details = getattr(usage, "input_tokens_details", None)
    units = (
        (sc.GEN_AI_USAGE_IMAGE_INPUT_TOKENS, as_int(getattr(details, "image_tokens", None))),
        (sc.GEN_AI_USAGE_TEXT_INPUT_TOKENS, as_int(getattr(details, "text_tokens", None))),
        (sc.GEN_AI_USAGE_IMAGE_OUTPUT_TOKENS, invocation.usage.output_tokens),
    )
    for key, value in units:
        if value is not None:
            invocation.response_attributes[key] = value


def _on_audio_text_response(invocation: Invocation, response: object) -> None:
    """Transcriptions and translations: tokens (gpt-4o models) or billed seconds (whisper)."""
    usage = getattr(response, "usage", None)
    if usage is None:
        return
    kind = as_text(getattr(usage, "type", None))
    if kind == "duration" and (seconds := as_float(getattr(usage, "seconds", None))) is not None:
        invocation.response_attributes[sc.GEN_AI_USAGE_AUDIO_SECONDS] = seconds
    if kind == "tokens":
        invocation.usage.input_tokens = as_int(getattr(usage, "input_tokens", None))
        invocation.usage.output_tokens = as_int(getattr(usage, "output_tokens", None))
        details = getattr(usage, "input_token_details", None)
        for key, value in (
            (sc.GEN_AI_USAGE_AUDIO_INPUT_TOKENS, as_int(getattr(details, "audio_tokens", None))),
            (sc.GEN_AI_USAGE_TEXT_INPUT_TOKENS, as_int(getattr(details, "text_tokens", None))),
        ):
            if value is not None:
                invocation.response_attributes[key] = value


def _on_video_response(invocation: Invocation, response: object) -> None:
    """A video job (``Video``), as created or retrieved: the job's id is the response id, so that
    the create and every retrieve of one job are one request. Video is billed per second of the
    clip: a job that has not failed reports its seconds (and one video)."""
    if response is None:
        return
    _identify(invocation, response)
    attributes = invocation.response_attributes
    status = as_text(getattr(response, "status", None))
    if status is not None:
        attributes[sc.GEN_AI_RESPONSE_VIDEO_STATUS] = status
    if (size := as_text(getattr(response, "size", None))) is not None:
        attributes[sc.GEN_AI_REQUEST_VIDEO_SIZE] = size
    if status == "failed":
        error = getattr(response, "error", None)
        invocation.error_type = as_text(getattr(error, "code", None)) or "video_failed"
        return
    if (seconds := _seconds(getattr(response, "seconds", None))) is not None:
        attributes[sc.GEN_AI_USAGE_VIDEO_SECONDS] = seconds
        attributes[sc.GEN_AI_USAGE_VIDEO_COUNT] = 1


def _on_speech_response(invocation: Invocation, response: object) -> None:
    """Speech answers audio bytes: no usage beyond the characters recorded with the request."""


def _no_stream(invocation: Invocation) -> Observer:
    return lambda item: None


# --- the instrumentor ---------------------------------------------------------------------------


class OpenAIInstrumentor(SdkInstrumentor):
    """Records GenAI spans and metrics for ``openai`` chat completions, responses, embeddings, images,
    audio and videos.

    ``instrument(tracer_provider=..., meter_provider=..., budget_guard=...)``; every argument is
    optional (the global providers, no guard). Instrumenting twice is a no-op and
    ``uninstrument()`` restores the SDK's original methods.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        import openai  # noqa: PLC0415 - the SDK is only needed once instrumenting

        telemetry, is_stream = self._telemetry_for(
            SCOPE, sc.PROVIDER_OPENAI, kwargs, (openai.Stream, openai.AsyncStream)
        )

        chat = Extractor(_describe_chat, _on_chat_response, _ChatStreamObserver, is_stream)
        responses = Extractor(
            _describe_responses, _on_responses_response, _responses_stream_observer, is_stream
        )
        embeddings = Extractor(_describe_embeddings, _on_embeddings_response, _no_stream, is_stream)

        def audio(operation: str) -> Extractor:
            return Extractor(_describe_audio(operation), _on_audio_text_response, _no_stream, is_stream)

        def images(operation: str) -> Extractor:
            return Extractor(_describe_image(operation), _on_images_response, _no_stream, is_stream)

        targets: tuple[tuple[str, str, tuple[str, ...], Extractor], ...] = (
            (_CHAT_MODULE, "Completions", ("create", "parse"), chat),
            (_RESPONSES_MODULE, "Responses", ("create", "parse"), responses),
            (_EMBEDDINGS_MODULE, "Embeddings", ("create",), embeddings),
            (_IMAGES_MODULE, "Images", ("generate",), images(sc.OPERATION_IMAGE_GENERATION)),
            (_IMAGES_MODULE, "Images", ("edit",), images(sc.OPERATION_IMAGE_EDIT)),
            (_TRANSCRIPTIONS_MODULE, "Transcriptions", ("create",), audio(sc.OPERATION_TRANSCRIPTION)),
            (_TRANSLATIONS_MODULE, "Translations", ("create",), audio(sc.OPERATION_TRANSLATION)),
            (
                _SPEECH_MODULE,
                "Speech",
                ("create",),
                Extractor(_describe_speech, _on_speech_response, _no_stream, is_stream),
            ),
            (
                _VIDEOS_MODULE,
                "Videos",
                ("create", "retrieve"),
                Extractor(_describe_video, _on_video_response, _no_stream, is_stream),
            ),
        )
        patches = Patches()
        for module_name, class_name, methods, extractor in targets:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                _LOG.debug("%s not found; not instrumented", module_name)
                continue
            for owner_name, make in (
                (class_name, sync_call_wrapper),
                ("Async" + class_name, async_call_wrapper),
            ):
                owner = getattr(module, owner_name, None)
                if not isinstance(owner, type):
                    continue
                for method in methods:
                    patches.wrap(owner, method, make(telemetry, extractor))
        self._patches = patches
        self._telemetry = telemetry
