"""Fast conversion of OTLP ``AnyValue``/``KeyValue`` protobufs to plain Python values."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["attributes", "value"]


def value(v: Any) -> Any:
    """The Python value of an ``AnyValue`` (bytes as hex, arrays as lists, kvlists as dicts)."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes(v.kvlist_value.values)
    if kind == "bytes_value":
        return bytes(v.bytes_value).hex()
    return None


def attributes(kvs: Iterable[Any]) -> dict[str, Any]:
    """A dict of ``KeyValue`` pairs; a later duplicate key wins, as in the OTel SDKs."""
    out: dict[str, Any] = {}
    for kv in kvs:
        v = kv.value
        kind = v.WhichOneof("value")
        if kind == "string_value":
            out[kv.key] = v.string_value
        elif kind == "int_value":
            out[kv.key] = v.int_value
        else:
            out[kv.key] = value(v)
    return out
