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


#: Digests of ``render`` (content dropped, content kept) as the straightforward mapping produced them.
CAPTURE_DIGESTS: dict[str, tuple[str, str]] = {
    "check-claude-no-trace-beta/logs-0": ("973c918b69214abd", "973c918b69214abd"),
    "check-claude-no-trace-beta/metrics-0": ("a7f6f609d94c6815", "a7f6f609d94c6815"),
    "check-claude-nonessential-off/logs-0": ("9a93efd23892115a", "9a93efd23892115a"),
    "check-claude-nonessential-off/metrics-0": ("fbc10cbbd06d9b22", "fbc10cbbd06d9b22"),
    "check-claude-nonessential-off/traces-0": ("2daa7fdf1e80579d", "2daa7fdf1e80579d"),
    "claude-grpc/logs-0": ("73e2390606bc6564", "73e2390606bc6564"),
    "claude-grpc/metrics-0": ("88dbedad78ccbafb", "88dbedad78ccbafb"),
    "claude-grpc/traces-0": ("c061750757649de9", "c061750757649de9"),
    "claude-httpjson/logs-0": ("aa01b7709fc618b4", "aa01b7709fc618b4"),
    "claude-httpjson/metrics-0": ("ea280ed4b588c927", "ea280ed4b588c927"),
    "claude-httpjson/traces-0": ("127f7c9843d73f8e", "127f7c9843d73f8e"),
    "claude-httpproto/logs-0": ("bbda185ffb5ea6bc", "bbda185ffb5ea6bc"),
    "claude-httpproto/metrics-0": ("22037ac81b34ca38", "22037ac81b34ca38"),
    "claude-httpproto/traces-0": ("ab387ca4e7cadfd1", "ab387ca4e7cadfd1"),
    "claude-tools-grpc/logs-0": ("38df5d2100576c1f", "38df5d2100576c1f"),
    "claude-tools-grpc/metrics-0": ("bc58066c0b0fd075", "bc58066c0b0fd075"),
    "claude-tools-grpc/traces-0": ("28ebbfe2d67515ca", "28ebbfe2d67515ca"),
    "claude-tools-slow-cumulative-httpproto/logs-0": ("853dc3cf7731d978", "853dc3cf7731d978"),
    "claude-tools-slow-cumulative-httpproto/logs-1": ("b076bad568e59c27", "b076bad568e59c27"),
    "claude-tools-slow-cumulative-httpproto/logs-2": ("29752ea7075c7b82", "29752ea7075c7b82"),
    "claude-tools-slow-cumulative-httpproto/metrics-0": ("a5a4fe7882b99437", "a5a4fe7882b99437"),
    "claude-tools-slow-cumulative-httpproto/metrics-1": ("c3821da353fabf04", "c3821da353fabf04"),
    "claude-tools-slow-cumulative-httpproto/metrics-2": ("f2afb34ecda988b1", "f2afb34ecda988b1"),
    "claude-tools-slow-cumulative-httpproto/metrics-3": ("e455ffef4ce7e67b", "e455ffef4ce7e67b"),
    "claude-tools-slow-cumulative-httpproto/metrics-4": ("7a76b26846de959d", "7a76b26846de959d"),
    "claude-tools-slow-cumulative-httpproto/metrics-5": ("11adb2ca8e373a59", "11adb2ca8e373a59"),
    "claude-tools-slow-cumulative-httpproto/traces-0": ("3aded4e1e3fb94c3", "3aded4e1e3fb94c3"),
    "claude-tools-slow-cumulative-httpproto/traces-1": ("5cf60531b117b2c0", "5cf60531b117b2c0"),
    "claude-tools-slow-delta-grpc/logs-0": ("853dc3cf7731d978", "853dc3cf7731d978"),
    "claude-tools-slow-delta-grpc/logs-1": ("e8f3b020826a4721", "e8f3b020826a4721"),
    "claude-tools-slow-delta-grpc/logs-2": ("f0d4326cf387a812", "f0d4326cf387a812"),
    "claude-tools-slow-delta-grpc/metrics-0": ("e4f0de77ef9438ab", "e4f0de77ef9438ab"),
    "claude-tools-slow-delta-grpc/metrics-1": ("fd50ffd4185d4b8f", "fd50ffd4185d4b8f"),
    "claude-tools-slow-delta-grpc/metrics-2": ("82de29711c5149b2", "82de29711c5149b2"),
    "claude-tools-slow-delta-grpc/traces-0": ("7bc4d4cceea0078d", "7bc4d4cceea0078d"),
    "claude-tools-slow-delta-grpc/traces-1": ("a9ea870d14f54fe3", "a9ea870d14f54fe3"),
    "gemini-grpc/logs-0": ("e083da2fb98fd1e5", "d0332a0fbd99ba29"),
    "gemini-grpc/metrics-0": ("b1c3b8e531bf45a1", "8eb31dd4c9700169"),
    "gemini-grpc/traces-0": ("ea06095abb9f50cf", "c382216c6946220f"),
    "gemini-http/logs-0": ("2c868d78d8d3f17a", "059680082fe62930"),
    "gemini-http/metrics-0": ("dbb3c76d103414e4", "eca5cd49bfd8cb65"),
    "gemini-http/traces-0": ("e0a81ee4320b86da", "11370d07363f2270"),
    "gemini-tools-grpc/logs-0": ("edc1b6569f755326", "4e68c21054877466"),
    "gemini-tools-grpc/metrics-0": ("6a2c13c55e40a1aa", "81c4525014b7cd7b"),
    "gemini-tools-grpc/traces-0": ("1fe2c7827cedff30", "e23083874ad4e286"),
    "py-openai-v2-grpc/metrics-1": ("91dec0fdc04c9a74", "91dec0fdc04c9a74"),
    "py-openai-v2-grpc/traces-1": ("5931cc3fe507fe12", "5931cc3fe507fe12"),
    "py-openai-v2-latest-httpproto/logs-0": ("b8441657ab786f2f", "cbff6210b2c67cbb"),
    "py-openai-v2-latest-httpproto/metrics-0": ("e784f95f255ecd9b", "e784f95f255ecd9b"),
    "py-openai-v2-latest-httpproto/traces-0": ("0f2b0bb65e6e9841", "fb5185ffe33c438d"),
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


#: The digest of ``render`` over ``mutated_corpus(400, 20261123)``, as the straightforward mapping made it,
#: except for one request of the corpus whose span has an array ``gen_ai.operation.name``: the
#: mapping raised TypeError on it (unhashable list), and now maps it (the value limits then reject it).
CORPUS_DIGEST = "60a5d9c826256f77"


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
