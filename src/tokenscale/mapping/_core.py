"""The walk from decoded OTLP export requests to usage events, driven by :mod:`.rules`.

The walk runs once per stored row, so it is written for speed. Most of its time goes into reading
protobuf fields (each read builds a Python object); the rest is kept small:

* each record's attributes are read from the protobuf once (:mod:`._values`); where a record must
  be looked at before its attribute dict is worth building (the event name of a log record, the
  usage keys of a span), its keys are read first and the dict is built from the same key list;
* whatever depends on the resource alone (identity fallbacks, kept attributes, the stream's
  fallback) is resolved once per resource, and a span's or log record's attribute dict starts as a
  copy of the resource's kept attributes, so that it is the event's dict without another merge;
* token fields are added up in a list before the event exists (:func:`_usage`), and events are
  built by one positional constructor call (a dataclass ``__init__`` binds keywords ~3x slower);
* dedupe and series keys hash one byte string (blake2b is streaming: one ``update`` of the
  concatenation equals one ``update`` per part) whose constant prefix is encoded once.

Every output (each field, dedupe and series keys, attribute dict order) is that of the
straightforward code it replaced: tests/test_mapping_equivalence.py pins it on every capture and on
a corpus of mutated captures.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from hashlib import blake2b
from typing import Any, Final, TypeVar

from tokenscale.mapping._values import (
    attributes,
    attributes_of,
    carried_attributes,
    keys_of,
    selected_attributes,
)
from tokenscale.mapping.limits import IDENTITY_KEYS
from tokenscale.mapping.model import ActivityEvent, CumulativePoint, MappingResult, Signal, UsageEvent
from tokenscale.mapping.pricing import price_event
from tokenscale.mapping.rules import (
    ACTIVITY_LOG_RULES,
    ACTIVITY_METRIC_RULES,
    AGENT_SPAN,
    CLAUDE_SPAN,
    LOG_RULES,
    METRIC_RULES,
    MIRROR_CARRIERS,
    NON_USAGE_OPERATIONS,
    SEMCONV_SPAN,
    SENSITIVE_KEYS,
    TOKENSCALE_SCOPE_PREFIX,
    TOKENSCALE_SPAN,
    UNIT_USAGE_KEYS,
    ActivityRule,
    Contribution,
    FieldRule,
    LogRule,
    MetricRule,
    SpanRule,
    canonical_tool,
)

__all__ = ["MappingOptions", "apply", "map_logs", "map_metrics", "map_request", "map_traces"]

#: A count above this is not a real token count for one record; it is rejected as absurd.
MAX_COUNT: Final = 10**12
#: Timestamps outside [2000-01-01, 2100-01-01) are clock garbage, not usage: rejected.
MIN_TIME_NS: Final = 946_684_800 * 10**9
MAX_TIME_NS: Final = 4_102_444_800 * 10**9

_TEMPORALITY_DELTA: Final = 1
_TEMPORALITY_CUMULATIVE: Final = 2

_USER_EMAIL_KEYS: Final = ("user.email", "enduser.email")
_USER_ID_KEYS: Final = ("user.id", "enduser.id", "user.account_uuid", "user.account_id", "installation.id")
_SESSION_KEYS: Final = ("session.id",)
_CONVERSATION_KEYS: Final = ("gen_ai.conversation.id", "conversation.id")
_STREAM_CONVERSATION_KEYS: Final = ("conversation.id",)
_PROVIDER_KEYS: Final = ("gen_ai.provider.name", "gen_ai.system")
#: The attribute a span's usage event keeps its OTLP trace id under (lower-case hex).
OTEL_TRACE_ID_KEY: Final = "otel.trace_id"
#: The attribute a listed span (agent, tool) keeps its OTLP span id under (lower-case hex).
OTEL_SPAN_ID_KEY: Final = "otel.span_id"
_OPERATION_KEY: Final = "gen_ai.operation.name"
AGENT_CARRIER: Final = AGENT_SPAN.carrier
_SPAN_REQUEST_ID_KEYS: Final = ("request_id", "gen_ai.response.id")
_ERROR_KEYS: Final = ("error.type", "status_code", "error")
#: Every key an activity event reads from its record (identity and stream only).
_ACTIVITY_KEYS: Final = frozenset(
    {*_SESSION_KEYS, *_STREAM_CONVERSATION_KEYS, *_USER_EMAIL_KEYS, *_USER_ID_KEYS}
)

#: The field order the positional constructor calls below rely on.
_USAGE_EVENT_FIELDS: Final = (
    "time_ns",
    "tenant",
    "carrier",
    "rank",
    "tool",
    "stream",
    "service_name",
    "dedupe_key",
    "user_email",
    "user_id",
    "session_id",
    "conversation_id",
    "provider",
    "model",
    "operation",
    "request_id",
    "requests",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "cost_source",
    "duration_ms",
    "error_type",
    "attributes",
)
_ACTIVITY_EVENT_FIELDS: Final = (
    "time_ns",
    "tenant",
    "tool",
    "stream",
    "service_name",
    "metric",
    "dedupe_key",
    "value",
    "user_email",
    "user_id",
    "session_id",
)
_CUMULATIVE_POINT_FIELDS: Final = (
    "series_key",
    "start_ns",
    "time_ns",
    "value",
    "contributions",
    "event",
    "count",
    "counts_requests",
)
for _cls, _order in (
    (UsageEvent, _USAGE_EVENT_FIELDS),
    (ActivityEvent, _ACTIVITY_EVENT_FIELDS),
    (CumulativePoint, _CUMULATIVE_POINT_FIELDS),
):
    if tuple(f.name for f in dataclasses.fields(_cls))[: len(_order)] != _order:
        raise ImportError(f"{_cls.__name__}'s fields were reordered: update tokenscale.mapping._core")


@dataclass(frozen=True, slots=True)
class MappingOptions:
    """Operator choices that change what the mapping keeps."""

    #: Keep prompts, responses and command lines in ``attributes`` (off by default).
    capture_content: bool = False
    #: Which attributes the usage events of spans and log records carry besides those the mapping
    #: reads (identity, model, usage, ...; see ``_READ_KEYS``): ``None`` carries every attribute; a
    #: predicate (the writer's: what it stores or prices by) leaves the values of the others unread.
    #: Metric points always carry all (their series key is made of all of them).
    carried: Callable[[str], bool] | None = None
    #: With ``carried``: a record with more attributes than this (its resource's kept ones included)
    #: carries them all, so that the limit on attributes per row cuts it as without ``carried``
    #: (the pipeline sets it to ``Limits.max_attributes``).
    carry_all_above: int = 128


DEFAULT_OPTIONS: Final = MappingOptions()


class _RecordError(Exception):
    """A record that cannot be mapped; the message names the offending field."""


# --- keys ------------------------------------------------------------------------------------------

_SEP: Final = b"\x1f"
_BLAKE2B_128: Final = blake2b(digest_size=16)  # copying it is cheaper than a new one with parameters


@lru_cache(maxsize=4096)
def _prefix(*parts: str) -> bytes:
    """The leading text parts of a digest, each followed by the separator, encoded once."""
    return b"".join(part.encode() + _SEP for part in parts)


def _hash(data: bytes) -> bytes:
    h = _BLAKE2B_128.copy()
    h.update(data)
    return h.digest()


def _attribute_parts(prefix: bytes, attrs: Mapping[str, Any]) -> bytes:
    """``prefix`` followed by the sorted ``key=repr(value)`` parts of ``attrs``, each separated."""
    parts = [f"{k}={v!r}" for k, v in attrs.items()]
    parts.sort()
    parts.append("")  # the separator after the last part
    return prefix + "\x1f".join(parts).encode()


# --- values ----------------------------------------------------------------------------------------


def _text(v: Any) -> str | None:
    return None if v is None else str(v)


def _first_text(attrs: Mapping[str, Any], keys: Iterable[str]) -> str | None:
    """The text of the first of ``keys`` that is present and not empty."""
    for key in keys:
        v = attrs.get(key)
        if v is not None and v != "":
            return str(v)
    return None


_Fallback = TypeVar("_Fallback", bound=str | None)


def _pick(attrs: Mapping[str, Any], keys: tuple[str, ...], fallback: _Fallback) -> str | _Fallback:
    """The first of ``keys`` on the record, else ``fallback`` (the resource's, resolved once).

    A falsy record value (0, False) gives way to the resource's, as in
    ``_text(first(record, keys) or first(resource, keys))``.
    """
    for key in keys:
        v = attrs.get(key)
        if v is not None and v != "":
            return str(v) if v else fallback
    return fallback


def normalise_model(raw: str | None) -> str | None:
    """The model name for grouping and pricing: ``claude-opus-4-8[1m]`` -> ``claude-opus-4-8``."""
    if not raw:
        return None
    cut = raw.find("[")
    return raw[:cut] if cut > 0 else raw


def _number(v: Any, key: str) -> float:
    """A count or amount from an attribute; rejects what no real client sends."""
    # Fast paths for what clients send: an int, or a float in range (NaN fails the comparisons).
    if type(v) is int:
        if 0 <= v <= MAX_COUNT:
            return float(v)
    elif type(v) is float and 0.0 <= v <= MAX_COUNT:
        return v
    if isinstance(v, bool):
        raise _RecordError(f"{key}: not a number ({v!r})")
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise _RecordError(f"{key}: not a number ({v!r})") from None
    if not isinstance(v, int | float):
        raise _RecordError(f"{key}: not a number ({v!r})")
    if isinstance(v, float) and not math.isfinite(v):
        raise _RecordError(f"{key}: not finite ({v!r})")
    if v < 0:
        raise _RecordError(f"{key}: negative ({v!r})")
    if v > MAX_COUNT:
        raise _RecordError(f"{key}: absurdly large ({v!r})")
    return float(v)


_ACTIVITY_VALUE: Final[tuple[Contribution, ...]] = (("value", 1),)


def apply(event: UsageEvent | ActivityEvent, contributions: Iterable[Contribution], amount: float) -> None:
    """Add ``amount`` to ``event`` through ``contributions`` (tokens and requests are integers)."""
    if isinstance(event, ActivityEvent):
        for _column, sign in contributions:
            event.value += sign * amount
        return
    for column, sign in contributions:
        if column == "cost_usd":
            event.cost_usd = (event.cost_usd or 0.0) + sign * amount
            event.cost_source = "reported"
        else:
            setattr(event, column, getattr(event, column) + sign * round(amount))


#: The count columns (``USAGE_COLUMNS`` order: tokens, then requests) and the reported cost.
_Usage = tuple[list[int], float | None]
_NO_USAGE: Final[_Usage] = ([0, 0, 0, 0, 0, 0], None)


def _usage(attrs: Mapping[str, Any], fields: tuple[FieldRule, ...]) -> _Usage | None:
    """What the field rules present in ``attrs`` add up to; None if none is present.

    The sums :func:`apply` of each present field to a fresh event would leave, without the event.
    """
    totals = [0, 0, 0, 0, 0, 0]
    cost: float | None = None
    found = False
    get = attrs.get
    for rule in fields:
        for key in rule.keys:
            v = get(key)
            if v is None:
                continue
            amount: float
            count: int
            if type(v) is int and 0 <= v <= MAX_COUNT:
                # The common case, inlined: round(_number(v)) is v, and v (< 2**53) adds to a float
                # exactly as float(v) does.
                count = amount = v
            else:
                amount = _number(v, key)
                count = round(amount)
            for index, sign in rule.columns:
                totals[index] += sign * count
            for sign in rule.cost_signs:
                cost = (cost or 0.0) + sign * amount
            found = True
            break
    return (totals, cost) if found else None


# --- resources -------------------------------------------------------------------------------------

#: Every key the span and log paths look up in a record's attribute dict.
_RECORD_KEYS: Final = frozenset(
    {
        *_SESSION_KEYS,
        *_CONVERSATION_KEYS,
        *_STREAM_CONVERSATION_KEYS,
        *_USER_EMAIL_KEYS,
        *_USER_ID_KEYS,
        *_PROVIDER_KEYS,
        *_SPAN_REQUEST_ID_KEYS,
        *_ERROR_KEYS,
        "gen_ai.operation.name",
        *(key for rule in (CLAUDE_SPAN, SEMCONV_SPAN, TOKENSCALE_SPAN) for key in rule.model_keys),
        *(
            key
            for rule in (CLAUDE_SPAN, SEMCONV_SPAN, TOKENSCALE_SPAN)
            for f in rule.fields
            for key in f.keys
        ),
        *(key for rule in LOG_RULES.values() for key in rule.model_keys),
        *(key for rule in LOG_RULES.values() for f in rule.fields for key in f.keys),
        *(key for rule in LOG_RULES.values() for key in rule.request_id_keys),
        *(rule.duration_ms_key for rule in LOG_RULES.values() if rule.duration_ms_key is not None),
        *(rule.require[0] for rule in LOG_RULES.values() if rule.require is not None),
    }
)


class _Carry:
    """Which attributes the events of one export carry (:attr:`MappingOptions.carried`), each key
    decided once per export."""

    __slots__ = ("carried", "known", "limit", "plans")

    def __init__(self, carried: Callable[[str], bool], limit: int) -> None:
        self.carried = carried
        self.limit = limit
        self.known: dict[str, bool] = {}
        #: The positions carried of each sequence of keys seen (see ``carried_attributes``).
        self.plans: dict[tuple[str, ...], list[int]] = {}

    def decide(self, key: str) -> bool:
        # A key holding a NUL is carried, so that the limits reject its record as they would anyway.
        return key in _READ_KEYS or "\x00" in key or self.carried(key)

    def carries(self, key: str) -> bool:
        carried = self.known.get(key)
        if carried is None:
            carried = self.known[key] = self.decide(key)
        return carried


class _Resource:
    """What every record under one OTLP resource shares, resolved once."""

    __slots__ = (
        "attrs",
        "capture_content",
        "carry",
        "conversation",
        "email",
        "full",
        "kept",
        "kept_count",
        "key",
        "seeds",
        "service_name",
        "session",
        "stream",
        "tenant",
        "tool",
        "user_id",
    )

    def __init__(
        self, resource: Any, tenant: str, options: MappingOptions, carry: _Carry | None = None
    ) -> None:
        attrs = attributes(resource.attributes)
        self.attrs = attrs
        self.tenant = tenant
        self.capture_content = options.capture_content
        self.service_name = str(attrs.get("service.name") or "unknown")
        self.tool = canonical_tool(self.service_name)
        self.kept = dict(attrs) if options.capture_content else _without_content(attrs)
        # A span's or log record's attribute dict can start as a copy of ``kept`` (saving a merge
        # per event) when no key a record is looked up by is among them.
        self.seeds = _RECORD_KEYS.isdisjoint(self.kept)
        # The resource's answer to each identity pick: what a record without the keys gets.
        self.session = _first_text(attrs, _SESSION_KEYS)
        self.conversation = _first_text(attrs, _CONVERSATION_KEYS)
        self.email = _first_text(attrs, _USER_EMAIL_KEYS)
        self.user_id = _first_text(attrs, _USER_ID_KEYS)
        self.key = _hash(_attribute_parts(_prefix(tenant), attrs))
        # The stream whose aggregate carriers are reconciled with its records: the service (and its
        # instance, where it names one). Not the whole resource: a client's signals may describe
        # their resource differently (Codex CLI adds host.name to its logs, os to its metrics).
        # Users and sessions are told apart inside the stream (mapping.ledger subkeys).
        instance = _text(attrs.get("service.instance.id")) or ""
        self.stream = f"{self.service_name}\x1f{instance}" if instance else self.service_name
        self.kept_count = len(self.kept)
        #: This resource with every attribute carried: for a record too large for ``carry``.
        self.full = self
        self.carry: _Carry | None = None
        if carry is not None:
            full = copy.copy(self)
            full.full = full
            self.full = full
            self.carry = carry
            self.kept = {k: v for k, v in self.kept.items() if carry.carries(k)}
            self.seeds = _RECORD_KEYS.isdisjoint(self.kept)

    def record_attributes(self, keys: list[str], kvs: list[Any]) -> tuple[_Resource, bool, dict[str, Any]]:
        """A span's or log record's attribute dict (see :meth:`seed`), with the resource its event
        is to be built with (:attr:`full` if the record carries all its attributes after all) and
        whether the dict is seeded."""
        carry = self.carry
        res = self
        if carry is not None:
            if len(kvs) + self.kept_count + _ADDED_KEYS <= carry.limit:
                seed = self.seed()
                return self, seed is not None, carried_attributes(keys, kvs, seed, carry.plans, carry.carries)
            res = self.full
        seed = res.seed()
        return res, seed is not None, attributes_of(keys, kvs, seed)

    def seed(self) -> dict[str, Any] | None:
        """What a span's or log record's attribute dict starts as: a copy of ``kept`` if it
        ``seeds``, so that the dict is already ``{**kept, **record}``."""
        return self.kept.copy() if self.seeds else None

    def kept_with(self, attrs: dict[str, Any], seeded: bool) -> dict[str, Any]:
        """``{**resource kept, **record kept}``: record values win, resource keys keep their place.

        ``seeded``: ``attrs`` already holds the resource's kept attributes (see :meth:`seed`).
        """
        kept = attrs if seeded else {**self.kept, **attrs}
        if not self.capture_content and not SENSITIVE_KEYS.isdisjoint(attrs):
            for key in SENSITIVE_KEYS.intersection(attrs):
                del kept[key]  # only the record can hold it: the resource's kept has none
        return kept


#: Every key the span and log paths read from a record's or its resource's attributes, and those
#: the limits check (:data:`tokenscale.mapping.limits.IDENTITY_KEYS`): always carried.
_READ_KEYS: Final = frozenset(
    {
        *_RECORD_KEYS,
        *IDENTITY_KEYS,
        *UNIT_USAGE_KEYS,
        *(key for rule in LOG_RULES.values() for key in rule.identity_keys),
        *(key for f in AGENT_SPAN.fields for key in f.keys),
        *AGENT_SPAN.model_keys,
    }
)


#: The attributes the mapping adds to a span's or log record's event at most (``otel.trace_id``,
#: ``otel.span_id``, ``model.raw``).
_ADDED_KEYS: Final = 3


def _carry(options: MappingOptions) -> _Carry | None:
    return None if options.carried is None else _Carry(options.carried, options.carry_all_above)


def _without_content(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if k not in SENSITIVE_KEYS}


def _check_time(time_ns: int) -> None:
    if not MIN_TIME_NS <= time_ns < MAX_TIME_NS:
        raise _RecordError(f"timestamp out of range: {time_ns} ns since the epoch")


def _activity(
    res: _Resource, attrs: Mapping[str, Any], metric: str, time_ns: int, dedupe_key: bytes, value: float
) -> ActivityEvent:
    _check_time(time_ns)
    session_id = _pick(attrs, _SESSION_KEYS, res.session)
    return ActivityEvent(  # positional, in _ACTIVITY_EVENT_FIELDS order
        time_ns,
        res.tenant,
        res.tool,
        res.stream,
        res.service_name,
        metric,
        dedupe_key,
        value,
        _pick(attrs, _USER_EMAIL_KEYS, res.email),
        _pick(attrs, _USER_ID_KEYS, res.user_id),
        session_id,
    )


def _event(
    res: _Resource,
    attrs: dict[str, Any],
    seeded: bool,
    rule: SpanRule | LogRule | MetricRule,
    time_ns: int,
    dedupe_key: bytes,
    requests: int,
    usage: _Usage,
) -> UsageEvent:
    """A usage event with identity, provider and model resolved from record then resource.

    The caller has checked ``time_ns``; request id, duration and error are left for it to set.
    ``attrs`` becomes the event's attribute dict if ``seeded`` (see :meth:`_Resource.seed`).
    """
    session_id = _pick(attrs, _SESSION_KEYS, res.session)
    raw_model = _first_text(attrs, rule.model_keys)
    model = normalise_model(raw_model)
    operation = attrs.get("gen_ai.operation.name")
    kept = res.kept_with(attrs, seeded)
    if raw_model and raw_model != model:
        kept["model.raw"] = raw_model
    totals, cost = usage
    return UsageEvent(  # positional, in _USAGE_EVENT_FIELDS order
        time_ns,
        res.tenant,
        rule.carrier,
        rule.rank,
        res.tool,
        res.stream,
        res.service_name,
        dedupe_key,
        _pick(attrs, _USER_EMAIL_KEYS, res.email),
        _pick(attrs, _USER_ID_KEYS, res.user_id),
        session_id,
        _pick(attrs, _CONVERSATION_KEYS, res.conversation),
        _first_text(attrs, _PROVIDER_KEYS) or rule.provider,
        model,
        None if operation is None else str(operation),
        None,  # request_id
        requests,
        totals[0],  # input_tokens
        totals[1],  # cache_read_tokens
        totals[2],  # cache_write_tokens
        totals[3],  # output_tokens
        totals[4],  # reasoning_tokens
        cost,
        None if cost is None else "reported",  # cost_source: a cost field means the client priced it
        None,  # duration_ms
        None,  # error_type
        kept,
    )


# --- traces --------------------------------------------------------------------------------------

_STATUS_ERROR: Final = 2
_USAGE_PREFIXES: Final = ("gen_ai.usage.", "llm.usage.", "codex.usage.")
#: The usage keys of the span rules (each starts with one of ``_USAGE_PREFIXES``).
_SPAN_USAGE_KEYS: Final = frozenset(
    key for rule in (SEMCONV_SPAN, TOKENSCALE_SPAN) for field in rule.fields for key in field.keys
)


def map_traces(request: Any, tenant: str, options: MappingOptions = DEFAULT_OPTIONS) -> MappingResult:
    """Usage events from spans that carry one request's usage each."""
    result = MappingResult()
    events = result.events
    carry = _carry(options)
    for resource_spans in request.resource_spans:
        res = _Resource(resource_spans.resource, tenant, options, carry)
        for scope_spans in resource_spans.scope_spans:
            semconv = (
                TOKENSCALE_SPAN
                if scope_spans.scope.name.startswith(TOKENSCALE_SCOPE_PREFIX)
                else SEMCONV_SPAN
            )
            for span in scope_spans.spans:
                try:
                    event = _span_event(span, semconv, res)
                except _RecordError as exc:
                    result.reject(f"span {span.name!r}: {exc}")
                    continue
                if event is not None:
                    if event.carrier == AGENT_CARRIER:
                        result.listed.append(event)
                    else:
                        events.append(event)
    return result


def _has_usage_key(keys: list[str]) -> bool:
    """Whether any key starts with a usage prefix (cheap C-level tests before the exact one)."""
    if not _SPAN_USAGE_KEYS.isdisjoint(keys):
        return True
    joined = "\n".join(keys)  # no usage prefix anywhere in it: none at the start of a key either
    if all(prefix not in joined for prefix in _USAGE_PREFIXES):
        return False
    return any(key.startswith(_USAGE_PREFIXES) for key in keys)


def _span_event(span: Any, semconv: SpanRule, res: _Resource) -> UsageEvent | None:
    if span.name == CLAUDE_SPAN.carrier:
        rule = CLAUDE_SPAN
        kvs = list(span.attributes)
        res, seeded, attrs = res.record_attributes(keys_of(kvs), kvs)
    else:
        # Only spans with usage keys are worth an attribute dict; the keys are read once for both.
        kvs = list(span.attributes)
        keys = keys_of(kvs)
        if not _has_usage_key(keys):
            # An agent's or tool's span often reports no usage at all: listed all the same.
            if _OPERATION_KEY not in keys:
                return None
            if kvs[keys.index(_OPERATION_KEY)].value.string_value not in NON_USAGE_OPERATIONS:
                return None
        rule = semconv
        res, seeded, attrs = res.record_attributes(keys, kvs)
        operation = attrs.get(_OPERATION_KEY)
        if type(operation) is str and operation in NON_USAGE_OPERATIONS:  # an array is not hashable
            return _listed_span_event(span, attrs, seeded, res)
    start = span.start_time_unix_nano
    end = span.end_time_unix_nano
    time_ns = end or start
    if not time_ns:
        raise _RecordError("missing timestamp: end_time_unix_nano and start_time_unix_nano are 0")
    _check_time(time_ns)
    usage = _usage(attrs, rule.fields)
    if usage is None:
        if rule is CLAUDE_SPAN or UNIT_USAGE_KEYS.isdisjoint(attrs):
            return None
        usage = ([0, 0, 0, 0, 0, 0], None)  # units only (speech, whisper): one request, no tokens
    trace_id: bytes = span.trace_id
    context = trace_id + _SEP + span.span_id
    dedupe_key = _hash(_prefix(res.tenant, rule.carrier) + context + _SEP)
    request_id = _first_text(attrs, _SPAN_REQUEST_ID_KEYS)
    error_type = None
    if "error.type" in attrs or span.status.code == _STATUS_ERROR:
        error_type = _text(attrs.get("error.type")) or "_OTHER"
    event = _event(res, attrs, seeded, rule, time_ns, dedupe_key, 1, usage)
    event.request_id = request_id
    if rule.carrier in MIRROR_CARRIERS.get(res.tool, ()):
        event.aggregate = True
    else:
        _check_disjoint(event, rule.fields, attrs)
        # Without a response id, the span's own context identifies its request (log events
        # emitted inside it carry the same context).
        event.identity = (
            _request_identity(res, request_id) if request_id else _hash(_prefix(res.tenant, "ctx") + context)
        )
    if start and end >= start:
        event.duration_ms = (end - start) / 1e6
    event.error_type = error_type
    if trace_id:
        # The OTLP trace id, for the read APIs' traceId (an app's own tokenscale.meta.trace_id wins).
        event.attributes[OTEL_TRACE_ID_KEY] = trace_id.hex()
    price_event(event, per_request=True)
    return event


def _listed_span_event(span: Any, attrs: dict[str, Any], seeded: bool, res: _Resource) -> UsageEvent:
    """The listed row of a span that aggregates requests counted elsewhere (an agent's run, a tool
    call, a workflow): what the span reports, never counted, priced or matched with a request."""
    rule = AGENT_SPAN
    start = span.start_time_unix_nano
    end = span.end_time_unix_nano
    time_ns = end or start
    if not time_ns:
        raise _RecordError("missing timestamp: end_time_unix_nano and start_time_unix_nano are 0")
    _check_time(time_ns)
    usage = _usage(attrs, rule.fields) or _NO_USAGE
    dedupe_key = _hash(_prefix(res.tenant, rule.carrier) + span.trace_id + _SEP + span.span_id + _SEP)
    event = _event(res, attrs, seeded, rule, time_ns, dedupe_key, 0, usage)
    _check_disjoint(event, rule.fields, attrs)
    event.request_id = _first_text(attrs, _SPAN_REQUEST_ID_KEYS)
    if start and end >= start:
        event.duration_ms = (end - start) / 1e6
    if "error.type" in attrs or span.status.code == _STATUS_ERROR:
        event.error_type = _text(attrs.get("error.type")) or "_OTHER"
    if span.trace_id:
        event.attributes[OTEL_TRACE_ID_KEY] = span.trace_id.hex()
    if span.span_id:
        event.attributes[OTEL_SPAN_ID_KEY] = span.span_id.hex()
    return event


# --- logs ----------------------------------------------------------------------------------------


def map_logs(request: Any, tenant: str, options: MappingOptions = DEFAULT_OPTIONS) -> MappingResult:
    """Usage events from log events that carry one request's usage each."""
    result = MappingResult()
    carry = _carry(options)
    for resource_logs in request.resource_logs:
        res = _Resource(resource_logs.resource, tenant, options, carry)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                name, keys, kvs = _event_name(record, res.tool)
                if not name:
                    continue
                metric = ACTIVITY_LOG_RULES.get(name)
                if metric is not None:
                    try:
                        result.activity.append(_log_activity(record, keys, kvs, metric, res))
                    except _RecordError as exc:
                        result.reject(f"log event {name!r}: {exc}")
                    continue
                rule = LOG_RULES.get(name)
                if rule is None:
                    continue
                if keys is None:
                    kvs = list(record.attributes)
                    keys = keys_of(kvs)
                record_res, seeded, attrs = res.record_attributes(keys, kvs)
                try:
                    event = _log_event(record, attrs, seeded, rule, record_res)
                except _RecordError as exc:
                    result.reject(f"log event {name!r}: {exc}")
                    continue
                if event is not None:
                    result.events.append(event)
    return result


def _event_name(record: Any, tool: str) -> tuple[str, list[str] | None, list[Any]]:
    """The record's event name, and its attribute keys and pairs if they had to be read for it."""
    name: str = record.event_name
    keys: list[str] | None = None
    kvs: list[Any] = []
    if not name or " " in name or "/" in name:
        # No event name, or not one (Codex CLI sets a source location such as
        # ``event otel/src/events/session_telemetry.rs:1187``): the ``event.name`` attribute names it.
        kvs = list(record.attributes)
        keys = keys_of(kvs)
        if "event.name" in keys:
            name = kvs[keys.index("event.name")].value.string_value or name  # the first, as the SDKs read it
        if not name:
            body: str = record.body.string_value  # "" unless the body is a string
            if body.startswith("claude_code."):
                return body, keys, kvs
    # Claude Code names its events bare (``api_request``); qualify them by the client.
    if name and "." not in name and tool == "claude_code":
        return f"claude_code.{name}", keys, kvs
    return name, keys, kvs


def _log_activity(
    record: Any, keys: list[str] | None, kvs: list[Any], metric: str, res: _Resource
) -> ActivityEvent:
    time_ns = record.time_unix_nano or record.observed_time_unix_nano
    if not time_ns:
        raise _RecordError("missing timestamp: time_unix_nano and observed_time_unix_nano are 0")
    if keys is None:
        kvs = list(record.attributes)
        keys = keys_of(kvs)
    attrs = selected_attributes(keys, kvs, _ACTIVITY_KEYS)  # an activity event reads no other key
    serialized = record.SerializeToString(deterministic=True)
    dedupe_key = _hash(_prefix(res.tenant, metric, res.service_name) + serialized + _SEP)
    return _activity(res, attrs, metric, time_ns, dedupe_key, 1.0)


def _log_event(
    record: Any, attrs: dict[str, Any], seeded: bool, rule: LogRule, res: _Resource
) -> UsageEvent | None:
    if rule.require is not None and attrs.get(rule.require[0]) != rule.require[1]:
        return None
    time_ns = record.time_unix_nano or record.observed_time_unix_nano
    if not time_ns:
        raise _RecordError("missing timestamp: time_unix_nano and observed_time_unix_nano are 0")
    _check_time(time_ns)
    usage = _usage(attrs, rule.fields)
    if usage is None:
        if rule.needs_usage:
            return None
        usage = _NO_USAGE
    duration_key = rule.duration_ms_key
    duration_ms = None
    if duration_key is not None and duration_key in attrs:
        duration_ms = _number(attrs[duration_key], duration_key)
    request_id = _first_text(attrs, rule.request_id_keys)
    identity = _first_text(attrs, rule.identity_keys)
    error_type = None
    if not rule.needs_usage:
        error_type = _first_text(attrs, _ERROR_KEYS) or "_OTHER"
    elif "error.type" in attrs:
        error_type = _text(attrs["error.type"])
    serialized = record.SerializeToString(deterministic=True)
    dedupe_key = _hash(_prefix(res.tenant, rule.carrier, res.service_name) + serialized + _SEP)
    event = _event(res, attrs, seeded, rule, time_ns, dedupe_key, 1, usage)
    event.request_id = request_id
    event.duration_ms = duration_ms
    event.error_type = error_type
    if rule.carrier in MIRROR_CARRIERS.get(res.tool, ()):
        event.aggregate = True
    else:
        _check_disjoint(event, rule.fields, attrs)
        if identity:
            event.identity = _request_identity(res, identity)
        elif record.trace_id and record.span_id:
            # No id of its own: the span it was emitted in (the request's span, in the GenAI
            # conventions) identifies it.
            event.identity = _hash(_prefix(res.tenant, "ctx") + record.trace_id + _SEP + record.span_id)
    price_event(event, per_request=True)
    return event


def _request_identity(res: _Resource, request_id: str) -> bytes:
    """The identity of a request by its provider's (or client's) id: unique per client."""
    return _hash(_prefix(res.tenant, res.tool, "id") + request_id.encode())


def _check_disjoint(event: UsageEvent, fields: tuple[FieldRule, ...], attrs: Mapping[str, Any]) -> None:
    """Rejects a request whose cache counts exceed its input count, or whose reasoning count
    exceeds its output count: no disjoint column may be negative."""
    if event.input_tokens >= 0 and event.output_tokens >= 0 and event.reasoning_tokens <= event.output_tokens:
        return
    present = [key for rule in fields for key in rule.keys if key in attrs]
    what = "cache counts exceed the input count" if event.input_tokens < 0 else "reasoning exceeds output"
    raise _RecordError(f"{', '.join(present)}: {what}")


# --- metrics -------------------------------------------------------------------------------------


class _Metric:
    """What every point of one metric shares."""

    __slots__ = ("kind", "name", "series_prefix", "temporality")

    def __init__(self, name: str, kind: str, temporality: int, res_key: bytes) -> None:
        self.name = name
        self.kind = kind
        self.temporality = temporality
        #: What every series key of the metric starts with: the resource's key and the name.
        self.series_prefix = res_key + _SEP + _prefix(name)


def map_metrics(request: Any, tenant: str, options: MappingOptions = DEFAULT_OPTIONS) -> MappingResult:
    """Usage increments from metric points: delta points directly, cumulative ones as
    :class:`CumulativePoint` for the writer to difference against the stored series state."""
    result = MappingResult()
    for resource_metrics in request.resource_metrics:
        res = _Resource(resource_metrics.resource, tenant, options)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                name: str = metric.name
                rule: MetricRule | ActivityRule | None = METRIC_RULES.get(name)
                if rule is None:
                    rule = ACTIVITY_METRIC_RULES.get(name)
                    if rule is None:
                        continue
                kind = metric.WhichOneof("data")
                if kind not in ("sum", "histogram"):
                    result.reject(f"metric {name!r}: unsupported kind {kind!r}", _points(metric))
                    continue
                data = getattr(metric, kind)
                shared = _Metric(name, kind, data.aggregation_temporality, res.key)
                for point in data.data_points:
                    try:
                        if isinstance(rule, ActivityRule):
                            _activity_point(result, shared, rule, point, res)
                        else:
                            _metric_point(result, shared, rule, point, res)
                    except _RecordError as exc:
                        result.reject(f"metric {name!r}: {exc}")
    return result


def _point_value(point: Any, kind: str) -> tuple[float, int]:
    """A sum point's value, or a histogram point's sum and count; rejects what cannot be usage."""
    if not point.time_unix_nano:
        raise _RecordError("missing timestamp: time_unix_nano is 0")
    if kind == "sum":
        v = point.as_double
        if v:  # non-zero: as_double is the member that is set (WhichOneof costs three reads)
            return _number(v, "as_double"), 0
        which = point.WhichOneof("value")
        if which is None:
            raise _RecordError("data point has no value")
        return _number(getattr(point, which), which), 0
    return _number(point.sum, "sum"), int(_number(point.count, "count"))


def _point_keys(
    shared: _Metric, attrs: Mapping[str, Any], start_ns: int, time_ns: int
) -> tuple[bytes, bytes]:
    """The point's series key, and its dedupe key (the series key and the point's times)."""
    series_key = _hash(_attribute_parts(shared.series_prefix, attrs))
    return series_key, _hash(series_key + _SEP + f"{start_ns}\x1f{time_ns}\x1f".encode())


def _activity_point(
    result: MappingResult, shared: _Metric, rule: ActivityRule, point: Any, res: _Resource
) -> None:
    attrs = attributes(point.attributes)
    metric = rule.metric if rule.type_key is None else rule.by_type.get(str(attrs.get(rule.type_key, "")))
    if metric is None:
        return
    amount, _ = _point_value(point, shared.kind)
    start_ns = point.start_time_unix_nano
    time_ns = point.time_unix_nano
    series_key, dedupe_key = _point_keys(shared, attrs, start_ns, time_ns)
    event = _activity(res, attrs, metric, time_ns, dedupe_key, 0.0)
    temporality = shared.temporality
    if temporality == _TEMPORALITY_CUMULATIVE:
        # positional, in _CUMULATIVE_POINT_FIELDS order
        result.cumulative.append(
            CumulativePoint(series_key, start_ns, time_ns, amount, _ACTIVITY_VALUE, event)
        )
    elif temporality == _TEMPORALITY_DELTA:
        if amount:
            event.value = amount
            result.activity.append(event)
    else:
        raise _RecordError(f"aggregation_temporality: unknown value {temporality}")


def _points(metric: Any) -> int:
    kind = metric.WhichOneof("data")
    return len(getattr(metric, kind).data_points) if kind else 0


def _metric_point(
    result: MappingResult, shared: _Metric, rule: MetricRule, point: Any, res: _Resource
) -> None:
    attrs = attributes(point.attributes)
    if rule.type_key is not None:
        contributions = rule.by_type.get(str(attrs.get(rule.type_key, "")))
        if contributions is None:
            return  # a token type we do not count (e.g. Codex's "total")
        count_requests = rule.count_requests_for == attrs.get(rule.type_key)
    else:
        contributions = rule.contributions
        count_requests = rule.count_requests_for is not None
    amount, count = _point_value(point, shared.kind)
    start_ns = point.start_time_unix_nano
    time_ns = point.time_unix_nano
    _check_time(time_ns)
    series_key, dedupe_key = _point_keys(shared, attrs, start_ns, time_ns)
    event = _event(res, attrs, False, rule, time_ns, dedupe_key, 0, _NO_USAGE)
    event.aggregate = True
    event.attributes["metric.name"] = shared.name
    if rule.cost_reported_elsewhere:
        event.cost_source = "reported"
    temporality = shared.temporality
    if temporality == _TEMPORALITY_CUMULATIVE:
        # positional, in _CUMULATIVE_POINT_FIELDS order
        result.cumulative.append(
            CumulativePoint(
                series_key, start_ns, time_ns, amount, contributions, event, count, count_requests
            )
        )
        return
    if temporality != _TEMPORALITY_DELTA:
        raise _RecordError(f"aggregation_temporality: unknown value {temporality}")
    if amount == 0 and count == 0:
        return
    apply(event, contributions, amount)
    if count_requests:
        event.requests = count
    price_event(event, per_request=False)
    result.events.append(event)


def map_request(
    signal: Signal, request: Any, tenant: str, options: MappingOptions = DEFAULT_OPTIONS
) -> MappingResult:
    """Map one decoded ``Export*ServiceRequest`` of ``signal``."""
    if signal == "metrics":
        return map_metrics(request, tenant, options)
    if signal == "traces":
        return map_traces(request, tenant, options)
    return map_logs(request, tenant, options)
