"""Computed costs: genai-prices' own answer, per disjoint token part and tier; unknown models unpriced."""

from __future__ import annotations

import warnings

import psycopg
import pytest
from genai_prices import Usage, calc_price

from tokenscale.mapping import MappingResult, UsageEvent
from tokenscale.mapping.pricing import price_event, rates_for
from tokenscale.store import migrate
from tokenscale.store.writer import UsageWriter, open_pool


def reference(provider: str, model: str, *, uncached: int, read: int, write: int, output: int) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        usage = Usage(
            input_tokens=uncached + read + write,  # genai-prices counts cache tokens inside input
            cache_read_tokens=read,
            cache_write_tokens=write,
            output_tokens=output,
        )
        return float(calc_price(usage, model, provider_id=provider).total_price)


def event(
    model: str, provider: str, *, uncached: int, read: int = 0, write: int = 0, output: int = 0
) -> UsageEvent:
    return UsageEvent(
        time_ns=1_795_392_000 * 10**9,
        tenant="t",
        carrier="gen_ai.span",
        rank=3,
        tool="app",
        stream="s",
        service_name="app",
        dedupe_key=f"{model}{uncached}{read}{write}{output}".encode(),
        provider=provider,
        model=model,
        requests=1,
        input_tokens=uncached,
        cache_read_tokens=read,
        cache_write_tokens=write,
        output_tokens=output,
    )


@pytest.mark.parametrize(
    ("provider", "ours", "model"),
    [("anthropic", "anthropic", "claude-sonnet-4-5"), ("google", "gcp.gemini", "gemini-2.5-pro")],
)
@pytest.mark.parametrize("prompt", [1_000, 199_999, 200_000, 200_001, 350_000])
def test_each_part_at_its_rate_in_the_tier_the_prompt_selects(
    provider: str, ours: str, model: str, prompt: int
) -> None:
    read, write = prompt // 4, prompt // 8
    e = event(model, ours, uncached=prompt - read - write, read=read, write=write, output=1_234)
    price_event(e, per_request=True)
    assert e.cost_source == "computed"
    expected = reference(
        provider, model, uncached=prompt - read - write, read=read, write=write, output=1_234
    )
    assert e.cost_usd == pytest.approx(expected, rel=1e-12)


def test_the_cliff_tier_applies_above_the_threshold() -> None:
    below = rates_for("anthropic", "claude-sonnet-4-5", 200_000)
    above = rates_for("anthropic", "claude-sonnet-4-5", 200_001)
    assert below is not None and above is not None
    assert above.input > below.input


def test_aggregates_are_priced_at_the_base_tier() -> None:
    e = event("claude-sonnet-4-5", "anthropic", uncached=500_000)
    price_event(e, per_request=False)
    base = rates_for("anthropic", "claude-sonnet-4-5", 0)
    assert base is not None
    assert e.cost_usd == pytest.approx(500_000 * base.input, rel=1e-12)


def test_a_reported_cost_is_kept() -> None:
    e = event("claude-sonnet-4-5", "anthropic", uncached=1_000)
    e.cost_usd, e.cost_source = 0.5, "reported"
    price_event(e, per_request=True)
    assert (e.cost_usd, e.cost_source) == (0.5, "reported")


def test_unknown_models_are_unpriced_not_free(db_url: str) -> None:
    migrate(db_url)
    events = [event("our-own-finetune-7", "openai", uncached=100 + i, output=5) for i in range(3)]
    events.append(event("gpt-4o-mini", "openai", uncached=1_000, output=10))
    for e in events:
        price_event(e, per_request=True)
    pool = open_pool(db_url)
    try:
        UsageWriter(pool).write(MappingResult(events=events))
    finally:
        pool.close()
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT model, requests, cost_usd, unpriced_events FROM tokenscale.usage_daily ORDER BY model"
        ).fetchall()
    priced = reference("openai", "gpt-4o-mini", uncached=1_000, read=0, write=0, output=10)
    assert rows[0][:2] == ("gpt-4o-mini", 1)
    assert float(rows[0][2]) == pytest.approx(priced, abs=1e-10)
    assert rows[0][3] == 0
    assert rows[1] == ("our-own-finetune-7", 3, None, 3)
