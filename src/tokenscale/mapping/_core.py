"""The walk from decoded OTLP export requests to usage events, driven by :mod:`.rules`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, Final

from tokenscale.mapping._values import attributes
from tokenscale.mapping.model import ActivityEvent, CumulativePoint, MappingResult, Signal, UsageEvent
from tokenscale.mapping.pricing import price_event
from tokenscale.mapping.rules import (
    ACTIVITY_LOG_RULES,
    ACTIVITY_METRIC_RULES,
    CLAUDE_SPAN,
    LOG_RULES,
    METRIC_RULES,
    NON_USAGE_OPERATIONS,
    SEMCONV_SPAN,
    SENSITIVE_KEYS,
    TOKENSCALE_SCOPE_PREFIX,
    TOKENSCALE_SPAN,
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


@dataclass(frozen=True, slots=True)
class MappingOptions:
    """Operator choices that change what the mapping keeps."""

    #: Keep prompts, responses and command lines in ``attributes`` (off by default).
    capture_content: bool = False


DEFAULT_OPTIONS: Final = MappingOptions()


class _RecordError(Exception):
    """A record that cannot be mapped; the message names the offending field."""


def _digest(*parts: bytes | str) -> bytes:
    h = blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\x1f")
    return h.digest()


def _first(attrs: Mapping[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        v = attrs.get(key)
        if v is not None and v != "":
            return v
    return None


def _text(v: Any) -> str | None:
    return None if v is None else str(v)


def normalise_model(raw: str | None) -> str | None:
    """The model name for grouping and pricing: ``claude-opus-4-8[1m]`` -> ``claude-opus-4-8``."""
    if not raw:
        return None
    cut = raw.find("[")
    return raw[:cut] if cut > 0 else raw


def _number(v: Any, key: str) -> float:
    """A count or amount from an attribute; rejects what no real client sends."""
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
    for column, sign in contributions:
        if isinstance(event, ActivityEvent):
            event.value += sign * amount
        elif column == "cost_usd":
            event.cost_usd = (event.cost_usd or 0.0) + sign * amount
            event.cost_source = "reported"
        else:
            setattr(event, column, getattr(event, column) + sign * round(amount))


def _apply_fields(event: UsageEvent, attrs: Mapping[str, Any], fields: tuple[FieldRule, ...]) -> bool:
    """Apply every field rule present in ``attrs``; True if any token field was present."""
    found = False
    for rule in fields:
        for key in rule.keys:
            v = attrs.get(key)
            if v is not None:
                apply(event, rule.contributions, _number(v, key))
                found = True
                break
    return found


class _Resource:
    """What every record under one OTLP resource shares."""

    __slots__ = ("attrs", "kept", "service_name", "tool")

    def __init__(self, resource: Any, options: MappingOptions) -> None:
        self.attrs = attributes(resource.attributes)
        self.service_name = str(self.attrs.get("service.name") or "unknown")
        self.tool = canonical_tool(self.service_name)
        self.kept = _keep(self.attrs, options)


def _keep(attrs: Mapping[str, Any], options: MappingOptions) -> dict[str, Any]:
    if options.capture_content:
        return dict(attrs)
    return {k: v for k, v in attrs.items() if k not in SENSITIVE_KEYS}


def _pick(attrs: Mapping[str, Any], res: _Resource, keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` on the record, else on its resource."""
    return _text(_first(attrs, keys) or _first(res.attrs, keys))


def _stream(attrs: Mapping[str, Any], res: _Resource, session_id: str | None) -> str:
    """The stream groups the carriers of one client run; it must be a key every carrier has."""
    return (
        session_id
        or _pick(attrs, res, ("conversation.id",))
        or _text(res.attrs.get("service.instance.id"))
        or res.service_name
    )


def _activity(
    res: _Resource, attrs: Mapping[str, Any], *, tenant: str, metric: str, time_ns: int, dedupe_key: bytes
) -> ActivityEvent:
    if not MIN_TIME_NS <= time_ns < MAX_TIME_NS:
        raise _RecordError(f"timestamp out of range: {time_ns} ns since the epoch")
    session_id = _pick(attrs, res, _SESSION_KEYS)
    return ActivityEvent(
        time_ns=time_ns,
        tenant=tenant,
        tool=res.tool,
        stream=_stream(attrs, res, session_id),
        service_name=res.service_name,
        metric=metric,
        dedupe_key=dedupe_key,
        user_email=_pick(attrs, res, _USER_EMAIL_KEYS),
        user_id=_pick(attrs, res, _USER_ID_KEYS),
        session_id=session_id,
    )


