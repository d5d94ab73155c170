"""Fixtures of the API tests: a migrated database and the API served over HTTP and gRPC."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from api_servers import ApiServers

from tokenscale.mapping import UsageEvent
from tokenscale.store import migrate

NS_PER_DAY = 86_400 * 10**9


@pytest.fixture
def api_url(db_url: str) -> str:
    """A fresh database with the tokenscale schema."""
    migrate(db_url)
    return db_url


@pytest.fixture
def api(api_url: str) -> Iterator[ApiServers]:
    """The API on real servers (HTTP and gRPC) over ``api_url``; anonymous access refused."""
    servers = ApiServers(api_url).start()
    try:
        yield servers
    finally:
        servers.stop()


_counter = [0]


def usage_event(tenant: str, *, age_days: float = 0.0, **fields: Any) -> UsageEvent:
    """A per-request usage event (rank 1, its own stream) ``age_days`` old, as the mapping makes them."""
    _counter[0] += 1
    time_ns = time.time_ns() - int(age_days * NS_PER_DAY)
    fields.setdefault("requests", 1)
    stream = fields.pop("stream", f"s{_counter[0]}")
    return UsageEvent(
        time_ns=time_ns,
        tenant=tenant,
        carrier=fields.pop("carrier", "gen_ai.span"),
        rank=fields.pop("rank", 1),
        tool=fields.pop("tool", "my-service"),
        stream=stream,
        service_name=fields.pop("service_name", "my-service"),
        dedupe_key=hashlib.blake2b(f"{tenant}/{_counter[0]}/{time_ns}".encode(), digest_size=16).digest(),
        **fields,
    )


@pytest.fixture
def make_event() -> Callable[..., UsageEvent]:
    """:func:`usage_event`."""
    return usage_event
