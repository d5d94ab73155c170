"""Carried attributes (``MappingOptions.carried``): the mapping leaves the values of attributes nobody
needs unread, and nothing stored changes.

With a ``carried`` predicate (the writer's: what it stores, and what the price book prices by), a
span's or log record's usage event carries only the attributes the mapping reads, those the limits
check, and those the predicate names. Every other field of every event, every rejection and every
message, and every carried attribute, must be exactly what the mapping without the predicate gives:
checked on every captured client request and on the mutated corpus of the equivalence tests (empty
and zero values, duplicate keys, every AnyValue kind, identity keys on the resource, content keys).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from test_mapping_equivalence import CAPTURED, mutated_corpus
from tokenscale.mapping import MappingOptions, map_request
from tokenscale.mapping._core import _READ_KEYS
from tokenscale.mapping.limits import DEFAULT_LIMITS, Limits, enforce_limits
from tokenscale.mapping.model import ActivityEvent, CumulativePoint, MappingResult, UsageEvent
from tokenscale.mapping.pricebook import CustomPrice, PriceBook
from tokenscale.pipeline import ExportPipeline
from tokenscale.store.attributes import is_kept, kept_attributes
from tokenscale.store.writer import UsageWriter

USAGE_FIELDS = tuple(f.name for f in dataclasses.fields(UsageEvent) if f.name != "attributes")


def writer_carried(extra: frozenset[str] = frozenset()) -> Callable[[str], bool]:
    """The default writer's predicate (what it stores), and ``extra`` keys (a price book's)."""
    return lambda key: is_kept(key) or key in extra


#: A price book's keys: a unit and request parameters no stored attribute names.
PRICE_KEYS = frozenset({"gen_ai.request.temperature", "gen_ai.request.max_tokens", "server.address"})
PREDICATES = {"writer": writer_carried(), "writer+prices": writer_carried(PRICE_KEYS)}


def mapped(
    signal: str, request: Any, options: MappingOptions, limits: Limits = DEFAULT_LIMITS
) -> MappingResult:
    return enforce_limits(map_request(signal, request, "t", options), limits)  # type: ignore[arg-type]


def assert_same_event(full: Any, lean: Any, carried: Callable[[str], bool] | None) -> None:
    """``carried`` None: every attribute (metric points)."""
    assert type(full) is type(lean)
    if isinstance(full, ActivityEvent):
        assert repr(full) == repr(lean)
        return
    # repr: NaN equals itself, 1 and 1.0 and True differ, and dict order shows
    assert repr([getattr(lean, n) for n in USAGE_FIELDS]) == repr([getattr(full, n) for n in USAGE_FIELDS])
    assert (full.aggregate, full.identity) == (lean.aggregate, lean.identity)
    wanted = {k: v for k, v in full.attributes.items() if carried is None or k in _READ_KEYS or carried(k)}
    assert repr(lean.attributes) == repr(wanted)
    assert repr(kept_attributes(lean.attributes)) == repr(kept_attributes(full.attributes))


def assert_same(
    signal: str, full: MappingResult, lean: MappingResult, carried: Callable[[str], bool]
) -> None:
    assert (lean.rejected, lean.errors) == (full.rejected, full.errors)
    for name in ("events", "listed", "activity"):
        a, b = getattr(full, name), getattr(lean, name)
        assert len(a) == len(b), name
        for x, y in zip(a, b, strict=True):
            assert_same_event(x, y, None if signal == "metrics" else carried)
    assert len(full.cumulative) == len(lean.cumulative)
    for p, q in zip(full.cumulative, lean.cumulative, strict=True):
        assert isinstance(p, CumulativePoint) and isinstance(q, CumulativePoint)
        assert (p.series_key, p.start_ns, p.time_ns, p.value, p.contributions, p.count) == (
            q.series_key,
            q.start_ns,
            q.time_ns,
            q.value,
            q.contributions,
            q.count,
        )
        assert_same_event(p.event, q.event, None)  # metric points carry everything


@pytest.mark.parametrize("predicate", sorted(PREDICATES))
@pytest.mark.parametrize("capture", [False, True])
@pytest.mark.parametrize(("name", "signal", "request_"), CAPTURED, ids=[c[0] for c in CAPTURED])
def test_captured_requests_carry_what_is_needed(
    name: str, signal: str, request_: Any, capture: bool, predicate: str
) -> None:
    carried = PREDICATES[predicate]
    full = mapped(signal, request_, MappingOptions(capture_content=capture))
    lean = mapped(signal, request_, MappingOptions(capture_content=capture, carried=carried))
    assert_same(signal, full, lean, carried)


@pytest.mark.parametrize("predicate", sorted(PREDICATES))
def test_mutated_captures_carry_what_is_needed(predicate: str) -> None:
    carried = PREDICATES[predicate]
    checked = 0
    for signal, request, options in mutated_corpus(400, 20261123):
        full = mapped(signal, request, options)
        lean = mapped(signal, request, dataclasses.replace(options, carried=carried))
        assert_same(signal, full, lean, carried)
        if signal != "metrics":
            checked += len(full.events) + len(full.listed) + full.rejected
    assert checked > 300  # spans and log records mapped or rejected, not only metric points


def span_request(attrs: dict[str, Any], extra: int = 0) -> ExportTraceServiceRequest:
    """One GenAI chat span with ``attrs`` and ``extra`` more ``x.N`` attributes (none stored)."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="svc")))
    rs.resource.attributes.append(KeyValue(key="host.name", value=AnyValue(string_value="h1")))
    span = rs.scope_spans.add().spans.add()
    span.name = "chat gpt-4o"
    span.trace_id = bytes(range(16))
    span.span_id = bytes(range(8))
    span.start_time_unix_nano = 1_795_000_000 * 10**9
    span.end_time_unix_nano = span.start_time_unix_nano + 10**9
    base = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 7,
        "deployment.environment.name": "prod",
    }
    for key, value in {**base, **attrs}.items():
        v = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
        span.attributes.append(KeyValue(key=key, value=v))
    for i in range(extra):
        span.attributes.append(KeyValue(key=f"x.{i}", value=AnyValue(string_value=f"v{i}")))
    return request