def _event(
    res: _Resource,
    attrs: Mapping[str, Any],
    *,
    tenant: str,
    carrier: str,
    rank: int,
    time_ns: int,
    dedupe_key: bytes,
    provider: str | None,
    model_keys: tuple[str, ...],
    options: MappingOptions,
) -> UsageEvent:
    """A usage event with identity, provider and model resolved from record then resource."""
    if not MIN_TIME_NS <= time_ns < MAX_TIME_NS:
        raise _RecordError(f"timestamp out of range: {time_ns} ns since the epoch")

    def pick(keys: tuple[str, ...]) -> str | None:
        return _pick(attrs, res, keys)

    session_id = pick(_SESSION_KEYS)
    conversation_id = pick(_CONVERSATION_KEYS)
    raw_model = _text(_first(attrs, model_keys))
    model = normalise_model(raw_model)
    kept = {**res.kept, **_keep(attrs, options)}
    if raw_model and raw_model != model:
        kept["model.raw"] = raw_model
    return UsageEvent(
        time_ns=time_ns,
        tenant=tenant,
        carrier=carrier,
        rank=rank,
        tool=res.tool,
        stream=_stream(attrs, res, session_id),
        service_name=res.service_name,
        dedupe_key=dedupe_key,
        user_email=pick(_USER_EMAIL_KEYS),
        user_id=pick(_USER_ID_KEYS),
        session_id=session_id,
        conversation_id=conversation_id,
        provider=_text(_first(attrs, ("gen_ai.provider.name", "gen_ai.system"))) or provider,
        model=model,
        operation=_text(attrs.get("gen_ai.operation.name")),
        attributes=kept,
    )


# --- traces --------------------------------------------------------------------------------------

_STATUS_ERROR: Final = 2


def map_traces(request: Any, tenant: str, options: MappingOptions = DEFAULT_OPTIONS) -> MappingResult:
    """Usage events from spans that carry one request's usage each."""
    result = MappingResult()
    for resource_spans in request.resource_spans:
        res = _Resource(resource_spans.resource, options)
        for scope_spans in resource_spans.scope_spans:
            semconv = (
                TOKENSCALE_SPAN
                if scope_spans.scope.name.startswith(TOKENSCALE_SCOPE_PREFIX)
                else SEMCONV_SPAN
            )
            for span in scope_spans.spans:
                try:
                    event = _span_event(span, semconv, res, tenant, options)
                except _RecordError as exc:
                    result.reject(f"span {span.name!r}: {exc}")
                    continue
                if event is not None:
                    result.events.append(event)
    return result


def _span_event(
    span: Any, semconv: SpanRule, res: _Resource, tenant: str, options: MappingOptions
) -> UsageEvent | None:
    if span.name == CLAUDE_SPAN.carrier:
        rule = CLAUDE_SPAN
    else:
        # Cheap pre-check on keys before building the attribute dict.
        if not any(kv.key.startswith(("gen_ai.usage.", "llm.usage.")) for kv in span.attributes):
            return None
        rule = semconv
    attrs = attributes(span.attributes)
    if rule is not CLAUDE_SPAN and attrs.get("gen_ai.operation.name") in NON_USAGE_OPERATIONS:
        return None
    time_ns = span.end_time_unix_nano or span.start_time_unix_nano
    if not time_ns:
        raise _RecordError("missing timestamp: end_time_unix_nano and start_time_unix_nano are 0")
    event = _event(
        res,
        attrs,
        tenant=tenant,
        carrier=rule.carrier,
        rank=rule.rank,
        time_ns=time_ns,
        dedupe_key=_digest(tenant, rule.carrier, span.trace_id, span.span_id),
        provider=rule.provider,
        model_keys=("gen_ai.response.model", "gen_ai.request.model", "model"),
        options=options,
    )
    if not _apply_fields(event, attrs, rule.fields):
        return None
    event.requests = 1
    event.request_id = _text(_first(attrs, ("request_id", "gen_ai.response.id")))
    if span.start_time_unix_nano and span.end_time_unix_nano >= span.start_time_unix_nano:
        event.duration_ms = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
    if span.status.code == _STATUS_ERROR or "error.type" in attrs:
        event.error_type = _text(attrs.get("error.type")) or "_OTHER"
    price_event(event, per_request=True)
    return event


