"""Value limits: what a mapped item may hold before it is written. Pure: imports no I/O.

The mapping turns whatever a client sends into rows; this module decides, per item, whether the
database can take the row as it is, so that bad data is answered as bad data (rejected items in
the OTLP partial success, naming the field) and never reaches the database as an error that looks
retryable (a too-long index key) or as a crash (a NUL, a lone surrogate, a numeric overflow).

Per item (usage event, activity event, cumulative point):

* every text column (service, tool, stream, user, session, conversation, provider, model,
  operation, request id, error type) must be valid UTF-8 text without NUL, at most
  :attr:`Limits.max_identity_bytes` bytes: these columns are indexed, and an index row must fit a
  btree page (2,704 bytes) even with several of them in one key;
* the attributes an identity column is read from must hold a scalar (not an array or key-value list);
* token counts must be 0..2**63-1 and a cost finite, 0 <= cost < :attr:`Limits.max_cost_usd`;
* attributes kept with the row: keys and string values without NUL or lone surrogates (the item is
  rejected); string values longer than :attr:`Limits.max_attribute_bytes` are cut to that many bytes
  and attributes beyond :attr:`Limits.max_attributes` dropped, as the OpenTelemetry SDKs' own
  attribute limits do (the answer's message says so; the item is kept).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Final

from tokenscale.mapping.model import (
    TOKEN_FIELDS,
    ActivityEvent,
    CumulativePoint,
    MappingResult,
    UsageEvent,
)

__all__ = [
    "DEFAULT_LIMITS",
    "IDENTITY_KEYS",
    "LimitError",
    "Limits",
    "check_text",
    "enforce_limits",
]

#: The largest value of a bigint column.
_INT8_MAX: Final = 2**63 - 1

#: Attributes the text columns are read from: each must be a scalar where it is present.
IDENTITY_KEYS: Final = frozenset(
    {
        "service.name",
        "service.instance.id",
        "session.id",
        "conversation.id",
        "gen_ai.conversation.id",
        "user.email",
        "enduser.email",
        "user.id",
        "enduser.id",
        "user.account_uuid",
        "user.account_id",
        "installation.id",
        "gen_ai.provider.name",
        "gen_ai.system",
        "gen_ai.operation.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "model",
        "gen_ai.response.id",
        "request_id",
        "error.type",
    }
)

# The fields a derived column is read from come first, so that the message names the source.
_USAGE_TEXT: Final = (
    "tenant",
    "carrier",
    "service_name",
    "user_email",
    "user_id",
    "session_id",
    "conversation_id",
    "provider",
    "model",
    "operation",
    "request_id",
    "cost_source",
    "error_type",
    "tool",
    "stream",
)
_ACTIVITY_TEXT: Final = (
    "tenant",
    "service_name",
    "metric",
    "user_email",
    "user_id",
    "session_id",
    "tool",
    "stream",
)
_KIND: Final[dict[type, str]] = {list: "an array", dict: "a key-value list", bytes: "bytes"}
_NESTED: Final = frozenset({list, dict})
_STR: Final = frozenset({str})
_SCALARS: Final = frozenset({str, int, float, bool})
_USAGE_TEXT_OF: Final = attrgetter(*_USAGE_TEXT)
_ACTIVITY_TEXT_OF: Final = attrgetter(*_ACTIVITY_TEXT)
_USAGE_NUMBERS: Final = ("requests", *TOKEN_FIELDS)
_USAGE_NUMBERS_OF: Final = attrgetter(*_USAGE_NUMBERS)


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits every stored item is held to (settings of the same names; see docs/configuration.md)."""

    #: Longest text column value (service, user, session, model, request id, ...), in UTF-8 bytes.
    max_identity_bytes: int = 512
    #: Longest string attribute value kept with a row, in UTF-8 bytes (longer ones are cut).
    max_attribute_bytes: int = 16_384
    #: Most attributes kept with one row (the rest are dropped, in the order received).
    max_attributes: int = 128
    #: A cost at or above this (USD, one record or one cumulative counter) is rejected.
    max_cost_usd: float = 1_000_000.0


DEFAULT_LIMITS: Final = Limits()


