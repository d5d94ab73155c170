"""Validation of request values: the same rules whether they came as query text, JSON or protobuf."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, Final

from tokenscale.api._errors import InvalidRequestError

__all__ = [
    "MAX_JSON_DEPTH",
    "Params",
    "boolean",
    "calendar_date",
    "clean_json",
    "integer",
    "number",
    "text",
    "timestamp",
]

MAX_JSON_DEPTH: Final = 32
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})
_INT_RE: Final = re.compile(r"^[+-]?\d{1,19}$")
_DATE_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _fail(name: str, message: str, index: int | None) -> InvalidRequestError:
    where = name if index is None else f"data[{index}].{name}"
    return InvalidRequestError(f"{where}: {message}", field=name, index=index)


def _check_text(value: str, name: str, index: int | None) -> str:
    # PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded: refuse both here.
    if "\x00" in value:
        raise _fail(name, "must not contain NUL characters", index)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(name, "is not valid Unicode text", index) from None
    return value


def text(value: object, name: str, *, min_len: int = 1, max_len: int = 255, index: int | None = None) -> str:
    """A string of ``min_len`` to ``max_len`` characters."""
    if not isinstance(value, str):
        raise _fail(name, f"must be a string, not {_kind(value)}", index)
    _check_text(value, name, index)
    if not min_len <= len(value) <= max_len:
        raise _fail(name, f"length must be between {min_len} and {max_len}", index)
    return value


def integer(value: object, name: str, *, minimum: int, maximum: int, index: int | None = None) -> int:
    """A whole number in ``[minimum, maximum]``: an int, or decimal digits in a string."""
    if isinstance(value, bool):
        raise _fail(name, "must be an integer, not a boolean", index)
    if isinstance(value, str):
        stripped = value.strip()
        if not _INT_RE.match(stripped):
            raise _fail(name, f"must be an integer, not {stripped[:40]!r}", index)
        value = int(stripped)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise _fail(name, f"must be an integer, not {_kind(value)}", index)
    if not minimum <= value <= maximum:
        raise _fail(name, f"must be between {minimum} and {maximum}", index)
    return value


def number(value: object, name: str, *, minimum: float, maximum: float) -> float:
    """A finite number in ``[minimum, maximum]``: an int or float, or its text."""
    if isinstance(value, bool):
        raise _fail(name, "must be a number, not a boolean", None)
    if isinstance(value, str):
        raw = value.strip()
        try:
            value = float(raw)
        except ValueError:
            raise _fail(name, f"must be a number, not {raw[:40]!r}", None) from None
    if not isinstance(value, int | float):
        raise _fail(name, f"must be a number, not {_kind(value)}", None)
    result = float(value)
    if not math.isfinite(result) or not minimum <= result <= maximum:
        raise _fail(name, f"must be between {minimum} and {maximum}", None)
    return result


def boolean(value: object, name: str, *, strict: bool = False, index: int | None = None) -> bool:
    """A boolean; from text, ``true/false`` (also ``1/0``, ``yes/no``, ``on/off``) unless ``strict``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and not strict:
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise _fail(name, f"must be a boolean, not {_kind(value)}", index)


_LEAP_SECOND: Final = re.compile(r"(T\d{2}:\d{2}:)60")


def timestamp(value: object, name: str) -> datetime:
    """An ISO 8601 date or date-time (RFC 3339 too: lower-case ``t``/``z``, leap second 60 read as
    59.999999); one without an offset is UTC. A moment beyond the years 1-9999 in UTC is clamped
    to that range (as a bound, it excludes or includes everything alike)."""
    raw = text(value, name, max_len=64)
    cleaned = raw.strip().upper()
    leap = _LEAP_SECOND.search(cleaned) is not None
    if leap:
        cleaned = _LEAP_SECOND.sub(r"\g<1>59", cleaned, count=1)
    try:
        parsed = datetime.fromisoformat(cleaned)
    except ValueError:
        raise _fail(name, f"must be an ISO 8601 date or date-time, not {raw[:40]!r}", None) from None
    if leap:
        parsed = parsed.replace(microsecond=999_999)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return (datetime.min if parsed.year == 1 else datetime.max).replace(tzinfo=UTC)


def calendar_date(value: object, name: str, *, index: int | None = None) -> date:
    """A ``YYYY-MM-DD`` date."""
    if not isinstance(value, str):
        raise _fail(name, f"must be a YYYY-MM-DD string, not {_kind(value)}", index)
    if not _DATE_RE.match(value):
        raise _fail(name, f"must be a date as YYYY-MM-DD, not {value[:40]!r}", index)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _fail(name, f"is not a valid date: {value!r}", index) from None


def clean_json(value: object, name: str, *, index: int | None = None, depth: int = 0) -> Any:
    """``value`` if it is JSON that PostgreSQL's jsonb can store (no NUL in text, finite numbers)."""
    if depth > MAX_JSON_DEPTH:
        raise _fail(name, f"is nested deeper than {MAX_JSON_DEPTH} levels", index)
    if value is None or isinstance(value, bool | int):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**300:
            raise _fail(name, "holds a number too large to store", index)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(name, "holds a number that is not finite", index)
        return value
    if isinstance(value, str):
        return _check_text(value, name, index)
    if isinstance(value, list):
        return [clean_json(v, name, index=index, depth=depth + 1) for v in value]
    if isinstance(value, dict):
        return {
            _check_text(str(k), name, index): clean_json(v, name, index=index, depth=depth + 1)
            for k, v in value.items()
        }
    raise _fail(name, f"must be JSON, not {_kind(value)}", index)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class Params:
    """Query parameters by name, each a list of values (text from HTTP, typed values from gRPC).

    A parameter given several times takes its first value, except those read with :meth:`all`.
    """

    def __init__(self, values: Mapping[str, Sequence[object]]) -> None:
        self._values = values

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[str, object]]) -> Params:
        """From ``(name, value)`` pairs, e.g. a query string's items."""
        grouped: dict[str, list[object]] = {}
        for key, value in pairs:
            grouped.setdefault(key, []).append(value)
        return cls(grouped)

    def get(self, name: str) -> object | None:
        """The first value of ``name``, or ``None`` when absent."""
        values = self._values.get(name)
        return values[0] if values else None

    def all(self, name: str) -> list[object]:
        """Every value of ``name``."""
        return list(self._values.get(name, ()))

    def names(self) -> list[str]:
        """The names present."""
        return list(self._values)
