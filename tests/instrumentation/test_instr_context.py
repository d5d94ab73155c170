"""usage_context: nesting, decorator, asyncio tasks, threads, and what lands on spans and metrics."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
from fake_llm_api import FakeLLMAPI
from instr_support import Telemetry

from tokenscale.instrumentation import (
    UsageContext,
    bind_context,
    current_usage_context,
    usage_context,
)

MODEL = "gpt-5-mini"


def test_empty_by_default() -> None:
    assert current_usage_context() == UsageContext()
    assert dict(current_usage_context().span_attributes) == {}


def test_attributes_of_a_context() -> None:
    with usage_context(
        user="ana@example.com", tenant="acme", conversation_id="conv-1", bot_id="faq", retries=2
    ) as context:
        assert current_usage_context() is context
        assert dict(context.span_attributes) == {
            "user.id": "ana@example.com",
            "user.email": "ana@example.com",
            "tokenscale.tenant": "acme",
            "gen_ai.conversation.id": "conv-1",
            "tokenscale.meta.bot_id": "faq",
            "tokenscale.meta.retries": 2,
        }
        # Metric points: user and tenant only (conversation ids and metadata can be unbounded).
        assert dict(context.metric_attributes) == {
            "user.id": "ana@example.com",
            "user.email": "ana@example.com",
            "tokenscale.tenant": "acme",
        }
    assert current_usage_context() == UsageContext()


def test_user_without_at_sign_has_no_email() -> None:
    with usage_context(user="u-123") as context:
        assert dict(context.span_attributes) == {"user.id": "u-123"}


def test_meta_values_that_are_not_attribute_types_become_strings() -> None:
    with usage_context(dataset_id=("a", 1), skipped=None) as context:
        assert dict(context.span_attributes) == {"tokenscale.meta.dataset_id": "('a', 1)"}


def test_nested_contexts_merge_inner_wins() -> None:
    with usage_context(user="ana", tenant="acme", bot_id="faq", task_id="t1"):
        with usage_context(user="bob", task_id="t2", dataset_id="d9") as inner:
            assert inner == UsageContext(
                user="bob",
                tenant="acme",
                meta={"bot_id": "faq", "task_id": "t2", "dataset_id": "d9"},
            )
        assert current_usage_context().user == "ana"
        assert current_usage_context().meta == {"bot_id": "faq", "task_id": "t1"}


def test_scope_object_can_be_reentered() -> None:
    scope = usage_context(tenant="acme")
    with scope, usage_context(user="ana"), scope:
        assert current_usage_context().tenant == "acme"
        assert current_usage_context().user == "ana"
    assert current_usage_context() == UsageContext()


def test_decorator_sync_and_async() -> None:
    @usage_context(user="ana", task_id="t1")
    def sync_work(x: int) -> tuple[int, UsageContext]:
        return x * 2, current_usage_context()

    @usage_context(tenant="acme")
    async def async_work() -> UsageContext:
        await asyncio.sleep(0)
        return current_usage_context()

    assert sync_work.__name__ == "sync_work"
    value, context = sync_work(21)
    assert value == 42
    assert context.user == "ana" and context.meta == {"task_id": "t1"}
    assert asyncio.run(async_work()).tenant == "acme"
    assert current_usage_context() == UsageContext()


def test_async_with_and_concurrent_tasks_are_isolated() -> None:
    async def worker(user: str) -> list[str | None]:
        seen = []
        async with usage_context(user=user):
            for _ in range(3):
                await asyncio.sleep(0)
                seen.append(current_usage_context().user)
        return seen

    async def main() -> list[list[str | None]]:
        return list(await asyncio.gather(worker("a"), worker("b"), worker("c")))

    assert asyncio.run(main()) == [["a"] * 3, ["b"] * 3, ["c"] * 3]


def test_threads_need_bind_context() -> None:
    seen: dict[str, Any] = {}
    with usage_context(user="ana", tenant="acme"):
        plain = threading.Thread(target=lambda: seen.update(plain=current_usage_context().user))
        bound = threading.Thread(target=bind_context(lambda: seen.update(bound=current_usage_context().user)))
        context = contextvars.copy_context()
        manual = threading.Thread(
            target=lambda: seen.update(manual=context.run(lambda: current_usage_context().tenant))
        )
        for thread in (plain, bound, manual):
            thread.start()
            thread.join()
    assert seen == {"plain": None, "bound": "ana", "manual": "acme"}


def test_bound_function_runs_in_several_threads_at_once() -> None:
    with usage_context(user="ana"):
        work = bind_context(current_usage_context)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: work().user, range(16)))
    assert results == ["ana"] * 16


@pytest.mark.usefixtures("openai_instrumentor")
def test_context_on_spans_and_metrics(openai_client: openai.OpenAI, telemetry: Telemetry) -> None:
    with usage_context(user="ana@example.com", tenant="acme", conversation_id="conv-7", bot_id="faq"):
        openai_client.chat.completions.create(model=MODEL, messages=[])
    attributes = dict(telemetry.only_span().attributes or {})
    assert {
        key: attributes[key] for key in attributes if not key.startswith(("gen_ai.", "server.", "openai."))
    } == {
        "user.id": "ana@example.com",
        "user.email": "ana@example.com",
        "tokenscale.tenant": "acme",
        "tokenscale.meta.bot_id": "faq",
    }
    assert attributes["gen_ai.conversation.id"] == "conv-7"
    for name, points in telemetry.metrics().items():
        for point in points:
            assert point.attributes["user.id"] == "ana@example.com", name
            assert point.attributes["tokenscale.tenant"] == "acme", name
            assert "gen_ai.conversation.id" not in point.attributes
            assert "tokenscale.meta.bot_id" not in point.attributes
            assert "gen_ai.response.id" not in point.attributes


@pytest.mark.usefixtures("openai_instrumentor")
def test_context_flows_into_asyncio_tasks(fake_api: FakeLLMAPI, telemetry: Telemetry) -> None:
    async def call(client: openai.AsyncOpenAI, task: str) -> None:
        with usage_context(task_id=task):
            await client.chat.completions.create(model=MODEL, messages=[])

    async def main() -> None:
        async with openai.AsyncOpenAI(
            base_url=fake_api.openai_base_url, api_key="k", max_retries=0
        ) as client:
            with usage_context(user="ana", tenant="acme"):
                tasks = [asyncio.create_task(call(client, f"t{number}")) for number in range(3)]
            await asyncio.gather(*tasks)

    asyncio.run(main())
    found = sorted(
        (
            span.attributes["user.id"],
            span.attributes["tokenscale.tenant"],
            span.attributes["tokenscale.meta.task_id"],
        )
        for span in telemetry.spans()
    )
    assert found == [("ana", "acme", "t0"), ("ana", "acme", "t1"), ("ana", "acme", "t2")]


@pytest.mark.usefixtures("openai_instrumentor")
def test_context_in_worker_threads(openai_client: openai.OpenAI, telemetry: Telemetry) -> None:
    def call(number: int) -> None:
        with usage_context(task_id=f"t{number}"):
            openai_client.chat.completions.create(model=MODEL, messages=[])

    with usage_context(user="ana"), ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(bind_context(call), range(3)))
    found = sorted(
        (span.attributes["user.id"], span.attributes["tokenscale.meta.task_id"]) for span in telemetry.spans()
    )
    assert found == [("ana", "t0"), ("ana", "t1"), ("ana", "t2")]
