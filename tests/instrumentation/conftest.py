"""Fixtures: the fake provider API, in-memory OTel exporters, instrumented SDK clients."""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from fake_llm_api import FakeLLMAPI

if TYPE_CHECKING:
    import anthropic
    import openai
    from instr_support import Telemetry

    from tokenscale.instrumentation import AnthropicInstrumentor, OpenAIInstrumentor

# The instrumentation's own and its test dependencies; without them these tests are not collected
# (with a warning) rather than breaking the collection of the whole suite.
_REQUIRED = ("openai", "anthropic", "wrapt", "opentelemetry.instrumentation", "opentelemetry.sdk")
_MISSING = [name for name in _REQUIRED if importlib.util.find_spec(name) is None]
if _MISSING:
    collect_ignore_glob = ["test_*.py"]
    warnings.warn(f"tests/instrumentation not collected: missing {', '.join(_MISSING)}", stacklevel=1)


@pytest.fixture(scope="session")
def fake_api() -> Iterator[FakeLLMAPI]:
    with FakeLLMAPI() as api:
        yield api


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    from instr_support import Telemetry  # noqa: PLC0415 - see _REQUIRED

    recorded = Telemetry()
    yield recorded
    recorded.shutdown()


@pytest.fixture
def openai_instrumentor(telemetry: Telemetry) -> Iterator[OpenAIInstrumentor]:
    from tokenscale.instrumentation import OpenAIInstrumentor  # noqa: PLC0415 - see _REQUIRED

    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    yield instrumentor
    instrumentor.uninstrument()


@pytest.fixture
def anthropic_instrumentor(telemetry: Telemetry) -> Iterator[AnthropicInstrumentor]:
    from tokenscale.instrumentation import AnthropicInstrumentor  # noqa: PLC0415 - see _REQUIRED

    instrumentor = AnthropicInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    yield instrumentor
    instrumentor.uninstrument()


@pytest.fixture
def openai_client(fake_api: FakeLLMAPI) -> Iterator[openai.OpenAI]:
    import openai  # noqa: PLC0415 - see _REQUIRED

    client = openai.OpenAI(base_url=fake_api.openai_base_url, api_key="sk-test", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def async_openai_client(fake_api: FakeLLMAPI) -> openai.AsyncOpenAI:
    import openai  # noqa: PLC0415 - see _REQUIRED

    return openai.AsyncOpenAI(base_url=fake_api.openai_base_url, api_key="sk-test", max_retries=0)


@pytest.fixture
def anthropic_client(fake_api: FakeLLMAPI) -> Iterator[anthropic.Anthropic]:
    import anthropic  # noqa: PLC0415 - see _REQUIRED

    client = anthropic.Anthropic(base_url=fake_api.anthropic_base_url, api_key="sk-ant-test", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def async_anthropic_client(fake_api: FakeLLMAPI) -> anthropic.AsyncAnthropic:
    import anthropic  # noqa: PLC0415 - see _REQUIRED

    return anthropic.AsyncAnthropic(
        base_url=fake_api.anthropic_base_url, api_key="sk-ant-test", max_retries=0
    )