# --- logs ----------------------------------------------------------------------------------------


def map_logs(request: Any, tenant: str, options: MappingOptions = DEFAULT_OPTIONS) -> MappingResult:
    """Usage events from log events that carry one request's usage each."""
    result = MappingResult()
    for resource_logs in request.resource_logs:
        res = _Resource(resource_logs.resource, options)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                name = _event_name(record, res.tool)
                if not name:
                    continue
                if name in ACTIVITY_LOG_RULES:
                    try:
                        result.activity.append(_log_activity(record, ACTIVITY_LOG_RULES[name], res, tenant))
                    except _RecordError as exc:
                        result.reject(f"log event {name!r}: {exc}")
                    continue
                rule = LOG_RULES.get(name)
                if rule is None:
                    continue
                try:
                    event = _log_event(record, rule, res, tenant, options)
                except _RecordError as exc:
                    result.reject(f"log event {name!r}: {exc}")
                    continue
                if event is not None:
                    result.events.append(event)
    return result


def _log_activity(record: Any, metric: str, res: _Resource, tenant: str) -> ActivityEvent:
    time_ns = record.time_unix_nano or record.observed_time_unix_nano
    if not time_ns:
        raise _RecordError("missing timestamp: time_unix_nano and observed_time_unix_nano are 0")
    event = _activity(
        res,
        attributes(record.attributes),
        tenant=tenant,
        metric=metric,
        time_ns=time_ns,
        dedupe_key=_digest(tenant, metric, res.service_name, record.SerializeToString(deterministic=True)),
    )
    event.value = 1.0
    return event


def _event_name(record: Any, tool: str) -> str:
    name: str = record.event_name
    if not name:
        for kv in record.attributes:
            if kv.key == "event.name":
                name = kv.value.string_value
                break
    if not name:
        body = record.body.string_value if record.body.WhichOneof("value") == "string_value" else ""
        if body.startswith("claude_code."):
            return body
    # Claude Code names its events bare (``api_request``); qualify them by the client.
    if name and "." not in name and tool == "claude_code":
        return f"claude_code.{name}"
    return name


def _log_event(
    record: Any, rule: LogRule, res: _Resource, tenant: str, options: MappingOptions
) -> UsageEvent | None:
    attrs = attributes(record.attributes)
    if rule.require is not None and attrs.get(rule.require[0]) != rule.require[1]:
        return None
    time_ns = record.time_unix_nano or record.observed_time_unix_nano
    if not time_ns:
        raise _RecordError("missing timestamp: time_unix_nano and observed_time_unix_nano are 0")
    event = _event(
        res,
        attrs,
        tenant=tenant,
        carrier=rule.carrier,
        rank=rule.rank,
        time_ns=time_ns,
        dedupe_key=_digest(
            tenant, rule.carrier, res.service_name, record.SerializeToString(deterministic=True)
        ),
        provider=rule.provider,
        model_keys=rule.model_keys,
        options=options,
    )
    if not _apply_fields(event, attrs, rule.fields) and rule.needs_usage:
        return None
    event.requests = 1
    event.request_id = _text(_first(attrs, rule.request_id_keys))
    if rule.duration_ms_key is not None and rule.duration_ms_key in attrs:
        event.duration_ms = _number(attrs[rule.duration_ms_key], rule.duration_ms_key)
    if not rule.needs_usage:
        event.error_type = _text(_first(attrs, ("error.type", "status_code", "error"))) or "_OTHER"
    elif "error.type" in attrs:
        event.error_type = _text(attrs["error.type"])
    price_event(event, per_request=True)
    return event


# --- metrics -------------------------------------------------------------------------------------


