"""The mapping's output is pinned: stored rows and dedupe keys must not change between versions.

The mapping is written for speed (see tokenscale.mapping._core), so these tests pin what it produces
to what the straightforward implementation it replaced produced: a digest of every field of every
event, activity event and cumulative point (dedupe and series keys, attribute dicts in order) for
every captured client request, and for a corpus of randomly mutated captures that reaches the edge
cases (empty and zero values, duplicate keys, every AnyValue kind, hostile numbers, identity keys on
the resource, content keys, bad timestamps and temporalities).

If a digest changes, stored data or dedupe keys would change: that is a bug unless it is an
intended change of the mapping's semantics (then update the digests, and say so in the change log).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from ground_truth import CAPTURES
from tokenscale.mapping import MappingOptions, map_request, resolve_cumulative
from tokenscale.mapping._values import attributes
from tokenscale.mapping.model import ActivityEvent, CumulativePoint, MappingResult, UsageEvent
from tokenscale.otlp import decode_request

#: Every stored field, in declaration order (a reordering changes the digests: on purpose).
USAGE_FIELDS = tuple(f.name for f in dataclasses.fields(UsageEvent))
ACTIVITY_FIELDS = tuple(f.name for f in dataclasses.fields(ActivityEvent))


def render_event(event: UsageEvent | ActivityEvent) -> str:
    """Every stored field, with its type (``repr``: 1 and 1.0 and True differ, dict order shows)."""
    names = USAGE_FIELDS if isinstance(event, UsageEvent) else ACTIVITY_FIELDS
    return repr(tuple(getattr(event, name) for name in names))


def render_point(point: CumulativePoint) -> str:
    head = (point.series_key, point.start_ns, point.time_ns, point.value, point.contributions)
    return repr((*head, point.count, point.counts_requests)) + render_event(point.event)


def render(signal: str, request: Any, options: MappingOptions) -> str:
    """The mapping of ``request``, its cumulative points resolved from scratch, as text."""
    try:
        result: MappingResult = map_request(signal, request, "t", options)  # type: ignore[arg-type]
    except Exception as exc:  # pinned too: what a request the mapping cannot handle raises
        return f"raised {type(exc).__name__}: {exc}"
    resolved, states = resolve_cumulative(result.cumulative, {})
    lines = [f"rejected {result.rejected}: {result.errors!r}"]
    lines += [render_event(e) for e in result.events]
    lines += [render_event(e) for e in result.activity]
    lines += [render_point(p) for p in result.cumulative]
    lines += [render_event(e) for e in resolved]
    lines += [repr(item) for item in sorted(states.items())]
    return "\n".join(lines)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def captured_requests() -> list[tuple[str, str, Any]]:
    """``(name, signal, decoded request)`` of every captured export."""
    found = []
    for meta_path in sorted(CAPTURES.glob("*/*.meta.json")):
        meta = json.loads(meta_path.read_text())
        stem = meta_path.name.removesuffix(".meta.json")
        raw = next(meta_path.parent.glob(f"{stem}.raw.*"))
        content_type = "application/json" if raw.suffix == ".json" else "application/x-protobuf"
        request = decode_request(meta["signal"], raw.read_bytes(), content_type)
        found.append((f"{meta_path.parent.name}/{stem}", meta["signal"], request))
    return found


#: Digests of ``render`` (content dropped, content kept). Last changed on purpose by the counting model
#: of per-request identities: streams are the service (and instance), records carry their request's
#: identities, aggregate carriers are marked, Codex's event names are read from ``event.name``.
CAPTURE_DIGESTS: dict[str, tuple[str, str]] = {
    "check-claude-no-trace-beta/logs-0": ("8bab12e76da7f627", "8bab12e76da7f627"),
    "check-claude-no-trace-beta/metrics-0": ("7fb92b080e62142e", "7fb92b080e62142e"),
    "check-claude-nonessential-off/logs-0": ("0ceb3372d328e946", "0ceb3372d328e946"),
    "check-claude-nonessential-off/metrics-0": ("08a26bc60449885f", "08a26bc60449885f"),
    "check-claude-nonessential-off/traces-0": ("0d7cf6f868990b68", "0d7cf6f868990b68"),
    "claude-grpc/logs-0": ("af1fc8efa5fd9097", "af1fc8efa5fd9097"),
    "claude-grpc/metrics-0": ("af0e48ae88528819", "af0e48ae88528819"),
    "claude-grpc/traces-0": ("de46094b7f99fe37", "de46094b7f99fe37"),
    "claude-httpjson/logs-0": ("fbf6c02bb92999b6", "fbf6c02bb92999b6"),
    "claude-httpjson/metrics-0": ("c3025a20720d2387", "c3025a20720d2387"),
    "claude-httpjson/traces-0": ("9e217a0ee9f11eda", "9e217a0ee9f11eda"),
    "claude-httpproto/logs-0": ("a17b8812776dd066", "a17b8812776dd066"),
    "claude-httpproto/metrics-0": ("26e755ace582419c", "26e755ace582419c"),
    "claude-httpproto/traces-0": ("88d9a73e452f474d", "88d9a73e452f474d"),
    "claude-tools-grpc/logs-0": ("a862c0632b49d94b", "a862c0632b49d94b"),
    "claude-tools-grpc/metrics-0": ("b1b856557f0e4563", "b1b856557f0e4563"),
    "claude-tools-grpc/traces-0": ("293bcf2f8bd2ffff", "293bcf2f8bd2ffff"),
    "claude-tools-slow-cumulative-httpproto/logs-0": ("853dc3cf7731d978", "853dc3cf7731d978"),
    "claude-tools-slow-cumulative-httpproto/logs-1": ("471f82cdea04707d", "471f82cdea04707d"),
    "claude-tools-slow-cumulative-httpproto/logs-2": ("bbf5df5963e35a4f", "bbf5df5963e35a4f"),
    "claude-tools-slow-cumulative-httpproto/metrics-0": ("6b975a20b8b875d5", "6b975a20b8b875d5"),
    "claude-tools-slow-cumulative-httpproto/metrics-1": ("45e230be352a1bb0", "45e230be352a1bb0"),
    "claude-tools-slow-cumulative-httpproto/metrics-2": ("96f1643cc9917df6", "96f1643cc9917df6"),
    "claude-tools-slow-cumulative-httpproto/metrics-3": ("b78bd8b2b4b2b8cb", "b78bd8b2b4b2b8cb"),
    "claude-tools-slow-cumulative-httpproto/metrics-4": ("aa885853358df49b", "aa885853358df49b"),
    "claude-tools-slow-cumulative-httpproto/metrics-5": ("2e69f5878a65e725", "2e69f5878a65e725"),
    "claude-tools-slow-cumulative-httpproto/traces-0": ("38ca07b36833aee1", "38ca07b36833aee1"),
    "claude-tools-slow-cumulative-httpproto/traces-1": ("60adc99984b151d4", "60adc99984b151d4"),
    "claude-tools-slow-delta-grpc/logs-0": ("853dc3cf7731d978", "853dc3cf7731d978"),
    "claude-tools-slow-delta-grpc/logs-1": ("a1cebcea034425c3", "a1cebcea034425c3"),
    "claude-tools-slow-delta-grpc/logs-2": ("ae4d003ed571c0b1", "ae4d003ed571c0b1"),
    "claude-tools-slow-delta-grpc/metrics-0": ("096a25062aada956", "096a25062aada956"),
    "claude-tools-slow-delta-grpc/metrics-1": ("c43d17b9f9a9d4be", "c43d17b9f9a9d4be"),
    "claude-tools-slow-delta-grpc/metrics-2": ("5038569f17120d4a", "5038569f17120d4a"),
    "claude-tools-slow-delta-grpc/traces-0": ("b3ffa56a5991e719", "b3ffa56a5991e719"),
    "claude-tools-slow-delta-grpc/traces-1": ("56825f00250dbeea", "56825f00250dbeea"),
    "codex-grpc/logs-0": ("8b8ab8fea83cadc1", "8b8ab8fea83cadc1"),
    "codex-grpc/metrics-0": ("a7978ef43248aaf2", "a7978ef43248aaf2"),
    "codex-grpc/traces-0": ("02991975420912fa", "02991975420912fa"),
    "copilot-httpjson/metrics-0": ("5820c5a4e0b3121a", "5820c5a4e0b3121a"),
    "copilot-httpjson/traces-0": ("7b974ab0acb393f4", "1a40a5251aab2642"),
    "gemini-grpc/logs-0": ("d601f80b25115994", "ac420fde09b20de3"),
    "gemini-grpc/metrics-0": ("b2002c61bfacc4d4", "6eb1506bcae9f611"),
    "gemini-grpc/traces-0": ("170e97b2d1956a32", "528023cecf46ced3"),
    "gemini-http/logs-0": ("b7b47294128cc7a5", "bc15c81484aa97a6"),
    "gemini-http/metrics-0": ("bf83442239edbd7c", "41334e2912d54742"),
    "gemini-http/traces-0": ("dadd605df12da897", "73f4a76b15583163"),
    "gemini-tools-grpc/logs-0": ("393245e8622cba21", "2a4322675015d4d0"),
    "gemini-tools-grpc/metrics-0": ("affde9e9b4a35d62", "fa4360114280217a"),
    "gemini-tools-grpc/traces-0": ("cac407a30b95940b", "bf47a7e12c58cb17"),
    "py-openai-v2-grpc/metrics-1": ("1b99d8f9a90c2446", "1b99d8f9a90c2446"),
    "py-openai-v2-grpc/traces-1": ("9fb494d09412f2b3", "9fb494d09412f2b3"),
    "py-openai-v2-latest-httpproto/logs-0": ("5f3e8f345646e27f", "a0dce640944bf380"),
    "py-openai-v2-latest-httpproto/metrics-0": ("cb2e458d93107fac", "cb2e458d93107fac"),
    "py-openai-v2-latest-httpproto/traces-0": ("134d73f0b1318281", "7c3c53a717ff8658"),
}

CAPTURED = captured_requests()


@pytest.mark.parametrize(("name", "signal", "request_"), CAPTURED, ids=[c[0] for c in CAPTURED])
def test_captured_requests_map_as_before(name: str, signal: str, request_: Any) -> None:
    got = tuple(digest(render(signal, request_, MappingOptions(capture))) for capture in (False, True))
    assert got == CAPTURE_DIGESTS[name]


# --- a corpus of mutated captures ----------------------------------------------------------------

#: Keys the mapping looks at, and some it must not confuse with them.
_KEY_NAMES = (
    "service.name service.instance.id session.id conversation.id gen_ai.conversation.id user.email "
    "enduser.email user.id enduser.id user.account_uuid user.account_id installation.id "
    "gen_ai.provider.name gen_ai.system gen_ai.operation.name model gen_ai.response.model "
    "gen_ai.request.model request_id gen_ai.response.id response_id prompt_id error.type status_code "
    "error duration_ms event.name event.kind type token_type gen_ai.token.type decision input_tokens "
    "output_tokens cache_read_tokens cache_creation_tokens cost_usd input_token_count "
    "output_token_count cached_content_token_count thoughts_token_count tool_token_count "
    "cached_token_count cache_write_token_count reasoning_token_count gen_ai.usage.input_tokens "
    "gen_ai.usage.prompt_tokens llm.usage.prompt_tokens gen_ai.usage.output_tokens "
    "gen_ai.usage.cache_read.input_tokens gen_ai.usage.cache_creation.input_tokens "
    "gen_ai.usage.reasoning.output_tokens gen_ai.usage.cost gen_ai.usage.other llm.usage.total_tokens "
    "prompt gen_ai.prompt process.command_args model.raw metric.name x a=b"
)
KEYS = [*_KEY_NAMES.split(), ""]
TEXTS = (
    "",
    "0",
    "12",
    "1e3",
    "nan",
    "-1",
    " 5",
    "claude-opus-4-8[1m]",
    "gpt-4o-mini",
    "[x",
    "invoke_agent",
    "chat",
    "input",
    "output",
    "cacheRead",
    "cache",
    "thought",
    "cached_input",
    "total",
    "added",
    "accept",
    "response.completed",
    "api_request",
    "claude_code.api_request",
    "tool_result",
    "api_error",
    "gemini_cli.api_response",
    "codex.sse_event",
    "claude-code",
    "codex_cli_rs",
    "Copilot-X",
    "anthropic",
    "openai",
    "gcp.gemini",
    "é ü \x1f = '\"",
    "1e13",
    "claude-sonnet-4-5",
)
NUMBERS = (0, 1, 3, -5, 10**12, 10**12 + 1, 2**62, 123_456)
FLOATS = (0.0, -0.0, 1.5, 1e13, math.nan, math.inf, -math.inf, 3.0, 0.1 + 0.2, 271.828)
METRIC_NAMES = (
    "claude_code.token.usage",
    "claude_code.cost.usage",
    "gemini_cli.token.usage",
    "codex.turn.token_usage",
    "gen_ai.client.token.usage",
    "claude_code.lines_of_code.count",
    "claude_code.code_edit_tool.decision",
    "claude_code.session.count",
    "gen_ai.client.inference.operation.input_tokens",
    "gemini_cli.api.request.count",
)


def random_value(rng: random.Random, depth: int = 0) -> AnyValue:
    """An ``AnyValue`` of any kind, often empty or zero (which only ``WhichOneof`` tells apart)."""
    r = rng.random()
    if r < 0.35:
        return AnyValue(string_value=rng.choice(TEXTS))
    if r < 0.55:
        return AnyValue(int_value=rng.choice(NUMBERS))
    if r < 0.7:
        return AnyValue(double_value=rng.choice(FLOATS))
    if r < 0.77:
        return AnyValue(bool_value=rng.random() < 0.5)
    if r < 0.82 and depth < 2:
        v = AnyValue()
        v.array_value.values.extend(random_value(rng, depth + 1) for _ in range(rng.randrange(3)))
        return v
    if r < 0.87 and depth < 2:
        v = AnyValue()
        pairs = (KeyValue(key=rng.choice(KEYS), value=random_value(rng, depth + 1)) for _ in range(2))
        v.kvlist_value.values.extend(pairs)
        return v
    if r < 0.92:
        return AnyValue(bytes_value=rng.randbytes(rng.randrange(4)))
    return AnyValue()


def mutate_attributes(rng: random.Random, attrs: Any) -> None:
    for _ in range(rng.randrange(1, 4)):
        op = rng.random()
        if op < 0.4 and len(attrs):
            attrs[rng.randrange(len(attrs))].value.CopyFrom(random_value(rng))
        elif op < 0.8:
            attrs.append(KeyValue(key=rng.choice(KEYS), value=random_value(rng)))
        elif op < 0.9 and len(attrs):
            del attrs[rng.randrange(len(attrs))]
        elif len(attrs):  # the same key again, with another value
            attrs.append(KeyValue(key=attrs[rng.randrange(len(attrs))].key, value=random_value(rng)))


def items_of(signal: str, request: Any) -> list[tuple[str, Any]]:
    """Every resource, scope, record, metric and data point of ``request``, by kind."""
    items: list[tuple[str, Any]] = []
    for resource in getattr(request, f"resource_{signal if signal != 'traces' else 'spans'}"):
        items.append(("resource", resource.resource))
        for scope in getattr(resource, f"scope_{signal if signal != 'traces' else 'spans'}"):
            items.append(("scope", scope.scope))
            if signal == "traces":
                items += [("span", span) for span in scope.spans]
            elif signal == "logs":
                items += [("log", record) for record in scope.log_records]
            else:
                for metric in scope.metrics:
                    items.append(("metric", metric))
                    kind = metric.WhichOneof("data")
                    if kind:
                        items += [("point", point) for point in getattr(metric, kind).data_points]
    return items


def mutate_record(rng: random.Random, kind: str, item: Any) -> None:
    """Change what the mapping reads of one item other than its attributes."""
    c = rng.randrange(5)
    if kind == "scope":
        item.name = rng.choice(["tokenscale.instrumentation.openai", "tokenscale.instrumentation", "x"])
    elif kind == "span":
        if c == 0:
            item.name = rng.choice(["claude_code.llm_request", "chat", "x"])
        elif c == 1:
            item.end_time_unix_nano = rng.choice([0, max(item.start_time_unix_nano - 1, 0), 5 * 10**18])
        elif c == 2:
            item.start_time_unix_nano = rng.choice([0, item.end_time_unix_nano + 1])
        elif c == 3:
            item.status.code = rng.randrange(3)
        else:
            item.trace_id = rng.randbytes(rng.randrange(17))
    elif kind == "log":
        if c == 0:
            item.event_name = rng.choice(TEXTS)
        elif c == 1:
            item.body.CopyFrom(random_value(rng))
        elif c == 2:
            item.time_unix_nano = rng.choice([0, 10**18, 5 * 10**18])
        else:
            item.observed_time_unix_nano = rng.choice([0, 1_795_395_286 * 10**9])
    elif kind == "metric":
        data = item.WhichOneof("data")
        if c < 2 and data in ("sum", "histogram"):
            getattr(item, data).aggregation_temporality = rng.randrange(4)
        elif c < 4:
            item.name = rng.choice(METRIC_NAMES)
        else:
            item.gauge.data_points.add().time_unix_nano = 1
    elif kind == "point":
        if c == 0:
            item.time_unix_nano = rng.choice([0, 10**18, item.time_unix_nano + 1])
        elif c == 1:
            item.start_time_unix_nano = rng.choice([0, item.start_time_unix_nano + 7])
        elif hasattr(item, "as_double"):
            if c == 2:
                item.as_int = rng.choice([0, -1, 5, 10**13])
            else:
                item.as_double = rng.choice([0.0, -1.0, math.nan, 2.5, 1e13])
        else:
            item.sum = rng.choice([0.0, -1.0, math.nan, 2.5])
            item.count = rng.choice([0, 3])


def mutated_corpus(n: int, seed: int) -> list[tuple[str, Any, MappingOptions]]:
    """``n`` captured requests with a few random changes each (deterministic for ``seed``)."""
    rng = random.Random(seed)
    corpus = []
    for _ in range(n):
        _name, signal, original = rng.choice(CAPTURED)
        request = type(original)()
        request.CopyFrom(original)
        items = items_of(signal, request)
        for _ in range(rng.randrange(1, 6)):
            kind, item = rng.choice(items)
            if kind in ("resource", "span", "log", "point") and rng.random() < 0.6:
                mutate_attributes(rng, item.attributes)
            else:
                mutate_record(rng, kind, item)
        corpus.append((signal, request, MappingOptions(capture_content=rng.random() < 0.3)))
    return corpus


#: The digest of ``render`` over ``mutated_corpus(400, 20261123)`` (changed with CAPTURE_DIGESTS).
CORPUS_DIGEST = "80b5d1d6c3cc91e9"


def test_mutated_captures_map_as_before() -> None:
    rendered = [
        render(signal, request, options) for signal, request, options in mutated_corpus(400, 20261123)
    ]
    assert digest("\n\n".join(rendered)) == CORPUS_DIGEST


# --- the parts the speed rests on ----------------------------------------------------------------


def reference_value(v: AnyValue) -> Any:
    """An ``AnyValue`` as Python, dispatching on ``WhichOneof`` (what :func:`attributes` must equal)."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [reference_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        out: dict[str, Any] = {}
        for kv in v.kvlist_value.values:
            out[kv.key] = reference_value(kv.value)
        return out
    if kind == "bytes_value":
        return bytes(v.bytes_value).hex()
    return None if kind is None else getattr(v, kind)


