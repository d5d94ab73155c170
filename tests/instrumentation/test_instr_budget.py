"""Budget guard against a real local HTTP server: raise, warn, cache, and fail-open."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import warnings
from collections.abc import Iterator

import anthropic
import openai
import pytest
from fake_llm_api import BudgetAnswer, FakeLLMAPI, budget_answer
from instr_support import Telemetry

from tokenscale.errors import TokenscaleError
from tokenscale.instrumentation import (
    AnthropicInstrumentor,
    BudgetExceededError,
    BudgetExceededWarning,
    BudgetGuard,
    OpenAIInstrumentor,
    usage_context,
)
from tokenscale.instrumentation._budget import V1_BUDGET_CHECK_PATH as BUDGET_CHECK_PATH

MODEL = "gpt-5-mini"
SPENT = budget_answer(1200, 1000)


@pytest.fixture(autouse=True)
def fresh_budget(fake_api: FakeLLMAPI, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("TOKENSCALE_API_URL", "TOKENSCALE_API_KEY", "TOKENSCALE_COMPANY_ID"):
        monkeypatch.delenv(name, raising=False)
    fake_api.budget = BudgetAnswer()
    fake_api.clear()
    yield
    fake_api.budget = BudgetAnswer()


def instrument_with(guard: BudgetGuard, telemetry: Telemetry) -> Iterator[None]:
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider, budget_guard=guard
    )
    try:
        yield
    finally:
        instrumentor.uninstrument()


@pytest.fixture
def guard(fake_api: FakeLLMAPI, telemetry: Telemetry) -> Iterator[BudgetGuard]:
    budget_guard = BudgetGuard(fake_api.url, company_id="acme", api_key="ts-key")
    yield from instrument_with(budget_guard, telemetry)


def checks(api: FakeLLMAPI) -> list[dict[str, list[str]]]:
    return [request.body for request in api.requests_to(BUDGET_CHECK_PATH)]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def chat(client: openai.OpenAI) -> None:
    client.chat.completions.create(model=MODEL, messages=[])


@pytest.mark.usefixtures("guard")
def test_within_budget_the_call_goes_ahead(openai_client: openai.OpenAI, fake_api: FakeLLMAPI) -> None:
    chat(openai_client)
    (check,) = fake_api.requests_to(BUDGET_CHECK_PATH)
    assert check.body == {"model": [MODEL]}  # the call's model; the tenant is the API key's
    assert check.headers["authorization"] == "Bearer ts-key"
    assert len(fake_api.requests_to("/v1/chat/completions")) == 1


@pytest.mark.usefixtures("guard")
def test_spent_budget_raises_before_the_call(
    openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    fake_api.budget = BudgetAnswer(body=SPENT)
    with pytest.raises(BudgetExceededError) as caught:
        chat(openai_client)
    assert isinstance(caught.value, TokenscaleError)
    assert caught.value.company_id == "acme"
    assert caught.value.check.allowed is False
    assert [(w.scope, w.scope_value, w.used, w.limit) for w in caught.value.windows] == [
        ("user", "ana@example.com", 1200.0, 1000.0)
    ]
    assert str(caught.value) == "budget spent (user ana@example.com: 1200 of 1000 tokens in the last 30 days)"
    assert fake_api.requests_to("/v1/chat/completions") == []
    assert telemetry.only_span().attributes["error.type"] == "BudgetExceededError"


def test_warn_mode_warns_and_calls(
    openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    fake_api.budget = BudgetAnswer(body=SPENT)
    guard = BudgetGuard(fake_api.url, company_id="acme", on_exceeded="warn")
    for _ in instrument_with(guard, telemetry):
        with pytest.warns(BudgetExceededWarning, match="1200 of 1000 tokens"):
            chat(openai_client)
    assert len(fake_api.requests_to("/v1/chat/completions")) == 1
    assert "error.type" not in (telemetry.only_span().attributes or {})


def test_answers_are_cached(openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry) -> None:
    guard = BudgetGuard(fake_api.url, company_id="acme", cache_seconds=0.2)
    for _ in instrument_with(guard, telemetry):
        chat(openai_client)
        chat(openai_client)
        assert len(checks(fake_api)) == 1
        time.sleep(0.25)
        chat(openai_client)
        assert len(checks(fake_api)) == 2


def test_identity_from_usage_context_and_guard(
    openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    guard = BudgetGuard(fake_api.url, tool="faq-bot", user="fallback@example.com")
    for _ in instrument_with(guard, telemetry):
        chat(openai_client)  # the guard's user and tool, the call's model
        with usage_context(user="ana@example.com", tenant="t9", team="search"):
            chat(openai_client)  # the context's user and team win
        with usage_context(user="ana@example.com", tenant="t9", team="search"):
            chat(openai_client)  # cached for this identity: no second check
    assert checks(fake_api) == [
        {"user": ["fallback@example.com"], "tool": ["faq-bot"], "model": [MODEL]},
        {"user": ["ana@example.com"], "team": ["search"], "tool": ["faq-bot"], "model": [MODEL]},
    ]


@pytest.mark.parametrize(
    "answer",
    [
        BudgetAnswer(status=500),
        BudgetAnswer(status=404),
        BudgetAnswer(body=["not", "an", "object"]),
        BudgetAnswer(body={"windows": []}),
        BudgetAnswer(body={**SPENT, "windows": [{**SPENT["windows"][0], "used": "many"}]}),
    ],
    ids=["http-500", "http-404", "not-an-object", "no-allowed", "bad-number"],
)
def test_fail_open_on_bad_answers(
    answer: BudgetAnswer, openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    fake_api.budget = answer
    guard = BudgetGuard(fake_api.url, company_id="acme")
    for _ in instrument_with(guard, telemetry):
        chat(openai_client)
    assert guard.status() is None
    assert len(fake_api.requests_to("/v1/chat/completions")) == 1


def test_fail_open_when_unreachable(
    openai_client: openai.OpenAI, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    guard = BudgetGuard(f"http://127.0.0.1:{closed_port()}", company_id="acme", cache_seconds=0)
    with caplog.at_level(logging.WARNING, logger="tokenscale.instrumentation._budget"):
        for _ in instrument_with(guard, telemetry):
            chat(openai_client)
            chat(openai_client)
    assert len(telemetry.spans()) == 2
    # One warning per outage, not one per call.
    assert [record.message for record in caplog.records].count(caplog.records[0].message) == 1
    assert "fail-open" in caplog.records[0].message


def test_fail_open_when_slow(
    openai_client: openai.OpenAI, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    fake_api.budget = BudgetAnswer(body=SPENT, delay=2.0)
    guard = BudgetGuard(fake_api.url, company_id="acme", timeout=0.2)
    started = time.monotonic()
    for _ in instrument_with(guard, telemetry):
        chat(openai_client)
        chat(openai_client)  # the "unknown" answer is cached: no second timeout
    assert time.monotonic() - started < 1.5
    assert len(fake_api.requests_to("/v1/chat/completions")) == 2


def test_async_calls_check_off_the_event_loop(fake_api: FakeLLMAPI, telemetry: Telemetry) -> None:
    fake_api.budget = BudgetAnswer(body=SPENT)

    async def main() -> None:
        async with openai.AsyncOpenAI(
            base_url=fake_api.openai_base_url, api_key="k", max_retries=0
        ) as client:
            with pytest.raises(BudgetExceededError):
                await client.chat.completions.create(model=MODEL, messages=[])

    for _ in instrument_with(BudgetGuard(fake_api.url, company_id="acme"), telemetry):
        asyncio.run(main())
    assert fake_api.requests_to("/v1/chat/completions") == []


def test_anthropic_stream_helper_is_guarded(
    anthropic_client: anthropic.Anthropic, fake_api: FakeLLMAPI, telemetry: Telemetry
) -> None:
    fake_api.budget = BudgetAnswer(body=SPENT)
    instrumentor = AnthropicInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        budget_guard=BudgetGuard(fake_api.url, company_id="acme"),
    )
    try:
        manager = anthropic_client.messages.stream(model="claude-opus-4-8", max_tokens=10, messages=[])
        with pytest.raises(BudgetExceededError), manager:
            pass
        with pytest.raises(BudgetExceededError):
            anthropic_client.messages.create(model="claude-opus-4-8", max_tokens=10, messages=[])
    finally:
        instrumentor.uninstrument()
    assert fake_api.requests_to("/v1/messages") == []


def test_guard_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="TOKENSCALE_API_URL"):
        BudgetGuard()
    with pytest.raises(ValueError, match="on_exceeded"):
        BudgetGuard("http://x", on_exceeded="explode")  # type: ignore[arg-type]
    monkeypatch.setenv("TOKENSCALE_API_URL", "https://ts.example.com/")
    monkeypatch.setenv("TOKENSCALE_COMPANY_ID", "env-co")
    guard = BudgetGuard(team="a b&c")
    assert guard.resolve_company() == "env-co"
    assert guard.check_url() == "https://ts.example.com/v1/budgets/check?team=a+b%26c"
    assert guard.check_url(model="o3") == "https://ts.example.com/v1/budgets/check?team=a+b%26c&model=o3"
    with usage_context(tenant="ctx-co", user="ana@example.com"):
        assert guard.resolve_company() == "ctx-co"
        assert guard.resolve_company("arg-co") == "arg-co"
        assert (
            guard.check_url() == "https://ts.example.com/v1/budgets/check?user=ana%40example.com&team=a+b%26c"
        )


def test_no_warning_when_within_budget(
    openai_client: openai.OpenAI, telemetry: Telemetry, fake_api: FakeLLMAPI
) -> None:
    guard = BudgetGuard(fake_api.url, company_id="acme", on_exceeded="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in instrument_with(guard, telemetry):
            chat(openai_client)
