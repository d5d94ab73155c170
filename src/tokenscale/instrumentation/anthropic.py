"""Instrumentor for the official ``anthropic`` SDK: ``messages.create`` / ``parse`` / ``stream``."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

from opentelemetry.instrumentation.utils import is_instrumentation_enabled

from tokenscale.instrumentation import _semconv as sc
from tokenscale.instrumentation._base import SdkInstrumentor
from tokenscale.instrumentation._telemetry import (
    Invocation,
    Request,
    Telemetry,
    Usage,
    as_float,
    as_int,
    as_text,
    server_attributes,
)
from tokenscale.instrumentation._wrappers import (
    Extractor,
    Patches,
    Wrapper,
    async_call_wrapper,
    deferred_async_stream,
    deferred_sync_stream,
    sync_call_wrapper,
)

__all__ = ["AnthropicInstrumentor"]

_LOG = logging.getLogger(__name__)

_INSTRUMENTS: Final = ("anthropic >= 0.40",)
SCOPE: Final = "tokenscale.instrumentation.anthropic"

#: Modules whose ``Messages``/``AsyncMessages`` classes are instrumented (GA and beta).
_MODULES: Final = ("anthropic.resources.messages", "anthropic.resources.beta.messages")
#: Suffix of the (name-mangled) attribute where a stream manager keeps its deferred request.
_API_REQUEST_SUFFIX: Final = "__api_request"


def _describe(instance: Any, kwargs: Mapping[str, Any]) -> Request:
    attributes = server_attributes(instance)
    if (max_tokens := as_int(kwargs.get("max_tokens"))) is not None:
        attributes[sc.GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
    if (temperature := as_float(kwargs.get("temperature"))) is not None:
        attributes[sc.GEN_AI_REQUEST_TEMPERATURE] = temperature
    if (top_p := as_float(kwargs.get("top_p"))) is not None:
        attributes[sc.GEN_AI_REQUEST_TOP_P] = top_p
    stream = kwargs.get("stream") is True
    if stream:
        attributes[sc.GEN_AI_REQUEST_STREAM] = True
    images, documents = _media_blocks(kwargs.get("messages"))
    if images:
        attributes[sc.GEN_AI_REQUEST_IMAGE_COUNT] = images
    if documents:
        attributes[sc.GEN_AI_REQUEST_DOCUMENT_COUNT] = documents
    return Request(sc.OPERATION_CHAT, as_text(kwargs.get("model")), stream, attributes)


def _media_blocks(messages: object) -> tuple[int, int]:
    """Image and document (PDF) blocks sent: Anthropic counts them as input tokens without a split."""
    images = documents = 0
    if not isinstance(messages, list | tuple):
        return 0, 0
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        for block in content if isinstance(content, list | tuple) else ():
            kind = block.get("type") if isinstance(block, Mapping) else None
            images += kind == "image"
            documents += kind == "document"
    return images, documents


class _UsageParts:
    """Anthropic's additive usage fields; semconv input_tokens is their sum (cache included)."""

    __slots__ = ("cache_creation", "cache_read", "input", "output", "thinking")

    def __init__(self) -> None:
        self.input: int | None = None
        self.cache_read: int | None = None
        self.cache_creation: int | None = None
        self.output: int | None = None
        self.thinking: int | None = None

    def read_input(self, usage: object) -> None:
        # Streamed message_delta usage repeats these cumulatively, or leaves them None.
        if (value := as_int(getattr(usage, "input_tokens", None))) is not None:
            self.input = value
        if (value := as_int(getattr(usage, "cache_read_input_tokens", None))) is not None:
            self.cache_read = value
        if (value := as_int(getattr(usage, "cache_creation_input_tokens", None))) is not None:
            self.cache_creation = value

    def read_output(self, usage: object) -> None:
        if (value := as_int(getattr(usage, "output_tokens", None))) is not None:
            self.output = value
        details = getattr(usage, "output_tokens_details", None)
        if (value := as_int(getattr(details, "thinking_tokens", None))) is not None:
            self.thinking = value

    def write(self, target: Usage) -> None:
        if self.input is not None:
            target.input_tokens = self.input + (self.cache_read or 0) + (self.cache_creation or 0)
        target.cache_read_input_tokens = self.cache_read
        target.cache_creation_input_tokens = self.cache_creation
        target.output_tokens = self.output
        target.reasoning_output_tokens = self.thinking