def test_attribute_values_keep_their_kind() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        kvs = [KeyValue(key=rng.choice(KEYS), value=random_value(rng)) for _ in range(rng.randrange(6))]
        expected = {kv.key: reference_value(kv.value) for kv in kvs}
        assert repr(attributes(kvs)) == repr(expected)  # repr: 0 and 0.0 and False, -0.0 and 0.0 differ


def test_usage_prefixes_cover_the_span_usage_keys() -> None:
    """The span pre-check trusts that every usage key of the span rules has a usage prefix."""
    from tokenscale.mapping._core import _SPAN_USAGE_KEYS, _USAGE_PREFIXES  # noqa: PLC0415

    assert all(key.startswith(_USAGE_PREFIXES) for key in _SPAN_USAGE_KEYS)


def test_record_lookup_keys_are_not_content() -> None:
    """A record's content keys are dropped from its seeded dict after the lookups: none is looked up."""
    from tokenscale.mapping._core import _RECORD_KEYS  # noqa: PLC0415
    from tokenscale.mapping.rules import SENSITIVE_KEYS  # noqa: PLC0415

    assert _RECORD_KEYS.isdisjoint(SENSITIVE_KEYS)


def test_captures_are_all_pinned() -> None:
    assert sorted(CAPTURE_DIGESTS) == sorted(name for name, _, _ in CAPTURED)
    assert Path(CAPTURES).is_dir()