def map_metrics(request: Any, tenant: str, options: MappingOptions = DEFAULT_OPTIONS) -> MappingResult:
    """Usage increments from metric points: delta points directly, cumulative ones as
    :class:`CumulativePoint` for the writer to difference against the stored series state."""
    result = MappingResult()
    for resource_metrics in request.resource_metrics:
        res = _Resource(resource_metrics.resource, options)
        res_key: bytes | None = None
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                rule: MetricRule | ActivityRule | None = METRIC_RULES.get(metric.name)
                if rule is None:
                    rule = ACTIVITY_METRIC_RULES.get(metric.name)
                    if rule is None:
                        continue
                kind = metric.WhichOneof("data")
                if kind not in ("sum", "histogram"):
                    result.reject(f"metric {metric.name!r}: unsupported kind {kind!r}", _points(metric))
                    continue
                data = getattr(metric, kind)
                if res_key is None:
                    res_key = _digest(tenant, *sorted(f"{k}={v!r}" for k, v in res.attrs.items()))
                for point in data.data_points:
                    try:
                        _metric_point(
                            result,
                            metric.name,
                            rule,
                            kind,
                            data.aggregation_temporality,
                            point,
                            res,
                            res_key,
                            tenant,
                            options,
                        )
                    except _RecordError as exc:
                        result.reject(f"metric {metric.name!r}: {exc}")
    return result


def _point_value(point: Any, kind: str) -> tuple[float, int]:
    """A sum point's value, or a histogram point's sum and count; rejects what cannot be usage."""
    if not point.time_unix_nano:
        raise _RecordError("missing timestamp: time_unix_nano is 0")
    if kind == "sum":
        which = point.WhichOneof("value")
        if which is None:
            raise _RecordError("data point has no value")
        return _number(getattr(point, which), which), 0
    return _number(point.sum, "sum"), int(_number(point.count, "count"))


def _series_key(res_key: bytes, name: str, attrs: Mapping[str, Any]) -> bytes:
    return _digest(res_key, name, *sorted(f"{k}={v!r}" for k, v in attrs.items()))


def _activity_point(
    result: MappingResult,
    name: str,
    rule: ActivityRule,
    kind: str,
    temporality: int,
    point: Any,
    attrs: Mapping[str, Any],
    res: _Resource,
    res_key: bytes,
    tenant: str,
) -> None:
    metric = rule.metric if rule.type_key is None else rule.by_type.get(str(attrs.get(rule.type_key, "")))
    if metric is None:
        return
    amount, _ = _point_value(point, kind)
    series_key = _series_key(res_key, name, attrs)
    event = _activity(
        res,
        attrs,
        tenant=tenant,
        metric=metric,
        time_ns=point.time_unix_nano,
        dedupe_key=_digest(series_key, str(point.start_time_unix_nano), str(point.time_unix_nano)),
    )
    if temporality == _TEMPORALITY_CUMULATIVE:
        result.cumulative.append(
            CumulativePoint(
                series_key=series_key,
                start_ns=point.start_time_unix_nano,
                time_ns=point.time_unix_nano,
                value=amount,
                contributions=_ACTIVITY_VALUE,
                event=event,
            )
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
    result: MappingResult,
    name: str,
    rule: MetricRule | ActivityRule,
    kind: str,
    temporality: int,
    point: Any,
    res: _Resource,
    res_key: bytes,
    tenant: str,
    options: MappingOptions,
) -> None:
    attrs = attributes(point.attributes)
    if isinstance(rule, ActivityRule):
        _activity_point(result, name, rule, kind, temporality, point, attrs, res, res_key, tenant)
        return
    if rule.type_key is not None:
        contributions = rule.by_type.get(str(attrs.get(rule.type_key, "")))
        if contributions is None:
            return  # a token type we do not count (e.g. Codex's "total")
        count_requests = rule.count_requests_for == attrs.get(rule.type_key)
    else:
        contributions = rule.contributions
        count_requests = rule.count_requests_for is not None
    amount, count = _point_value(point, kind)
    series_key = _series_key(res_key, name, attrs)
    event = _event(
        res,
        attrs,
        tenant=tenant,
        carrier=rule.carrier,
        rank=rule.rank,
        time_ns=point.time_unix_nano,
        dedupe_key=_digest(series_key, str(point.start_time_unix_nano), str(point.time_unix_nano)),
        provider=rule.provider,
        model_keys=rule.model_keys,
        options=options,
    )
    event.attributes["metric.name"] = name
    if rule.cost_reported_elsewhere:
        event.cost_source = "reported"
    if temporality == _TEMPORALITY_CUMULATIVE:
        result.cumulative.append(
            CumulativePoint(
                series_key=series_key,
                start_ns=point.start_time_unix_nano,
                time_ns=point.time_unix_nano,
                value=amount,
                contributions=contributions,
                event=event,
                count=count,
                counts_requests=count_requests,
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
