"""The outage spool on its own: durable files, oldest first, kept until the pipeline takes them,
bad ones set aside, bounded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from hostile import semconv_span, spans_export, to_protobuf
from tokenscale.errors import PermanentError, RetryableError
from tokenscale.otlp import REQUEST_TYPES
from tokenscale.receiver.spool import Spool


def _request(session: str) -> Any:
    body = to_protobuf("traces", spans_export([semconv_span({"session.id": session})]))
    return REQUEST_TYPES["traces"].FromString(body)


def test_replay_hands_exports_back_oldest_first_and_stops_at_an_outage(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for session in ("a", "b", "c"):
        assert spool.put("traces", "acme", _request(session))
    assert spool.pending == 3
    assert all((p.stat().st_mode & 0o077) == 0 for p in (tmp_path / "spool").iterdir())
    seen: list[tuple[str, str]] = []

    def down_after_one(signal: str, request: Any, tenant: str) -> None:
        session = request.resource_spans[0].scope_spans[0].spans[0].attributes
        value = next(kv.value.string_value for kv in session if kv.key == "session.id")
        if seen:
            raise RetryableError("database unavailable")
        seen.append((tenant, value))

    assert spool.replay(down_after_one) == 1
    assert seen == [("acme", "a")]
    assert spool.pending == 2
    seen.clear()
    taken: list[str] = []
    assert spool.replay(lambda s, r, t: taken.append(t)) == 2
    assert taken == ["acme", "acme"]
    assert spool.pending == 0
    # A new Spool on the same directory finds what an earlier process left.
    spool.put("traces", "t2", _request("d"))
    assert Spool(tmp_path / "spool").pending == 1


def test_unstorable_exports_are_set_aside_and_the_rest_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.put("traces", "t", _request("poison"))
    spool.put("traces", "t", _request("bad"))
    spool.put("traces", "t", _request("good"))
    calls: list[int] = []

    def export(signal: str, request: Any, tenant: str) -> None:
        calls.append(1)
        if len(calls) == 1:
            cause = psycopg.errors.ProgramLimitExceeded("index row size exceeds btree maximum")
            raise RetryableError("database unavailable") from cause
        if len(calls) == 2:
            raise PermanentError("bad data")

    assert spool.replay(export) == 1
    assert spool.pending == 0
    assert len(list((tmp_path / "spool" / "failed").iterdir())) == 2


def test_a_full_spool_refuses(tmp_path: Path) -> None:
    request = _request("x")
    size = len(request.SerializeToString()) + 2
    spool = Spool(tmp_path / "spool", max_bytes=2 * size)
    assert spool.put("traces", "t", request)
    assert spool.put("traces", "t", request)
    assert not spool.put("traces", "t", request)
    assert spool.pending == 2
    assert spool.replay(lambda s, r, t: None) == 2
    assert spool.put("traces", "t", request)  # room again
