"""Hostile input over every transport (OTLP/JSON, OTLP/HTTP protobuf, OTLP/gRPC) into a real receiver
and PostgreSQL: bad values are answered as bad data naming the field (never 5xx, never retryable),
the good items of a partially bad export are stored exactly once, and no stored row is negative or
partial."""

from __future__ import annotations

import json
import logging
import random
import secrets
import socket
import string
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from dbservers import Server, fresh_database
from ground_truth import capture_bodies
from hostile import Sender, claude_cost_metric, semconv_span, spans_export
from otlp_clients import background_loop, running
from tokenscale.mapping.limits import DEFAULT_LIMITS
from tokenscale.pipeline import ExportPipeline
from tokenscale.store import migrate
from tokenscale.store.writer import UsageWriter, open_pool

LONG = "".join(secrets.choice(string.ascii_letters) for _ in range(3000))


@pytest.fixture(scope="module")
def stack(pg_server: Server) -> Iterator[tuple[Sender, str]]:
    """A receiver writing into a fresh database, and a sender over all three transports."""
    with fresh_database(pg_server) as url, background_loop() as loop:
        migrate(url)
        pool = open_pool(url)
        try:
            with running(loop, ExportPipeline(UsageWriter(pool, timeout=5))) as receiver:
                sender = Sender(receiver.grpc_port, receiver.http_port)
                try:
                    yield sender, url
                finally:
                    sender.close()
        finally:
            pool.close()


def _partial(transport: str, code: Any, answer: Any) -> tuple[int, str]:
    """(rejected spans, message) of a successful trace export answer."""
    if transport == "grpc":
        assert code == grpc.StatusCode.OK, (transport, code, answer)
        partial = answer.partial_success
    else:
        assert code == 200, (transport, code, answer)
        response = ExportTraceServiceResponse()
        if transport == "json":
            partial_json = json.loads(answer).get("partialSuccess", {})
            return int(partial_json.get("rejectedSpans", 0)), partial_json.get("errorMessage", "")
        response.ParseFromString(answer)
        partial = response.partial_success
    return partial.rejected_spans, partial.error_message


def _rows(url: str, session: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT model, input_tokens, output_tokens, cost_usd, counted FROM tokenscale.usage_events "
            "WHERE session_id = %s",
            (session,),
        ).fetchall()


BAD_SPAN_ATTRIBUTES: dict[str, tuple[dict[str, Any], str]] = {
    "nul-in-model": ({"gen_ai.request.model": "gpt\x00-4o"}, "model: contains a NUL"),
    # Attributes that are stored (``tokenscale.*``): what the ledger does not store is not checked.
    "nul-in-free-attribute": (
        {"tokenscale.meta.note": "a\x00b"},
        "attribute 'tokenscale.meta.note': contains a NUL",
    ),
    "nul-in-attribute-name": ({"app\x00note": "x"}, "attribute name"),
    "nul-in-nested-value": (
        {"tokenscale.meta.list": ["ok", "b\x00d"]},
        "attribute 'tokenscale.meta.list': contains a NUL",
    ),
    "long-model": ({"gen_ai.request.model": LONG}, "model: 3000 bytes"),
    "long-session": ({"session.id": LONG}, "session_id: 3000 bytes"),
    "long-user-email": ({"user.email": LONG}, "user_email: 3000 bytes"),
    "long-response-id": ({"gen_ai.response.id": LONG}, "request_id: 3000 bytes"),
    "long-multibyte-model": ({"gen_ai.request.model": "é" * 300}, "model: 600 bytes"),
    "operation-array": ({"gen_ai.operation.name": ["chat", "x"]}, "'gen_ai.operation.name': an array"),
    "operation-kvlist": ({"gen_ai.operation.name": {"a": "b"}}, "'gen_ai.operation.name': a key-value list"),
    "model-array": ({"gen_ai.request.model": ["a"]}, "'gen_ai.request.model': an array"),
    "cost-overflow": ({"gen_ai.usage.cost": 1e10}, "cost: 10000000000.0 USD"),
    "cost-above-limit": ({"gen_ai.usage.cost": 2e6}, "cost: 2000000.0 USD"),
    "negative-tokens": ({"gen_ai.usage.input_tokens": -5}, "negative"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPAN_ATTRIBUTES))
def test_bad_span_is_rejected_naming_the_field_and_good_one_stored(
    stack: tuple[Sender, str], case: str
) -> None:
    sender, url = stack
    attrs, message = BAD_SPAN_ATTRIBUTES[case]
    good_session = f"good-{case}-{secrets.token_hex(4)}"
    document = spans_export(
        [
            semconv_span({"session.id": good_session, "gen_ai.usage.input_tokens": 7}),
            semconv_span({"session.id": f"bad-{case}", **attrs}),
        ]
    )
    answers = list(sender.every_transport("traces", document))
    assert [t for t, _, _ in answers] == ["json", "protobuf", "grpc"]
    for transport, code, answer in answers:
        rejected, error = _partial(transport, code, answer)
        assert rejected == 1, (transport, error)
        assert message in error, (transport, error)
    # Sent three times with the same ids: stored once, exactly as sent.
    assert _rows(url, good_session) == [("gpt-4o", 7, 20, Decimal("0.0002175000"), True)]
    assert _rows(url, f"bad-{case}") == []