def _identify(invocation: Invocation, message: object) -> None:
    if (message_id := as_text(getattr(message, "id", None))) is not None:
        invocation.response_id = message_id
    if (model := as_text(getattr(message, "model", None))) is not None:
        invocation.response_model = model


def _on_response(invocation: Invocation, message: object) -> None:
    if message is None:
        return
    _identify(invocation, message)
    if (reason := as_text(getattr(message, "stop_reason", None))) is not None:
        invocation.finish_reasons = [reason]
    usage = getattr(message, "usage", None)
    if usage is not None:
        parts = _UsageParts()
        parts.read_input(usage)
        parts.read_output(usage)
        parts.write(invocation.usage)


class _StreamObserver:
    """Reads raw stream events: ``message_start`` has the input usage, ``message_delta`` the output.

    The output count in ``message_start`` is a placeholder, so a stream that ends before its
    ``message_delta`` records no output tokens rather than a wrong number.
    """

    __slots__ = ("_invocation", "_parts")

    def __init__(self, invocation: Invocation) -> None:
        self._invocation = invocation
        self._parts = _UsageParts()

    def __call__(self, event: object) -> None:
        kind = getattr(event, "type", None)
        if kind == "message_start":
            message = getattr(event, "message", None)
            _identify(self._invocation, message)
            self._parts.read_input(getattr(message, "usage", None))
        elif kind == "message_delta":
            reason = as_text(getattr(getattr(event, "delta", None), "stop_reason", None))
            if reason is not None:
                self._invocation.finish_reasons = [reason]
            usage = getattr(event, "usage", None)
            self._parts.read_input(usage)
            self._parts.read_output(usage)
        else:
            return
        self._parts.write(self._invocation.usage)


def _stream_helper_wrapper(telemetry: Telemetry, extractor: Extractor, *, is_async: bool) -> Wrapper:
    """Wrap ``messages.stream(...)``: it returns a manager that sends the request when entered."""

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        manager = wrapped(*args, **kwargs)
        if not (telemetry.active and is_instrumentation_enabled()):
            return manager
        try:
            attribute = next((name for name in vars(manager) if name.endswith(_API_REQUEST_SUFFIX)), None)
            if attribute is None:
                _LOG.debug("unknown stream manager %r; stream not instrumented", type(manager))
                return manager
            request = extractor.describe(instance, {**kwargs, "stream": True})
            api_request = getattr(manager, attribute)
            if is_async:
                setattr(manager, attribute, deferred_async_stream(telemetry, extractor, request, api_request))
            else:
                setattr(manager, attribute, deferred_sync_stream(telemetry, extractor, request, api_request))
        except Exception:
            _LOG.debug("could not instrument stream manager", exc_info=True)
        return manager

    return wrapper


class AnthropicInstrumentor(SdkInstrumentor):
    """Records GenAI spans and metrics for ``anthropic`` ``messages.create/parse/stream`` (+ beta).

    ``instrument(tracer_provider=..., meter_provider=..., budget_guard=...)``; every argument is
    optional. Instrumenting twice is a no-op and ``uninstrument()`` restores the originals.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        import anthropic  # noqa: PLC0415 - the SDK is only needed once instrumenting

        telemetry, is_stream = self._telemetry_for(
            SCOPE, sc.PROVIDER_ANTHROPIC, kwargs, (anthropic.Stream, anthropic.AsyncStream)
        )

        extractor = Extractor(_describe, _on_response, _StreamObserver, is_stream)
        patches = Patches()
        for module_name in _MODULES:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                _LOG.debug("%s not found; not instrumented", module_name)
                continue
            for owner_name, is_async in (("Messages", False), ("AsyncMessages", True)):
                owner = getattr(module, owner_name, None)
                if not isinstance(owner, type):
                    continue
                make = async_call_wrapper if is_async else sync_call_wrapper
                for method in ("create", "parse"):
                    patches.wrap(owner, method, make(telemetry, extractor))
                patches.wrap(owner, "stream", _stream_helper_wrapper(telemetry, extractor, is_async=is_async))
        self._patches = patches
        self._telemetry = telemetry
