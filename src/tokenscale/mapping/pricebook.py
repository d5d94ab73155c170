"""The operator's own prices (the price book), laid over genai-prices' list prices (pure, no I/O).

A :class:`CustomPrice` prices one model, for every tenant or one tenant, from its effective time on,
per disjoint token part in USD per million tokens: uncached input, cache reads, cache writes, output
(reasoning excluded) and reasoning, plus per-unit prices (images, audio seconds, ...) keyed by the
usage attribute holding their count. A part without a price of its own takes a related one: cache
reads and writes the input price, reasoning the output price.

A unit price's key may name request parameters the price depends on, in brackets:
``gen_ai.usage.image.count[size=1024x1792,quality=hd]`` prices images of that size and quality. A
parameter ``NAME`` of a ``gen_ai.usage.<modality>.<unit>`` count is the request attribute
``gen_ai.request.<modality>.NAME`` (a ``NAME`` with a dot is an attribute name of its own). Of
the keys of one count whose parameters all match the request, the one naming the most parameters
applies; the key without parameters applies when none does.

Which price applies to usage of (tenant, provider, model) at time t: among the prices of that model
effective at t, a tenant's own beats one for every tenant, a provider's own beats one for any
provider, and then the latest effective time wins. The service loads the book from the database and
passes it in; nothing here reads it.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final

from tokenscale.mapping.model import UsageEvent
from tokenscale.mapping.rules import UNIT_USAGE_KEYS

__all__ = ["PRICE_BOOK", "CustomPrice", "PriceBook", "TokenCounts", "parse_unit_key"]

#: ``cost_source`` of a cost from the price book.
PRICE_BOOK: Final = "price_book"
#: Effective time of a price that always applied (no start).
ALWAYS: Final = -(2**62)
_MILLION: Final = Decimal(1_000_000)
#: ``usage_events.cost_usd`` keeps 10 decimals.
_QUANTUM: Final = Decimal("1e-10")


_UNIT_KEY: Final = re.compile(r"^([^\[\]=,\s]+)(?:\[([^\[\]]*)\])?$")
_USAGE_PREFIX: Final = "gen_ai.usage."

#: A unit price's request parameters: (attribute name, value) pairs.
Qualifiers = tuple[tuple[str, str], ...]


def parse_unit_key(key: str) -> tuple[str, Qualifiers]:
    """The count attribute and the request parameters of a unit price's key (see the module's
    description); ValueError naming the key if it is not ``NAME`` or ``NAME[param=value,...]``."""
    match = _UNIT_KEY.match(key.strip())
    if match is None:
        raise ValueError(
            f"unit {key!r}: give NAME or NAME[param=value,...], e.g. gen_ai.usage.image.count[size=1024x1024]"
        )
    name, params = match.group(1), match.group(2)
    if params is None:
        return name, ()
    modality = name[len(_USAGE_PREFIX) :].split(".", 1)[0] if name.startswith(_USAGE_PREFIX) else ""
    qualifiers: list[tuple[str, str]] = []
    for part in params.split(","):
        param, sep, value = part.partition("=")
        param, value = param.strip(), value.strip()
        if not sep or not param or not value:
            raise ValueError(f"unit {key!r}: {part.strip()!r} is not param=value")
        if "." not in param:
            if not modality:
                raise ValueError(
                    f"unit {key!r}: {param!r} names no attribute (only gen_ai.usage.<modality>.* counts "
                    "have short parameter names; give the attribute's full name)"
                )
            param = f"gen_ai.request.{modality}.{param}"
        qualifiers.append((param, value))
    return name, tuple(sorted(qualifiers))


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """The disjoint token parts of some usage (``output`` includes ``reasoning``), its per-unit
    counts (attribute name -> count) and the attributes unit prices may depend on."""

    input: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0
    units: Mapping[str, float] = field(default_factory=dict)
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        """Every token of the usage (output includes reasoning)."""
        return self.input + self.cache_read + self.cache_write + self.output


@dataclass(frozen=True, slots=True)
class CustomPrice:
    """One entry of the price book; token prices in USD per million tokens, unit prices in USD."""

    model: str
    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    units: Mapping[str, Decimal] = field(default_factory=dict)
    #: None: every tenant.
    tenant: str | None = None
    #: None: any provider.
    provider: str | None = None
    #: Unix time in nanoseconds from which the price applies (:data:`ALWAYS`: always).
    effective_from_ns: int = ALWAYS
    #: Also replace costs the client reported (e.g. list prices, when a discount was negotiated).
    override_reported: bool = False
    #: ``units`` by count attribute: (request parameters, USD per unit), most parameters first.
    unit_rules: Mapping[str, tuple[tuple[Qualifiers, Decimal], ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        rules: dict[str, list[tuple[Qualifiers, Decimal]]] = {}
        for key, price in self.units.items():
            name, qualifiers = parse_unit_key(key)
            rules.setdefault(name, []).append((qualifiers, price))
        ordered = {name: tuple(sorted(o, key=lambda r: (-len(r[0]), r[0]))) for name, o in rules.items()}
        object.__setattr__(self, "unit_rules", ordered)

    def unit_price(self, unit: str, attributes: Mapping[str, Any]) -> Decimal | None:
        """USD per unit of the count attribute ``unit`` for a request with ``attributes``, if any."""
        for qualifiers, price in self.unit_rules.get(unit, ()):
            if all(str(attributes.get(name)) == value for name, value in qualifiers):
                return price
        return None

    def unit_cost(self, usage: TokenCounts) -> Decimal | None:
        """The cost of ``usage``'s units at this price (unrounded); None if none of them has one."""
        total: Decimal | None = None
        for unit, count in usage.units.items():
            price = self.unit_price(unit, usage.attributes)
            if count and price is not None:
                total = (total or Decimal(0)) + Decimal(repr(float(count))) * price
        return total

    def cost(self, usage: TokenCounts) -> Decimal:
        """The cost of ``usage`` at this price, rounded half up to 10 decimals (as stored)."""
        reasoning = usage.reasoning  # part of output (the disjoint model): priced apart from the rest
        total = (
            usage.input * self.input
            + usage.cache_read * (self.input if self.cache_read is None else self.cache_read)
            + usage.cache_write * (self.input if self.cache_write is None else self.cache_write)
            + (usage.output - reasoning) * self.output
            + reasoning * (self.output if self.reasoning is None else self.reasoning)
        ) / _MILLION
        units = self.unit_cost(usage)
        if units is not None:
            total += units
        return total.quantize(_QUANTUM, ROUND_HALF_UP)

    def as_json(self) -> dict[str, Any]:
        """The price as JSON values (prices as decimal strings)."""

        def text(value: Decimal | None) -> str | None:
            return None if value is None else str(value)

        return {
            "tenant": self.tenant,
            "provider": self.provider,
            "model": self.model,
            "effective_from_ns": None if self.effective_from_ns == ALWAYS else self.effective_from_ns,
            "input": text(self.input),
            "cache_read": text(self.cache_read),
            "cache_write": text(self.cache_write),
            "output": text(self.output),
            "reasoning": text(self.reasoning),
            "units": {k: str(v) for k, v in sorted(self.units.items())},
            "override_reported": self.override_reported,
        }