def test_a_nul_in_an_attribute_the_ledger_does_not_store_is_not_looked_at(
    stack: tuple[Sender, str],
) -> None:
    """An attribute that is neither stored, read by the mapping nor priced is never read from the
    request (docs/mapping.md): a NUL in it rejects nothing, and nothing of it is stored."""
    sender, url = stack
    session = f"free-nul-{secrets.token_hex(4)}"
    document = spans_export(
        [semconv_span({"session.id": session, "app.note": "a\x00b", "app.list": ["ok", "b\x00d"]})]
    )
    for transport, code, answer in sender.every_transport("traces", document):
        assert _partial(transport, code, answer) == (0, ""), transport
    assert _rows(url, session) == [("gpt-4o", 100, 20, Decimal("0.0004500000"), True)]
    with psycopg.connect(url) as conn:
        stored = conn.execute(
            "SELECT attributes, trace_id IS NOT NULL FROM tokenscale.usage_events WHERE session_id = %s",
            (session,),
        ).fetchall()
    # Nothing of the free attributes: the trace id is in its own column (migration 0081).
    assert [(sorted(a), traced) for (a, traced) in stored] == [([], True)]


def test_overlong_service_name_in_the_resource_rejects_its_items(stack: tuple[Sender, str]) -> None:
    sender, url = stack
    session = f"svc-{secrets.token_hex(4)}"
    document = spans_export([semconv_span({"session.id": session})], {"service.name": LONG})
    for transport, code, answer in sender.every_transport("traces", document):
        rejected, error = _partial(transport, code, answer)
        assert (rejected, "service_name: 3000 bytes" in error) == (1, True), (transport, error)
    assert _rows(url, session) == []


def test_long_free_attribute_is_cut_and_the_item_kept(stack: tuple[Sender, str]) -> None:
    sender, url = stack
    session = f"cut-{secrets.token_hex(4)}"
    value = "x" * (DEFAULT_LIMITS.max_attribute_bytes + 100)
    document = spans_export([semconv_span({"session.id": session, "tokenscale.meta.blob": value})])
    for transport, code, answer in sender.every_transport("traces", document):
        rejected, error = _partial(transport, code, answer)
        assert rejected == 0
        cut = f"attribute 'tokenscale.meta.blob' cut to {DEFAULT_LIMITS.max_attribute_bytes} bytes"
        assert cut in error, transport
    with psycopg.connect(url) as conn:
        stored = conn.execute(
            "SELECT length(attributes->>'tokenscale.meta.blob') FROM tokenscale.usage_events "
            "WHERE session_id = %s",
            (session,),
        ).fetchall()
    assert stored == [(DEFAULT_LIMITS.max_attribute_bytes,)]


def test_claude_code_cost_overflow_is_rejected(stack: tuple[Sender, str]) -> None:
    sender, url = stack
    session = f"cc-{secrets.token_hex(4)}"
    document = claude_cost_metric(1e11, session)
    answers = list(sender.every_transport("metrics", document))
    assert len(answers) == 3
    for transport, code, answer in answers:
        if transport == "grpc":
            assert code == grpc.StatusCode.OK
            partial = answer.partial_success
            assert partial.rejected_data_points == 1
            assert "cost: 100000000000.0 USD" in partial.error_message
        else:
            assert code == 200, answer
    with psycopg.connect(url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM tokenscale.usage_events WHERE session_id = %s", (session,)
        ).fetchone() == (0,)


@pytest.mark.parametrize(
    "raw",
    [
        '{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"a\\ud800"}}]}}]}',
        '{"resourceSpans":[{"resource":{"attributes":[{"key":"k\\udfff","value":{"stringValue":"a"}}]}}]}',
        '{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"\\ud83d","traceId":"zz\\ud800"}]}]}]}',
        '{"resourceSpans":"\\ud800"}',
        '{"\\ud800":1}',
        '"\\ud800"',
        '{"resourceSpans":[{"resource":{"attributes":[{"key":"a","value":{"intValue":"1e400"}}]}}]}',
    ],
)
def test_lone_surrogates_and_bad_json_are_answered_400(stack: tuple[Sender, str], raw: str) -> None:
    sender, _ = stack
    code, body = sender.post("traces", raw.encode(), "application/json")
    assert code == 400
    status = json.loads(body)
    assert status["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status["message"]
    Status(message=status["message"])  # valid text


def test_a_client_going_away_mid_body_is_not_an_error(
    stack: tuple[Sender, str], caplog: pytest.LogCaptureFixture
) -> None:
    sender, _ = stack
    with caplog.at_level(logging.DEBUG):
        with socket.create_connection(("127.0.0.1", sender.http_port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                b"Content-Length: 100000\r\n\r\n" + b"\x0a" * 1000
            )
        time.sleep(0.5)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("went away" in r.getMessage() for r in caplog.records)


# -- generated hostile values --------------------------------------------------------------------------

_IDENTITY = [
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "session.id",
    "user.email",
    "user.id",
    "gen_ai.conversation.id",
    "gen_ai.response.id",
    "error.type",
    "app.free",
]
_USAGE = ["gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.usage.cost"]

_scalars = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=500, max_size=700),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
_values = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=3),
    st.dictionaries(st.text(max_size=5), _scalars, max_size=3),
)
_attributes = st.dictionaries(st.sampled_from(_IDENTITY + _USAGE), _values, max_size=5)