def test_an_event_carries_only_what_is_read_stored_or_priced() -> None:
    request = span_request({"gen_ai.request.temperature": "0.2", "server.address": "api"})
    lean = mapped("traces", request, MappingOptions(carried=writer_carried(frozenset({"server.address"}))))
    (event,) = lean.events
    assert event.attributes == {
        "service.name": "svc",
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 7,
        "deployment.environment.name": "prod",
        "server.address": "api",
        "otel.trace_id": bytes(range(16)).hex(),
    }
    full = mapped("traces", request, MappingOptions())
    assert full.events[0].attributes["host.name"] == "h1"
    assert full.events[0].attributes["gen_ai.request.temperature"] == "0.2"


def test_a_nul_in_an_attribute_nobody_reads_no_longer_rejects_the_span() -> None:
    """The limits check the attributes an event carries: a NUL in one that is neither stored, read
    nor priced is not looked at (the span is stored); in one that is carried, it still rejects it."""
    carried = MappingOptions(carried=writer_carried())
    unread = span_request({"gen_ai.request.temperature": "a\x00b"})
    assert mapped("traces", unread, MappingOptions()).rejected == 1
    lean = mapped("traces", unread, carried)
    assert lean.rejected == 0
    assert kept_attributes(lean.events[0].attributes) == {
        "deployment.environment.name": "prod",
        "otel.trace_id": bytes(range(16)).hex(),
    }
    stored = span_request({"tokenscale.meta.team": "a\x00b"})
    full, lean = mapped("traces", stored, MappingOptions()), mapped("traces", stored, carried)
    assert lean.rejected == full.rejected == 1
    assert (
        lean.errors
        == full.errors
        == ["gen_ai.span record: attribute 'tokenscale.meta.team': contains a NUL character"]
    )
    nul_key = span_request({"x\x00y": "v"})
    full, lean = mapped("traces", nul_key, MappingOptions()), mapped("traces", nul_key, carried)
    assert lean.rejected == full.rejected == 1
    assert lean.errors == full.errors


@pytest.mark.parametrize("extra", [0, 9, 10, 100, 117, 118, 120, 121, 200])
def test_a_record_near_the_attribute_limit_carries_all_and_is_cut_as_before(extra: int) -> None:
    """A record that may reach ``max_attributes`` (with its resource's kept attributes and the up to
    three the mapping adds) carries every attribute, so that the limit drops the same ones (here the
    trace id, added last) and says so in the same words. The span has 6 + ``extra`` attributes, its
    resource 2."""
    carried = writer_carried()
    request = span_request({}, extra)
    for limit in (DEFAULT_LIMITS.max_attributes, 20):
        limits = Limits(max_attributes=limit)
        full = mapped("traces", request, MappingOptions(), limits)
        lean = mapped("traces", request, MappingOptions(carried=carried, carry_all_above=limit), limits)
        everything = 8 + extra + 3 > limit
        assert_same("traces", full, lean, (lambda key: True) if everything else carried)
        (event,) = lean.events
        assert len(event.attributes) == (min(limit, 9 + extra) if everything else 8)
        assert ("otel.trace_id" in event.attributes) == (9 + extra <= limit)
        assert lean.errors == (
            []
            if 9 + extra <= limit
            else [
                f"{9 + extra} attributes on one record, more than the limit of {limit}: the rest were dropped"
            ]
        )


def test_the_pipeline_carries_what_its_writer_needs() -> None:
    """The pipeline narrows its mapping to the writer's needs: what it stores and what its price book
    reads (re-read as the book changes); with ``keep_attributes`` every attribute."""
    book = PriceBook(
        [
            CustomPrice(
                model="gpt-image-1",
                input=Decimal(1),
                output=Decimal(1),
                units={"gen_ai.usage.image.count[quality=hd,server.address=api]": Decimal(1)},
            )
        ]
    )
    assert book.attribute_keys == {
        "gen_ai.usage.image.count",
        "gen_ai.request.image.quality",
        "server.address",
    }

    class Book:
        def current(self) -> PriceBook:
            return book

    pool: Any = None  # the pipeline only asks the writer which attributes it needs: no connection
    lean = ExportPipeline(UsageWriter(pool, prices=Book()))
    options = lean._options
    assert options.carried is not None and options.carry_all_above == DEFAULT_LIMITS.max_attributes
    assert [options.carried(k) for k in ("server.address", "tokenscale.meta.x", "host.name")] == [
        True,
        True,
        False,
    ]
    assert ExportPipeline(UsageWriter(pool, keep_attributes=True))._options.carried is None
    explicit = MappingOptions(carried=lambda key: True)
    assert ExportPipeline(UsageWriter(pool), explicit)._options is explicit