def _counts(event: UsageEvent, units: Iterable[str]) -> TokenCounts:
    found: dict[str, float] = {}
    for unit in units:
        value = event.attributes.get(unit)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            found[unit] = float(value)
    return TokenCounts(
        event.input_tokens,
        event.cache_read_tokens,
        event.cache_write_tokens,
        event.output_tokens,
        event.reasoning_tokens,
        found,
        event.attributes,
    )


def _has_units(event: UsageEvent) -> bool:
    """Whether ``event`` counts billable units (images, audio seconds, characters, ...)."""
    for key in UNIT_USAGE_KEYS:
        value = event.attributes.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return True
    return False


class PriceBook:
    """The price book: :meth:`lookup` finds the price of some usage, :meth:`price` prices an event."""

    def __init__(self, prices: Iterable[CustomPrice] = ()) -> None:
        self.prices: tuple[CustomPrice, ...] = tuple(prices)
        #: Every attribute a price reads: its units' counts and the parameters they are qualified by.
        self.attribute_keys: frozenset[str] = frozenset(
            key
            for price in self.prices
            for unit, rules in price.unit_rules.items()
            for key in (unit, *(param for qualifiers, _ in rules for param, _ in qualifiers))
        )
        # model -> [(specificity, starts, prices)], most specific first; starts sorted.
        groups: dict[tuple[str, str | None, str | None], list[CustomPrice]] = {}
        for price in self.prices:
            groups.setdefault((price.model, price.tenant, price.provider), []).append(price)
        self._by_model: dict[str, list[tuple[int, str | None, str | None, list[int], list[CustomPrice]]]] = {}
        for (model, tenant, provider), entries in groups.items():
            entries.sort(key=lambda p: p.effective_from_ns)
            rank = (2 if tenant is not None else 0) + (1 if provider is not None else 0)
            self._by_model.setdefault(model, []).append(
                (rank, tenant, provider, [p.effective_from_ns for p in entries], entries)
            )
        for options in self._by_model.values():
            options.sort(key=lambda o: -o[0])

    def __len__(self) -> int:
        return len(self.prices)

    def lookup(
        self, tenant: str, provider: str | None, model: str | None, time_ns: int
    ) -> CustomPrice | None:
        """The price of usage of ``model`` by ``tenant`` through ``provider`` at ``time_ns``, if any."""
        if not model:
            return None
        for _, for_tenant, for_provider, starts, entries in self._by_model.get(model, ()):
            if for_tenant is not None and for_tenant != tenant:
                continue
            if for_provider is not None and for_provider != provider:
                continue
            at = bisect.bisect_right(starts, time_ns)
            if at:
                return entries[at - 1]
        return None

    def price(self, event: UsageEvent) -> bool:
        """Price ``event`` from the book (``cost_source = 'price_book'``) when a price applies to it
        (a cost the client reported only when the price says so); whether it did."""
        if event.cost_source == "reported":
            found = self.lookup(event.tenant, event.provider, event.model, event.time_ns)
            if found is None or not found.override_reported:
                return False
        else:
            found = self.lookup(event.tenant, event.provider, event.model, event.time_ns)
            if found is None:
                return False
        usage = _counts(event, found.unit_rules)
        if not usage.tokens and _has_units(event) and found.unit_cost(usage) is None:
            return False  # billed per unit, and the price has none for these units: unpriced
        event.cost_usd = float(found.cost(usage))
        event.cost_source = PRICE_BOOK
        return True

    def apply(self, events: Iterable[Any]) -> None:
        """Price every :class:`UsageEvent` of ``events`` the book has a price for (others unchanged)."""
        if not self._by_model:
            return
        for event in events:
            if isinstance(event, UsageEvent) and event.model in self._by_model:
                self.price(event)