#: Every example is sent over the three transports; the suite's volume comes from here.
_EXAMPLES = 2200


@settings(
    max_examples=_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(attrs=_attributes, resource=st.dictionaries(st.sampled_from(["service.name", "user.email"]), _values))
def test_generated_values_never_give_5xx(
    stack: tuple[Sender, str], attrs: dict[str, Any], resource: dict[str, Any]
) -> None:
    sender, _ = stack
    good = f"gen-{secrets.token_hex(6)}"
    document = spans_export([semconv_span({"session.id": good}), semconv_span(attrs, span_id=None)], resource)
    for transport, code, answer in sender.every_transport("traces", document):
        if transport == "grpc":
            assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (code, answer)
        else:
            assert code in (200, 400), (transport, code, answer)


#: Mutated captured exports sent by the next test, alternately over OTLP/HTTP protobuf and gRPC.
_MUTATIONS = 14_000


def _mutate(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    kind = rng.randrange(4)
    if kind == 0:  # flip a few bytes
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:  # truncate
        del data[rng.randrange(len(data)) :]
    elif kind == 2:  # insert junk
        at = rng.randrange(len(data))
        data[at:at] = rng.randbytes(rng.randint(1, 16))
    else:  # a varint or length made huge
        at = rng.randrange(len(data))
        data[at : at + 1] = b"\xff\xff\xff\xff\x0f"
    return bytes(data)


def test_mutated_captures_never_give_5xx(stack: tuple[Sender, str]) -> None:
    sender, _ = stack
    bodies = [
        (signal, raw.read_bytes())
        for label in ("claude-httpproto", "gemini-grpc", "claude-tools-slow-delta-grpc")
        for signal, raw, _ in capture_bodies(label)
        if raw.suffix == ".pb"
    ]
    assert len(bodies) >= 5
    rng = random.Random(20261203)
    answers: dict[Any, int] = {}
    for i in range(_MUTATIONS):
        signal, body = bodies[i % len(bodies)]
        mutated = _mutate(rng, body)
        if i % 2:
            code: Any = sender.grpc(signal, mutated)[0]
            assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), code
        else:
            code = sender.post(signal, mutated, "application/x-protobuf")[0]
            assert code in (200, 400), code
        answers[code] = answers.get(code, 0) + 1
    assert sum(answers.values()) == _MUTATIONS


def test_after_the_generated_values_no_row_is_negative_or_partial(stack: tuple[Sender, str]) -> None:
    """Runs after the generated and mutated exports (file order): what was stored is whole and in
    range, after at least 20,000 hostile requests.

    Counted rows are never negative. An aggregate carrier's increment, stored uncounted as evidence,
    may take from one column what it adds to another (a cached-input point: input -N, cache read +N,
    and its cost at the difference of the two rates); its prompt and every other part are not.
    """
    sender, url = stack
    with psycopg.connect(url) as conn:
        offending = conn.execute(
            "SELECT source, counted, tool, model, requests, input_tokens, cache_read_tokens, "
            "cache_write_tokens, output_tokens, reasoning_tokens, cost_usd, cost_source, time "
            "FROM tokenscale.usage_events WHERE "
            "(counted AND (input_tokens < 0 OR cost_usd < 0)) "
            "OR input_tokens + cache_read_tokens + cache_write_tokens < 0 "
            "OR output_tokens < 0 OR cache_read_tokens < 0 OR cache_write_tokens < 0 OR reasoning_tokens < 0 "
            "OR requests < 0 OR tenant IS NULL OR stream IS NULL"
        ).fetchall()
        negative_totals = conn.execute(
            "SELECT count(*) FROM tokenscale.usage_daily WHERE input_tokens < 0 OR output_tokens < 0 "
            "OR cache_read_tokens < 0 OR cache_write_tokens < 0 OR reasoning_tokens < 0 OR cost_usd < 0 "
            "OR requests < 0"
        ).fetchone()
        total = conn.execute("SELECT count(*) FROM tokenscale.usage_events").fetchone()
    assert offending == []
    assert negative_totals == (0,)
    assert total is not None and total[0] > 0
    assert sender.sent >= 20_000
