"""The value limits on mapped items (tokenscale.mapping.limits), without a database."""

from __future__ import annotations

from typing import Any

from tokenscale.mapping.limits import Limits, check_text, enforce_limits
from tokenscale.mapping.model import CumulativePoint, MappingResult, UsageEvent


def _event(**fields: Any) -> UsageEvent:
    base: dict[str, Any] = {
        "time_ns": 1_768_478_400 * 10**9,
        "tenant": "t",
        "carrier": "gen_ai.span",
        "rank": 20,
        "tool": "app",
        "stream": "s",
        "service_name": "app",
        "dedupe_key": b"k",
        "input_tokens": 3,
    }
    base.update(fields)
    return UsageEvent(**base)


def test_excess_attributes_are_dropped_and_the_item_kept() -> None:
    attrs = {f"a{i}": i for i in range(10)}
    result = enforce_limits(MappingResult(events=[_event(attributes=attrs)]), Limits(max_attributes=4))
    assert result.rejected == 0
    assert list(result.events[0].attributes) == ["a0", "a1", "a2", "a3"]
    assert (
        result.error_message == "10 attributes on one record, more than the limit of 4: the rest were dropped"
    )


def test_long_values_are_cut_on_a_character_boundary() -> None:
    result = enforce_limits(
        MappingResult(events=[_event(attributes={"x": "é" * 10})]), Limits(max_attribute_bytes=5)
    )
    assert result.events[0].attributes == {"x": "éé"}
    assert result.error_message == "attribute 'x' cut to 5 bytes"


def test_bad_items_are_rejected_naming_the_field_and_the_good_kept() -> None:
    good = _event()
    bad = [
        _event(attributes={"k": {"nested": ["ok", "\ud800"]}}),
        _event(model="m\x00"),
        _event(cost_usd=float("nan")),
        _event(cost_usd=1e6),
        _event(output_tokens=2**63),
        _event(attributes={"session.id": ["a", "b"]}),
    ]
    result = enforce_limits(MappingResult(events=[*bad, good]))
    assert result.events == [good]
    assert result.rejected == 6
    assert result.errors == [
        "gen_ai.span record: attribute 'k': not valid Unicode text (lone surrogate)",
        "gen_ai.span record: model: contains a NUL character",
        "gen_ai.span record: cost: nan is not a cost",
        "gen_ai.span record: cost: 1000000.0 USD, at or above the limit of 1e+06",
        f"gen_ai.span record: output_tokens: {2**63} is out of range (0 to {2**63 - 1})",
        "gen_ai.span record: attribute 'session.id': an array, not a single value",
    ]


def test_a_cost_counter_point_over_the_limit_is_rejected() -> None:
    point = CumulativePoint(b"s", 0, 1, 1e11, (("cost_usd", 1),), _event(input_tokens=0))
    result = enforce_limits(MappingResult(cumulative=[point]))
    assert result.cumulative == []
    assert result.errors == ["gen_ai.span point: cost: 100000000000.0 USD, at or above the limit of 1e+06"]


def test_text_is_measured_in_utf8_bytes() -> None:
    check_text("f", "é" * 256, 512)
    for bad, message in (
        ("é" * 257, "f: 514 bytes, more than the limit of 512"),
        ("a\x00", "f: contains a NUL"),
    ):
        try:
            check_text("f", bad, 512)
        except ValueError as exc:
            assert message in str(exc)
        else:
            raise AssertionError(bad)


def test_arrays_of_scalars_are_checked_like_single_values() -> None:
    """Arrays (``finish_reasons``) are checked in the fast path too: their strings for NUL and
    surrogates, never cut; deeper nesting and odd values take the careful path, same answers."""
    ok = [
        _event(attributes={"f": ["stop", "length"], "n": [1, 2.5, True], "s": "x" * 8}),
        _event(attributes={"f": ["é" * 8, "x" * 8]}),  # non-ASCII, and longer than the limit: kept
        _event(attributes={"f": [], "g": [None, "a"], "h": [["a"], {"k": "b"}]}),
    ]
    bad = [
        _event(attributes={"f": ["stop", "a\x00b"]}),
        _event(attributes={"f": ["stop", "\ud800"]}),
        _event(attributes={"f": [["a\x00"]]}),
        _event(attributes={"f": ["ok"], "k\x00": 1}),
        _event(attributes={"f": ["ok"], "user.id": ["u"]}),
    ]
    result = enforce_limits(MappingResult(events=[*ok, *bad]), Limits(max_attribute_bytes=8))
    assert result.events == ok
    assert [e.attributes for e in result.events] == [
        {"f": ["stop", "length"], "n": [1, 2.5, True], "s": "x" * 8},
        {"f": ["é" * 8, "x" * 8]},
        {"f": [], "g": [None, "a"], "h": [["a"], {"k": "b"}]},
    ]
    assert result.errors == [
        "gen_ai.span record: attribute 'f': contains a NUL character",
        "gen_ai.span record: attribute 'f': not valid Unicode text (lone surrogate)",
        "gen_ai.span record: attribute 'f': contains a NUL character",
        "gen_ai.span record: attribute name 'k\\x00': contains a NUL character",
        "gen_ai.span record: attribute 'user.id': an array, not a single value",
    ]
