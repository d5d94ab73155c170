"""Cost of usage the client did not price, from the genai-prices library (pure, no I/O).

genai-prices holds maintained list prices per provider and model, including "cliff" tiers where
crossing a prompt-size threshold applies another rate to ALL tokens of the request. Calling it per
event costs ~100 us, so this module derives per-token rates once per (provider, model, tier) by
probing the library, and prices each event with four multiplications. Each disjoint token part is
priced at its own rate: uncached input, cache reads, cache writes, output (reasoning included).

A model the library does not know gets ``cost_usd = None`` — counted as unpriced, never a silent 0.
"""

from __future__ import annotations

import bisect
import warnings
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Final

from tokenscale.mapping.model import UsageEvent

__all__ = ["COMPUTED", "Rates", "price_event", "rates_for"]

#: ``cost_source`` of a cost tokenscale computed.
COMPUTED: Final = "computed"

#: OTel GenAI ``gen_ai.provider.name`` values -> genai-prices provider ids.
_PROVIDERS: Final = {
    "openai": "openai",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "anthropic": "anthropic",
    "aws.bedrock": "aws",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "gemini": "google",
    "google": "google",
    "vertex_ai": "google",
    "mistral_ai": "mistral",
    "groq": "groq",
    "deepseek": "deepseek",
    "x_ai": "x-ai",
    "perplexity": "perplexity",
    "cohere": "cohere",
}
_PROBE: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per token for each disjoint part, valid while the prompt stays inside one tier."""

    input: float
    cache_read: float
    cache_write: float
    output: float


@dataclass(frozen=True, slots=True)
class _Model:
    thresholds: tuple[int, ...]  # prompt sizes (all input tokens) above which another tier applies
    tiers: tuple[Rates, ...]  # len(thresholds) + 1 entries


def _calc(model: str, provider: str | None, **usage: int) -> Decimal:
    from genai_prices import Usage, calc_price  # noqa: PLC0415 - heavy import, only when pricing

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return calc_price(Usage(**usage), model, provider_id=provider).total_price


@lru_cache(maxsize=4096)
def _model(provider: str | None, model: str) -> _Model | None:
    from genai_prices.types import TieredPrices  # noqa: PLC0415

    provider_id = _PROVIDERS.get(provider or "", provider)
    for candidate in (provider_id, None) if provider_id else (None,):
        try:
            from genai_prices import Usage, calc_price  # noqa: PLC0415

            found = calc_price(Usage(input_tokens=1), model, provider_id=candidate)
        except Exception:  # the library raises LookupError and others for unknown models
            continue
        price = found.model_price
        starts = sorted(
            {
                tier.start
                for value in vars(price).values()
                if isinstance(value, TieredPrices)
                for tier in value.tiers
            }
        )
        # Probe each tier at a prompt size inside it: the first threshold itself is still the base
        # tier (a tier applies when the prompt is ABOVE its start).
        sizes = [starts[0] if starts else _PROBE] + [start + 1 for start in starts]
        tiers = tuple(_probe(model, candidate, size) for size in sizes)
        return _Model(tuple(starts), tiers)
    return None


def _probe(model: str, provider: str | None, size: int) -> Rates:
    """Per-token rates inside the tier that a prompt of ``size`` input tokens falls in."""
    plain = _calc(model, provider, input_tokens=size)
    half = size // 2 or 1
    with_read = _calc(model, provider, input_tokens=size, cache_read_tokens=half)
    with_write = _calc(model, provider, input_tokens=size, cache_write_tokens=half)
    with_output = _calc(model, provider, input_tokens=size, output_tokens=_PROBE)
    r_input = plain / size
    return Rates(
        input=float(r_input),
        cache_read=float((with_read - plain) / half + r_input),
        cache_write=float((with_write - plain) / half + r_input),
        output=float((with_output - plain) / _PROBE),
    )


def rates_for(provider: str | None, model: str, prompt_tokens: int = 0) -> Rates | None:
    """The per-token rates for a request of ``prompt_tokens`` input tokens (cache included)."""
    found = _model(provider, model)
    if found is None:
        return None
    return found.tiers[bisect.bisect_left(found.thresholds, prompt_tokens)]


def price_event(event: UsageEvent, *, per_request: bool) -> None:
    """Set ``event.cost_usd`` (``cost_source = 'computed'``) unless the client reported a cost.

    ``per_request`` events are priced in the tier their prompt size selects; events that aggregate
    many requests (metric increments) at the base tier, since their prompt sizes are unknown.
    """
    if event.cost_source is not None or not event.model:
        return
    prompt = event.input_tokens + event.cache_read_tokens + event.cache_write_tokens
    if not (event.input_tokens or event.cache_read_tokens or event.cache_write_tokens or event.output_tokens):
        return  # nothing to price (a metric increment's parts may cancel out: input -N, cache read +N)
    found = _model(event.provider, event.model)  # rates_for, inlined: this runs once per row
    if found is None:
        return
    rates = found.tiers[bisect.bisect_left(found.thresholds, prompt if per_request else 0)]
    event.cost_usd = (
        event.input_tokens * rates.input
        + event.cache_read_tokens * rates.cache_read
        + event.cache_write_tokens * rates.cache_write
        + event.output_tokens * rates.output
    )
    event.cost_source = COMPUTED
