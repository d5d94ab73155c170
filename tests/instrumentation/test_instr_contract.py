"""The OpenTelemetry instrumentor contract: dependencies, idempotence, clean uninstrument, suppression."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from typing import Any

import anthropic.resources.beta.messages.messages as beta_messages
import openai
import openai.resources.chat.completions.completions as chat
import pytest
import wrapt
from anthropic.resources.messages import messages
from fake_llm_api import FakeLLMAPI
from instr_support import Telemetry
from openai.resources import embeddings
from openai.resources.responses import responses
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation

from tokenscale import instrumentation
from tokenscale.instrumentation import AnthropicInstrumentor, OpenAIInstrumentor
from tokenscale.instrumentation._telemetry import Request
from tokenscale.instrumentation._telemetry import Telemetry as RecordingTelemetry
from tokenscale.instrumentation._wrappers import Extractor, Patches, async_call_wrapper, sync_call_wrapper

OPENAI_METHODS = [
    (chat.Completions, "create"),
    (chat.Completions, "parse"),
    (chat.AsyncCompletions, "create"),
    (chat.AsyncCompletions, "parse"),
    (responses.Responses, "create"),
    (responses.Responses, "parse"),
    (responses.AsyncResponses, "create"),
    (responses.AsyncResponses, "parse"),
    (embeddings.Embeddings, "create"),
    (embeddings.AsyncEmbeddings, "create"),
]
ANTHROPIC_METHODS = [
    (module.__dict__[owner], method)
    for module in (messages, beta_messages)
    for owner in ("Messages", "AsyncMessages")
    for method in ("create", "parse", "stream")
]


def originals(methods: list[tuple[type, str]]) -> list[object]:
    return [owner.__dict__[name] for owner, name in methods]


@pytest.mark.parametrize(
    ("instrumentor_class", "methods", "dependency"),
    [
        (OpenAIInstrumentor, OPENAI_METHODS, "openai >= 1.66"),
        (AnthropicInstrumentor, ANTHROPIC_METHODS, "anthropic >= 0.40"),
    ],
    ids=["openai", "anthropic"],
)
def test_instrument_twice_is_a_noop_and_uninstrument_restores_originals(
    instrumentor_class: type[BaseInstrumentor],
    methods: list[tuple[type, str]],
    dependency: str,
    telemetry: Telemetry,
) -> None:
    instrumentor = instrumentor_class()
    assert isinstance(instrumentor, BaseInstrumentor)
    assert list(instrumentor.instrumentation_dependencies()) == [dependency]
    before = originals(methods)
    providers = {"tracer_provider": telemetry.tracer_provider, "meter_provider": telemetry.meter_provider}

    instrumentor.instrument(**providers)
    wrapped = originals(methods)
    assert all(getattr(now, "__wrapped__", None) is then for now, then in zip(wrapped, before, strict=True))

    instrumentor.instrument(**providers)  # second call: no-op, nothing wrapped twice
    assert originals(methods) == wrapped

    instrumentor.uninstrument()
    assert all(now is then for now, then in zip(originals(methods), before, strict=True))
    instrumentor.uninstrument()  # harmless
    assert all(now is then for now, then in zip(originals(methods), before, strict=True))


def test_no_spans_after_uninstrument(openai_client: openai.OpenAI, telemetry: Telemetry) -> None:
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    openai_client.chat.completions.create(model="gpt-5-mini", messages=[])
    instrumentor.uninstrument()
    openai_client.chat.completions.create(model="gpt-5-mini", messages=[])
    assert len(telemetry.spans()) == 1


@pytest.mark.usefixtures("openai_instrumentor")
def test_suppress_instrumentation_is_respected(openai_client: openai.OpenAI, telemetry: Telemetry) -> None:
    with suppress_instrumentation():
        openai_client.chat.completions.create(model="gpt-5-mini", messages=[])
    assert telemetry.spans() == []
    assert telemetry.metrics() == {}


@pytest.mark.usefixtures("openai_instrumentor")
def test_no_message_content_is_recorded(
    openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    secret = "my-secret-prompt-4242"
    openai_client.chat.completions.create(model="gpt-5-mini", messages=[{"role": "user", "content": secret}])
    span = telemetry.only_span()
    recorded = repr(dict(span.attributes or {})) + repr(span.events) + repr(telemetry.metrics())
    assert secret not in recorded
    assert "Hello from the fake" not in recorded


def test_span_is_current_during_the_call(fake_api: FakeLLMAPI, telemetry: Telemetry) -> None:
    # A wrapped method sees our span as the current one (HTTP client spans nest under it).
    seen: list[Any] = []

    class Resource:
        def create(self, **kwargs: Any) -> str:
            seen.append(trace.get_current_span())
            return "ok"

    recording = RecordingTelemetry("test", "openai", tracer_provider=telemetry.tracer_provider)
    extractor = Extractor(
        describe=lambda instance, kwargs: Request("chat", kwargs.get("model")),
        on_response=lambda invocation, result: None,
        new_observer=lambda invocation: lambda item: None,
        is_stream=lambda result: False,
    )
    patches = Patches()
    patches.wrap(Resource, "create", sync_call_wrapper(recording, extractor))
    try:
        assert Resource().create(model="m") == "ok"
    finally:
        patches.restore()
    assert seen[0].get_span_context() == telemetry.only_span().context


class _SentinelError(Exception):
    pass


def test_wrapped_exception_is_the_very_same_object(telemetry: Telemetry) -> None:
    sentinel = _SentinelError("boom")

    class Resource:
        def create(self, **kwargs: Any) -> None:
            raise sentinel

        async def acreate(self, **kwargs: Any) -> None:
            raise sentinel

    recording = RecordingTelemetry("test", "openai", tracer_provider=telemetry.tracer_provider)
    extractor = Extractor(
        describe=lambda instance, kwargs: Request("chat", "m"),
        on_response=lambda invocation, result: None,
        new_observer=lambda invocation: lambda item: None,
        is_stream=lambda result: False,
    )
    patches = Patches()
    patches.wrap(Resource, "create", sync_call_wrapper(recording, extractor))
    patches.wrap(Resource, "acreate", async_call_wrapper(recording, extractor))
    try:
        with pytest.raises(_SentinelError) as caught:
            Resource().create()
        assert caught.value is sentinel
        with pytest.raises(_SentinelError) as caught_async:
            asyncio.run(Resource().acreate())
        assert caught_async.value is sentinel
    finally:
        patches.restore()
    assert [span.attributes["error.type"] for span in telemetry.spans()] == [
        "_SentinelError",
        "_SentinelError",
    ]


def test_telemetry_failure_never_breaks_the_call(telemetry: Telemetry) -> None:
    class Resource:
        def create(self, **kwargs: Any) -> str:
            return "result"

    def broken(*args: Any) -> Any:
        raise RuntimeError("bug in telemetry")

    recording = RecordingTelemetry("test", "openai", tracer_provider=telemetry.tracer_provider)
    patches = Patches()
    patches.wrap(Resource, "create", sync_call_wrapper(recording, Extractor(broken, broken, broken, broken)))
    try:
        assert Resource().create() == "result"  # describe() failed: called uninstrumented
    finally:
        patches.restore()

    extractor = Extractor(lambda instance, kwargs: Request("chat", "m"), broken, broken, broken)
    patches.wrap(Resource, "create", sync_call_wrapper(recording, extractor))
    try:
        assert Resource().create() == "result"  # reading the response failed: span still ends
    finally:
        patches.restore()
    assert [span.name for span in telemetry.spans()] == ["chat m"]


def test_public_surface() -> None:
    assert sorted(instrumentation.__all__) == [
        "AnthropicInstrumentor",
        "BudgetCheck",
        "BudgetExceededError",
        "BudgetExceededWarning",
        "BudgetGuard",
        "BudgetStatus",
        "BudgetWindowStatus",
        "InstrumentationHandle",
        "OpenAIInstrumentor",
        "UsageContext",
        "UsageScope",
        "bind_context",
        "check_budgets",
        "current_usage_context",
        "instrument",
        "usage_context",
    ]
    assert all(hasattr(instrumentation, name) for name in instrumentation.__all__)


def test_imports_nothing_of_the_server() -> None:
    code = (
        "import sys, tokenscale.instrumentation as i;"
        "h = i.instrument;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'psycopg', 'psycopg_pool', 'starlette', 'uvicorn', 'grpc', 'openai', 'anthropic'} "
        "or m.startswith(('tokenscale.receiver', 'tokenscale.store', 'tokenscale.mapping', "
        "'tokenscale.pipeline', 'tokenscale.otlp')));"
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_uninstrument_under_a_foreign_wrapper_goes_passive(
    openai_client: openai.OpenAI, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    original = chat.Completions.__dict__["create"]
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    foreign_calls = []

    def foreign(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        foreign_calls.append(1)
        return wrapped(*args, **kwargs)

    wrapt.wrap_function_wrapper(chat.Completions, "create", foreign)  # someone else, on top of ours
    try:
        with caplog.at_level(logging.WARNING):
            instrumentor.uninstrument()
        assert "re-wrapped by someone else" in caplog.text
        openai_client.chat.completions.create(model="gpt-5-mini", messages=[])
        assert foreign_calls == [1]
        assert telemetry.spans() == []  # ours is still in the chain, but passive
    finally:
        chat.Completions.create = original
