"""ChatBotKit's usage records as its clients read them: a cursor walker over every page, meta filters on
every stored key (spaces included), and meta values exact over gRPC (JSON text beside the Struct)."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import quote

import grpc
import pytest
from api_servers import ApiServers
from seed_clients import CursorWalker

from tokenscale.api.gen.tokenscale.v1 import usage_api_pb2 as pb
from tokenscale.mapping import UsageEvent

META = "tokenscale.meta."
BIG = 2**53 + 1  # not representable as a double


def test_a_cursor_walker_reads_every_record_once(
    api: ApiServers, make_event: Callable[..., UsageEvent]
) -> None:
    api.write(
        [make_event("acme", age_days=i / 10, request_id=f"m{i}", input_tokens=i + 1) for i in range(23)]
    )
    key = api.key("acme", ["read"])
    walker = CursorWalker(api.session, {"Authorization": f"Bearer {key}"})
    for order in ("desc", "asc"):
        items = walker.items(f"{api.base}/api/v1/usage/list", {"take": 5, "order": order})
        expected = [f"m{i}" for i in range(23)]  # m0 is the newest
        assert [i["messageId"] for i in items] == (expected if order == "desc" else expected[::-1])
        assert sum(i["count"] for i in items) == sum(range(1, 24))


def test_meta_filters_reach_every_stored_key(api: ApiServers, make_event: Callable[..., UsageEvent]) -> None:
    api.write(
        [
            make_event(
                "acme",
                request_id="m1",
                input_tokens=1,
                attributes={META + "customer tier": "gold", META + "a[b]": "x", META + "über/ключ": 7},
            ),
            make_event(
                "acme", request_id="m2", input_tokens=1, attributes={META + "customer tier": "silver"}
            ),
        ]
    )
    key = api.key("acme", ["read"])
    walker = CursorWalker(api.session, {"Authorization": f"Bearer {key}"})

    def ids(name: str, value: str) -> list[str]:
        url = f"{api.base}/api/v1/usage/list?{quote(f'meta[{name}]')}={quote(value)}"
        return [i["messageId"] for i in walker.items(url)]

    assert ids("customer tier", "gold") == ["m1"]
    assert ids("customer tier", "silver") == ["m2"]
    assert ids("a[b]", "x") == ["m1"]
    assert ids("über/ключ", "7") == ["m1"]
    # Keys nothing stores (a NUL cannot be stored) match nothing; only an overlong key is refused.
    assert ids("odd\x01key", "1") == []
    assert ids("nul\x00key", "1") == []
    refused = api.http("GET", "/api/v1/usage/list?" + quote("meta[" + "k" * 1001 + "]") + "=1", key)
    assert refused.status_code == 400 and refused.json()["field"] == "meta"
    reply = api.stub.ListUsageRecords(
        pb.ListUsageRecordsRequest(meta={"customer tier": "gold"}), metadata=api.metadata(key)
    )
    assert [r.message_id for r in reply.items] == ["m1"]


def test_grpc_carries_meta_and_metrics_without_loss(
    api: ApiServers, make_event: Callable[..., UsageEvent]
) -> None:
    meta = {"big": BIG, "ratio": 0.1, "flag": True, "nested": {"n": [1, 2, BIG]}, "text": "é"}
    api.write([make_event("acme", input_tokens=1, attributes={META + k: v for k, v in meta.items()})])
    key = api.key("acme", ["read", "ingest"])
    reply = api.stub.ListUsageRecords(pb.ListUsageRecordsRequest(), metadata=api.metadata(key))
    [record] = reply.items
    assert json.loads(record.meta_json) == meta
    assert record.meta["big"] != BIG  # the Struct rounds it: why meta_json exists
    http_meta = api.http("GET", "/api/v1/usage/list", key).json()["items"][0]["meta"]
    assert http_meta == meta
    # DX metrics in, exact, over gRPC: metrics_json in, metrics_json out.
    metrics = {"lines": BIG, "share": 0.25, "tags": ["a", "b"], "n": -(2**63)}
    stored = api.stub.PushAiToolMetric(
        pb.AiToolMetric(
            email="ann@acme.com",
            date="2025-01-15",
            is_active=True,
            tool="tabnine",
            metrics_json=json.dumps(metrics),
        ),
        metadata=api.metadata(key),
    )
    assert json.loads(stored.metrics_json) == metrics
    rows = api.query("SELECT metrics FROM tokenscale.bespoke_ai_tool_daily_metrics")
    assert rows == [(metrics,)]


def test_grpc_metrics_json_errors_name_the_field(api: ApiServers) -> None:
    key = api.key("acme", ["ingest"])

    def record(tool: str, metrics_json: str | None = None) -> pb.AiToolMetric:
        out = pb.AiToolMetric(email="a@b.c", date="2025-01-15", is_active=True, tool=tool)
        if metrics_json is not None:
            out.metrics_json = metrics_json
        return out

    both = record("t0", "{}")
    both.metrics.update({"a": 1})
    for data, expected in [
        ([both], "data[0].metrics_json: send either metrics or metrics_json, not both"),
        ([record("t0"), record("t1", "{nope")], "data[1].metrics_json: not valid JSON"),
        ([record("t0"), record("t1"), record("t2", "[1]")], "data[2].metrics: "),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            api.stub.PushAllAiToolMetrics(
                pb.PushAllAiToolMetricsRequest(data=data), metadata=api.metadata(key)
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(expected), caught.value.details()
    assert api.query("SELECT count(*) FROM tokenscale.bespoke_ai_tool_daily_metrics") == [(0,)]