class LimitError(ValueError):
    """One value breaks a limit; the message names the field."""


def check_text(field: str, value: str, max_bytes: int) -> None:
    """Raise :class:`LimitError` unless ``value`` is storable text of at most ``max_bytes`` bytes."""
    if "\x00" in value:
        raise LimitError(f"{field}: contains a NUL character")
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise LimitError(f"{field}: not valid Unicode text (lone surrogate)") from None
    if size > max_bytes:
        raise LimitError(f"{field}: {size} bytes, more than the limit of {max_bytes}")


def _valid_text(field: str, value: str) -> None:
    if "\x00" in value:
        raise LimitError(f"{field}: contains a NUL character")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise LimitError(f"{field}: not valid Unicode text (lone surrogate)") from None


def _cut(value: str, max_bytes: int) -> str:
    """``value`` cut to at most ``max_bytes`` UTF-8 bytes, on a character boundary."""
    return value.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


class _Checker:
    """Checks the items of one result against ``limits``, noting what it had to cut."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        if len(self.notes) < 5 and message not in self.notes:
            self.notes.append(message)

    def text_columns(self, item: Any, names: tuple[str, ...], values: tuple[Any, ...]) -> None:
        limit = self.limits.max_identity_bytes
        present = [v for v in values if v]
        joined = "".join(present)
        # One pass over all of them in C for the common case: ASCII, no NUL, all short enough.
        if (
            "\x00" not in joined
            and joined.isascii()
            and (len(joined) <= limit or max(map(len, present)) <= limit)
        ):
            return
        for name, value in zip(names, values, strict=True):
            if value is not None:
                check_text(name, value, limit)

    def usage(self, event: UsageEvent) -> None:
        self.text_columns(event, _USAGE_TEXT, _USAGE_TEXT_OF(event))
        numbers = _USAGE_NUMBERS_OF(event)
        # An aggregate carrier's increment may take from a column what another adds (a cached-input
        # point: input -N, cache read +N); it is evidence, reconciled by totals, never counted as is.
        low = -_INT8_MAX if event.aggregate else 0
        if min(numbers) < low or max(numbers) > _INT8_MAX:
            for name, value in zip(_USAGE_NUMBERS, numbers, strict=True):
                if not low <= value <= _INT8_MAX:
                    raise LimitError(f"{name}: {value} is out of range ({low} to {_INT8_MAX})")
        # A computed cost of an aggregate increment may be negative (see above); a reported one not.
        signed = event.aggregate and event.cost_source != "reported"
        self.cost("cost", event.cost_usd, signed=signed)
        if event.duration_ms is not None and not math.isfinite(event.duration_ms):
            raise LimitError(f"duration: not finite ({event.duration_ms!r})")
        event.attributes = self.attributes(event.attributes)

    def cost(self, field: str, cost: float | None, *, signed: bool = False) -> None:
        if cost is None:
            return
        if not math.isfinite(cost) or (cost < 0 and not signed):
            raise LimitError(f"{field}: {cost!r} is not a cost")
        if abs(cost) >= self.limits.max_cost_usd:
            raise LimitError(f"{field}: {cost!r} USD, at or above the limit of {self.limits.max_cost_usd:g}")

    def activity(self, event: ActivityEvent) -> None:
        self.text_columns(event, _ACTIVITY_TEXT, _ACTIVITY_TEXT_OF(event))
        if not math.isfinite(event.value):
            raise LimitError(f"value: not finite ({event.value!r})")

    def cumulative(self, point: CumulativePoint) -> None:
        if not math.isfinite(point.value) or point.value < 0:
            raise LimitError(f"value: {point.value!r} is out of range")
        if any(column == "cost_usd" for column, _ in point.contributions):
            self.cost("cost", point.value)
        if isinstance(point.event, UsageEvent):
            self.usage(point.event)
        else:
            self.activity(point.event)

    def attributes(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """``attrs`` checked, with overlong values cut and excess attributes dropped."""
        limits = self.limits
        values = list(attrs.values())
        kinds = set(map(type, values))
        if not kinds.isdisjoint(_KIND):  # some value is not a scalar: none may be an identity's
            for key in IDENTITY_KEYS.intersection(attrs):
                kind = _KIND.get(type(attrs[key]))
                if kind is not None:
                    raise LimitError(f"attribute {key!r}: {kind}, not a single value")
        if len(attrs) > limits.max_attributes:
            self.note(
                f"{len(attrs)} attributes on one record, more than the limit of {limits.max_attributes}: "
                "the rest were dropped"
            )
            attrs = dict(list(attrs.items())[: limits.max_attributes])
            values = list(attrs.values())
            kinds = set(map(type, values))
        inner: list[Any] = []
        flat = kinds.isdisjoint(_NESTED)
        if list in kinds and dict not in kinds:
            # Arrays of scalars (finish reasons, ...): their strings are checked with the rest.
            inner = [x for v in values if type(v) is list for x in v]
            flat = _SCALARS.issuperset(map(type, inner))
        if flat:
            strings = values if kinds == _STR else [v for v in values if type(v) is str]
            joined = "".join(strings) + "".join(attrs) + "".join(x for x in inner if type(x) is str)
            # The common case, checked in C: ASCII, no NUL, no long or deeply nested value.
            if (
                "\x00" not in joined
                and joined.isascii()
                and (
                    len(joined) <= limits.max_attribute_bytes
                    or max(map(len, strings), default=0) <= limits.max_attribute_bytes
                )
            ):
                return attrs
        cut: list[str] = []
        for key, value in attrs.items():
            if "\x00" in key or not key.isascii():
                _valid_text(f"attribute name {key[:80]!r}", key)
            if type(value) is str:
                _valid_text(f"attribute {key[:80]!r}", value)
                if len(value) > limits.max_attribute_bytes // 4 and (
                    len(value) > limits.max_attribute_bytes
                    or len(value.encode("utf-8")) > limits.max_attribute_bytes
                ):
                    cut.append(key)
            elif isinstance(value, list | dict):
                _nested(f"attribute {key[:80]!r}", value)
        if cut:
            attrs = dict(attrs)
            for key in cut:
                attrs[key] = _cut(attrs[key], limits.max_attribute_bytes)
                self.note(f"attribute {key[:80]!r} cut to {limits.max_attribute_bytes} bytes")
        return attrs


def _nested(field: str, value: Any, depth: int = 0) -> None:
    """Check the strings inside an array or key-value list attribute."""
    if depth > 32:
        raise LimitError(f"{field}: nested more than 32 levels deep")
    if isinstance(value, dict):
        for key, inner in value.items():
            _valid_text(f"{field} key", key)
            _nested(field, inner, depth + 1)
    elif isinstance(value, list):
        for inner in value:
            _nested(field, inner, depth + 1)
    elif isinstance(value, str):
        _valid_text(field, value)


def _keep(
    items: list[Any], check: Callable[[Any], None], result: MappingResult, what: Callable[[Any], str]
) -> list[Any]:
    kept: list[Any] = []
    for item in items:
        try:
            check(item)
        except LimitError as exc:
            result.reject(f"{what(item)}: {exc}")
        else:
            kept.append(item)
    return kept


def enforce_limits(result: MappingResult, limits: Limits = DEFAULT_LIMITS) -> MappingResult:
    """Drop (and count as rejected, naming the field) the items of ``result`` the database cannot
    store as they are; cut overlong attribute values. Changes ``result`` in place and returns it."""
    checker = _Checker(limits)
    result.events = _keep(result.events, checker.usage, result, lambda e: f"{e.carrier} record")
    result.listed = _keep(result.listed, checker.usage, result, lambda e: f"{e.carrier} record")
    result.activity = _keep(result.activity, checker.activity, result, lambda e: f"{e.metric} record")
    result.cumulative = _keep(
        result.cumulative, checker.cumulative, result, lambda p: f"{_carrier(p.event)} point"
    )
    for note in checker.notes:
        if len(result.errors) < 10:
            result.errors.append(note)
    return result


def _carrier(event: UsageEvent | ActivityEvent) -> str:
    return event.carrier if isinstance(event, UsageEvent) else event.metric
