"""Fast conversion of OTLP ``AnyValue``/``KeyValue`` protobufs to plain Python values.

Speed (upb protobuf): every field read creates a Python object and ``WhichOneof`` costs about three
plain field reads, so the walk tries the common kinds by reading their field directly: a non-empty
``string_value`` (a non-zero ``int_value``, ``double_value``) can only come from that member of the
oneof. Empty and zero values and the rare kinds go through ``WhichOneof`` in :func:`value`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter
from typing import Any

__all__ = ["attributes", "attributes_of", "carried_attributes", "keys_of", "selected_attributes", "value"]

_KEY = attrgetter("key")


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
        return [x.string_value or x.int_value or x.double_value or value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes(v.kvlist_value.values)
    if kind == "bytes_value":
        return bytes(v.bytes_value).hex()
    return None


def attributes(kvs: Iterable[Any], into: dict[str, Any] | None = None) -> dict[str, Any]:
    """A dict of ``KeyValue`` pairs (added to ``into`` if given); a later duplicate key wins, as in
    the OTel SDKs."""
    out: dict[str, Any] = {} if into is None else into
    for kv in kvs:
        v = kv.value
        out[kv.key] = v.string_value or v.int_value or v.double_value or value(v)
    return out


def keys_of(kvs: Iterable[Any]) -> list[str]:
    """The keys of ``KeyValue`` pairs, read in one C-level pass (see :func:`attributes_of`)."""
    return list(map(_KEY, kvs))


def attributes_of(
    keys: Sequence[str], kvs: Sequence[Any], into: dict[str, Any] | None = None
) -> dict[str, Any]:
    """:func:`attributes` of ``kvs`` (a list, so its wrappers are not built again) whose keys are
    already read: a caller that must look at the keys first pays for each key read once."""
    out: dict[str, Any] = {} if into is None else into
    for key, kv in zip(keys, kvs):  # noqa: B905 - equal lengths by construction
        v = kv.value
        out[key] = v.string_value or v.int_value or v.double_value or value(v)
    return out


def selected_attributes(keys: Sequence[str], kvs: Sequence[Any], wanted: frozenset[str]) -> dict[str, Any]:
    """:func:`attributes_of` restricted to the ``wanted`` keys (the other values are never read)."""
    out: dict[str, Any] = {}
    for key, kv in zip(keys, kvs):  # noqa: B905 - equal lengths by construction
        if key in wanted:
            v = kv.value
            out[key] = v.string_value or v.int_value or v.double_value or value(v)
    return out


def carried_attributes(
    keys: list[str],
    kvs: Sequence[Any],
    into: dict[str, Any] | None,
    plans: dict[tuple[str, ...], list[int]],
    carries: Callable[[str], bool],
) -> dict[str, Any]:
    """:func:`attributes_of` restricted to the keys ``carries`` says: the values of the others are
    never read (no Python object is made of them). The positions to read are worked out once per
    sequence of keys (the records of one export mostly share theirs) and kept in ``plans``."""
    out: dict[str, Any] = {} if into is None else into
    sequence = tuple(keys)
    plan = plans.get(sequence)
    if plan is None:
        plan = plans[sequence] = [i for i, key in enumerate(keys) if carries(key)]
    for i in plan:
        v = kvs[i].value
        out[keys[i]] = v.string_value or v.int_value or v.double_value or value(v)
    return out
