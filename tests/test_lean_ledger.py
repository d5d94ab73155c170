"""A lean ledger: usage_events keeps the attributes something reads back, the rest only when asked;
the indexes are those of the read paths; compressed chunks answer the APIs exactly."""

from __future__ import annotations

import importlib
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from dbservers import Server, fresh_database
from hostile import semconv_span, spans_export
from otlp_clients import post
from test_serve_workers import serving
from tokenscale.api import ai_metrics, usage_records
from tokenscale.api._values import Params
from tokenscale.api.ai_metrics import list_ai_metrics, parse_ai_metrics_query
from tokenscale.api.budgets import Budget, budget_status
from tokenscale.api.usage_records import list_usage_records, usage_series
from tokenscale.mapping import MappingResult, UsageEvent
from tokenscale.store import migrate, prices
from tokenscale.store.attributes import kept_attributes
from tokenscale.store.refresh import materialize_history
from tokenscale.store.retention import apply_policies
from tokenscale.store.writer import UsageWriter, open_pool
from usage_db import assert_rollups_match_events

#: Attributes no API, report or price reads back: stored only with keep_attributes.
_UNREAD: dict[str, Any] = {
    "host.name": "build-7",  # a resource attribute
    "telemetry.sdk.name": "opentelemetry",
    "gen_ai.request.temperature": 0.2,
    "gen_ai.usage.input_tokens": 120,  # in input_tokens already
    "gen_ai.usage.cache_read.input_tokens": 20,  # in cache_read_tokens already
    "gen_ai.response.finish_reasons": ["stop"],
}
_TRACE = "0af7651916cd43dd8448eb211c80319c"
#: Attributes read back: always stored (the trace id and the environment in their own columns).
_READ: dict[str, Any] = {
    "tokenscale.meta.bot_id": "bot-1",
    "tokenscale.meta.organization_name": "Acme",
    "otel.trace_id": _TRACE,
    "deployment.environment.name": "production",
    "gen_ai.usage.audio.seconds": 1.5,  # a unit the price book can price
    "prompt.id": "p-1",
}


def test_every_key_the_apis_read_is_kept_and_nothing_else() -> None:
    read_by_apis = {
        *ai_metrics._META_FILTERS.values(),
        *ai_metrics._EXTRA_KEYS,
        ai_metrics._OTEL_TRACE_ID,
        "tokenscale.meta.trace_id",
        "tokenscale.meta.trace_type",
        "tokenscale.meta.billing_skipped",
        "deployment.environment",
        "deployment.environment.name",
        *(key for _, key in usage_records.RELATION_FILTERS.values() if key is not None),
        *usage_records.PROMPT_ID_KEYS,
        "tokenscale.meta.any key an app sets",
        "tokenscale.tokens_split",
    }
    attrs = {key: n for n, key in enumerate(sorted(read_by_apis))}
    assert kept_attributes(attrs) == attrs
    assert kept_attributes({**_UNREAD, **_READ}) == _READ
    assert kept_attributes(_UNREAD) == {}


def _event(tenant: str, n: int) -> UsageEvent:
    return UsageEvent(
        time_ns=1_795_392_000 * 10**9 + n * 10**9,
        tenant=tenant,
        carrier="gen_ai.span",
        rank=3,
        tool="app",
        stream="app",
        service_name="app",
        dedupe_key=n.to_bytes(16, "big"),
        requests=1,
        input_tokens=100,
        cache_read_tokens=20,
        output_tokens=7,
        request_id=f"req-{n}",
        attributes={**_UNREAD, **_READ},
    )


def test_writer_stores_only_read_attributes_unless_asked(db_url: str) -> None:
    migrate(db_url)
    pool = open_pool(db_url)
    try:
        UsageWriter(pool).write(MappingResult(events=[_event("lean", 1)]))
        UsageWriter(pool, keep_attributes=True).write(MappingResult(events=[_event("full", 2)]))
    finally:
        pool.close()
    with psycopg.connect(db_url) as conn:
        rows = {
            tenant: (attributes, bytes(trace_id), environment)
            for tenant, attributes, trace_id, environment in conn.execute(
                "SELECT tenant, attributes, trace_id, environment FROM tokenscale.usage_events "
                "ORDER BY tenant"
            )
        }
        totals = conn.execute(
            "SELECT tenant, input_tokens, cache_read_tokens, output_tokens FROM tokenscale.usage_events "
            "ORDER BY tenant"
        ).fetchall()
    # The trace id (16 bytes) and the environment are columns of their own (migration 0081).
    in_columns = ("otel.trace_id", "deployment.environment.name")
    read = {k: v for k, v in _READ.items() if k not in in_columns}
    assert rows == {
        "lean": (read, bytes.fromhex(_TRACE), "production"),
        "full": ({**_UNREAD, **read}, bytes.fromhex(_TRACE), "production"),
    }
    assert totals == [("full", 100, 20, 7), ("lean", 100, 20, 7)]


def test_usage_events_indexes_are_the_read_paths(db_url: str) -> None:
    migrate(db_url)
    with psycopg.connect(db_url) as conn:
        names = {
            row[0]
            for row in conn.execute(
                "SELECT indexname FROM pg_indexes "
                "WHERE schemaname = 'tokenscale' AND tablename = 'usage_events'"
            )
        }
        methods = conn.execute(
            "SELECT c.relname, am.amname, c.reloptions FROM pg_class c JOIN pg_am am ON am.oid = c.relam "
            "WHERE c.oid IN ('tokenscale.usage_events_read_request'::regclass, "
            "'tokenscale.usage_events_read_trace'::regclass, "
            "'tokenscale.usage_events_read_attributes'::regclass) "
            "ORDER BY 1"
        ).fetchall()
    # TimescaleDB adds its own time index to a hypertable (the continuous aggregates' refreshes
    # and chunk-wise time scans use it).
    assert names - {"usage_events_time_idx"} == {
        "usage_events_dedupe",
        "usage_events_read_time",
        "usage_events_read_request",
        "usage_events_read_conversation",
        "usage_events_read_attributes",
        "usage_events_read_listed",
        "usage_events_read_trace",
    }
    assert methods == [
        ("usage_events_read_attributes", "gin", ["fastupdate=off"]),
        ("usage_events_read_request", "btree", None),  # over hashtextextended(request_id, 0)
        ("usage_events_read_trace", "btree", None),
    ]


def _api_answers(url: str, now: datetime) -> dict[str, Any]:
    """What the listings, the usage series and the budget check answer for tenant ``t``."""
    answers: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as conn:  # as the API's pool connections are
        for name, pairs in {
            "all": [],
            "org": [("organizationName", "Acme")],
            "transaction": [("transactionId", "req-7")],
            "trace": [("traceId", _TRACE)],
        }.items():
            query = parse_ai_metrics_query(
                Params.from_pairs([("teamId", "t"), ("size", "1000"), *pairs]), "completions"
            )
            page = list_ai_metrics(conn, "t", query)
            answers[f"ai_metrics {name}"] = (
                page.total_elements,
                sorted((i["transactionId"], i["inputTokenCount"], i["outputTokenCount"]) for i in page.items),
                sorted(page.items, key=lambda i: str(i["id"])),
            )
        for name, pairs in {
            "bot": [("botId", "bot-1")],
            "message": [("messageId", "req-3")],
            "all": [],
        }.items():
            records = list_usage_records(conn, "t", Params.from_pairs([("take", "500"), *pairs]))
            answers[f"usage_records {name}"] = sorted(
                (r["messageId"], r["count"], r.get("botId")) for r in records["items"]
            )
        series = usage_series(conn, "t", now)
        answers["series"] = {k: [p["total"] for p in v] for k, v in series.items() if isinstance(v, list)}
        status = budget_status(conn, "t", Budget("t", 10**9, 30))
        answers["budget"] = status.tokens_used
    return answers


def test_api_answers_are_exact_on_compressed_chunks(community_server: Server) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    events = []
    for n in range(1, 41):
        event = _event("t", n)
        # Spread over the last 10 days, two UTC days per chunk boundary at least.
        event.time_ns = int((now - timedelta(hours=6 * n)).timestamp()) * 10**9
        if n % 3:
            event.attributes = {k: v for k, v in event.attributes.items() if k != "tokenscale.meta.bot_id"}
        events.append(event)
    with fresh_database(community_server) as url:
        migrate(url)
        pool = open_pool(url)
        try:
            UsageWriter(pool).write(MappingResult(events=events))
        finally:
            pool.close()
        with psycopg.connect(url, autocommit=True) as conn:
            materialize_history(conn)
        before = _api_answers(url, now)
        with psycopg.connect(url, autocommit=True) as conn:
            report = apply_policies(conn, migrate(url).backend, retention_days=0, compress_after_days=1)
            assert report.compression == "after 1 days (columnstore policy)"
            chunks = conn.execute(
                # The policy's job may have compressed some already.
                "SELECT count(compress_chunk(c, if_not_compressed => true)) "
                "FROM show_chunks('tokenscale.usage_events') c"
            ).fetchone()
            compressed = conn.execute(
                "SELECT count(*) FROM timescaledb_information.chunks "
                "WHERE hypertable_name = 'usage_events' AND NOT is_compressed"
            ).fetchone()
            materialize_history(conn)
        after = _api_answers(url, now)
        assert_rollups_match_events(url)
    assert chunks is not None and chunks[0] >= 10
    assert compressed == (0,)
    assert after == before
    # And the answers are the events' own: 40 requests of 100 + 20 + 7 tokens.
    assert before["ai_metrics all"][0] == 40
    assert before["ai_metrics org"][0] == 40
    assert before["ai_metrics transaction"][:2] == (1, [("req-7", 100, 7)])
    assert before["ai_metrics trace"][0] == 40
    assert [m for m, _, _ in before["usage_records bot"]] == sorted(f"req-{n}" for n in range(3, 41, 3))
    assert before["usage_records message"] == [("req-3", 127, "bot-1")]
    assert len(before["usage_records all"]) == 40
    assert before["budget"] == 40 * 127
    assert sum(before["series"]["tokens"]) == 40 * 127


def test_serve_stores_every_attribute_when_the_operator_asks(
    pg_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``TOKENSCALE_KEEP_ATTRIBUTES=1`` reaches the writers of ``serve`` (here its workers)."""
    monkeypatch.setenv("TOKENSCALE_KEEP_ATTRIBUTES", "1")
    now_ns = int(time.time()) * 10**9
    document = spans_export(
        [semconv_span({"session.id": "keep-1", "gen_ai.request.temperature": 0.2}, time_ns=now_ns)],
        resource={"host.name": "build-7"},
    )
    with fresh_database(pg_server) as url, serving(url, 2) as service:
        status, _, _ = post(
            service.http_port, "/v1/traces", json.dumps(document).encode(), "application/json"
        )
        assert status == 200
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT attributes->>'host.name', attributes->'gen_ai.request.temperature', "
                "attributes->'gen_ai.usage.input_tokens', input_tokens "
                "FROM tokenscale.usage_events WHERE session_id = 'keep-1'"
            ).fetchone()
    assert row == ("build-7", 0.2, 100, 100)


def _traced(n: int, trace: str, environment: str, **attributes: Any) -> UsageEvent:
    event = _event("t", n)
    event.attributes = {"otel.trace_id": trace, "deployment.environment.name": environment, **attributes}
    return event


def test_trace_id_and_environment_read_alike_from_columns_and_older_rows(db_url: str) -> None:
    """Rows stored before migration 0081 keep the trace id and the environment in ``attributes``;
    the AI metrics listing filters and answers them exactly as it does the columns of newer rows,
    and its traceId filter is answered by indexes (the hash index on the column, the GIN index on
    the older rows' attributes)."""
    migrate(db_url)
    older, newer, other = "11" * 16, "22" * 16, "33" * 16
    events = [
        _traced(1, older, "staging"),
        _traced(2, newer, "production"),
        _traced(3, other, "production", **{"tokenscale.meta.trace_id": "app-trace"}),  # the app's own wins
        _traced(4, "not-hex", "production"),  # kept in attributes as it is
    ]
    pool = open_pool(db_url)
    try:
        UsageWriter(pool).write(MappingResult(events=events))
    finally:
        pool.close()
    with psycopg.connect(db_url, autocommit=True) as conn:
        # Row 1 as stored before migration 0081.
        conn.execute(
            "UPDATE tokenscale.usage_events SET attributes = attributes || jsonb_build_object("
            "'otel.trace_id', encode(trace_id, 'hex'), 'deployment.environment.name', environment), "
            "trace_id = NULL, environment = NULL WHERE request_id = 'req-1'"
        )
        stored = conn.execute(
            "SELECT request_id, trace_id IS NOT NULL, environment, attributes ? 'otel.trace_id' "
            "FROM tokenscale.usage_events ORDER BY request_id"
        ).fetchall()

        def listed(**filters: str) -> list[tuple[Any, ...]]:
            query = parse_ai_metrics_query(
                Params.from_pairs([("teamId", "t"), *filters.items()]), "completions"
            )
            page = list_ai_metrics(conn, "t", query)
            return sorted((i["transactionId"], i["traceId"], i["environment"]) for i in page.items)

        everything = listed()
        by_trace = {t: listed(traceId=t) for t in (older, newer.upper(), other, "app-trace", "not-hex")}
        by_environment = {e: listed(environment=e) for e in ("staging", "PRODUCTION")}
        # Index-backed: among 5,000 more rows of other traces (some stored the older way), the filter
        # is answered by the indexes (a BitmapOr of the hash index and the GIN index).
        conn.execute(
            "INSERT INTO tokenscale.usage_events SELECT (jsonb_populate_record(e, jsonb_build_object("
            "'dedupe_key', 'bulk-' || n, 'request_id', 'bulk-' || n, "
            "'trace_id', CASE WHEN n % 10 > 0 THEN decode(lpad(to_hex(n), 32, '0'), 'hex') END, "
            "'attributes', CASE WHEN n % 10 = 0 "
            "THEN jsonb_build_object('otel.trace_id', lpad(to_hex(n), 32, '0')) ELSE '{}' END))).* "
            "FROM tokenscale.usage_events e, generate_series(1, 5000) n WHERE e.request_id = 'req-2'"
        )
        conn.execute("ANALYZE tokenscale.usage_events")
        query = parse_ai_metrics_query(
            Params.from_pairs([("teamId", "t"), ("traceId", newer)]), "completions"
        )
        (trace_filter,) = [c for c in query.conditions if "trace_id" in c.as_string(conn)]
        plan = "\n".join(
            str(r[0])
            for r in conn.execute(
                sql.SQL(
                    "EXPLAIN SELECT e.request_id FROM tokenscale.usage_events e WHERE e.counted AND {}"
                ).format(trace_filter),
                query.params,
            )
        )
        request_plan = "\n".join(
            str(r[0])
            for r in conn.execute(
                sql.SQL(
                    "EXPLAIN SELECT e.request_id FROM tokenscale.usage_events e WHERE e.counted AND {}"
                ).format(ai_metrics.REQUEST_ID_EQUALS.format(sql.Placeholder("id"))),
                {"id": "bulk-77"},
            )
        )
        assert listed(transactionId="bulk-77")[0][0] == "bulk-77"
    assert stored == [
        ("req-1", False, None, True),
        ("req-2", True, "production", False),
        ("req-3", True, "production", False),
        ("req-4", False, "production", True),
    ]
    assert everything == [
        ("req-1", older, "STAGING"),
        ("req-2", newer, "PRODUCTION"),
        ("req-3", "app-trace", "PRODUCTION"),
        ("req-4", "not-hex", "PRODUCTION"),
    ]
    assert by_trace == {
        older: [("req-1", older, "STAGING")],
        newer.upper(): [("req-2", newer, "PRODUCTION")],
        other: [],  # the app's own trace id wins
        "app-trace": [("req-3", "app-trace", "PRODUCTION")],
        "not-hex": [("req-4", "not-hex", "PRODUCTION")],
    }
    assert by_environment == {
        "staging": [("req-1", older, "STAGING")],
        "PRODUCTION": [
            ("req-2", newer, "PRODUCTION"),
            ("req-3", "app-trace", "PRODUCTION"),
            ("req-4", "not-hex", "PRODUCTION"),
        ],
    }
    # usage_events_read_trace (a B-tree over the trace id's hash) and the GIN index, no sequential scan.
    assert "Index Cond: (hashtextextended(encode(trace_id, 'hex'::text)" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert "Index Cond: (hashtextextended(request_id, '0'::bigint)" in request_plan, request_plan
    assert "Seq Scan" not in request_plan, request_plan


def test_service_name_is_stored_once(db_url: str) -> None:
    """Where a row's service name is its stream's first part, it is stored as NULL (migration 0082)
    and read back from the stream; other service names are stored as they are."""
    migrate(db_url)
    instance, own, plain = _event("t", 1), _event("t", 2), _event("t", 3)
    instance.stream, instance.service_name = "support-bot\x1fi-1", "support-bot"
    own.stream, own.service_name = "tokenscale.chat_usage", "tokenscale-api"
    plain.stream, plain.service_name = "app", "app"
    pool = open_pool(db_url)
    try:
        UsageWriter(pool).write(MappingResult(events=[instance, own, plain]))
    finally:
        pool.close()
    with psycopg.connect(db_url) as conn:
        stored = conn.execute(
            "SELECT request_id, stream, service_name FROM tokenscale.usage_events ORDER BY request_id"
        ).fetchall()
        repriced = conn.execute(
            prices._SELECT_FOR_REPRICE + " ORDER BY request_id",
            {
                "since": datetime(2000, 1, 1, tzinfo=UTC),
                "until": datetime(2100, 1, 1, tzinfo=UTC),
                "listed": "gen_ai.agent_span",
                "tenant": "t",
                "model": None,
            },
        ).fetchall()
    assert stored == [
        ("req-1", "support-bot\x1fi-1", None),
        ("req-2", "tokenscale.chat_usage", "tokenscale-api"),
        ("req-3", "app", None),
    ]
    assert [(r[7], r[8]) for r in repriced] == [
        ("support-bot\x1fi-1", "support-bot"),
        ("tokenscale.chat_usage", "tokenscale-api"),
        ("app", "app"),
    ]


def test_migrations_0081_to_0083_upgrade_a_database_with_rows(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database at migration 0080 with rows (on TimescaleDB community: in compressed chunks) is
    upgraded in place; its older rows and the rows written after answer alike."""
    migrate_module = importlib.import_module("tokenscale.store.migrate")  # the module, not the function
    every = migrate_module.available_migrations()
    monkeypatch.setattr(migrate_module, "available_migrations", lambda: [m for m in every if m.version <= 80])
    backend = migrate(db_url).backend
    now = datetime.now(UTC).replace(microsecond=0)
    with psycopg.connect(db_url, autocommit=True) as conn:
        if backend == "postgres":
            conn.execute(
                "SELECT tokenscale.ensure_partitions(ARRAY[%s, %s]::date[])",
                ((now - timedelta(days=3, hours=2)).date(), (now - timedelta(days=3, hours=1)).date()),
            )
        for n in (1, 2):  # rows as the writer stored them before migration 0081
            conn.execute(
                "INSERT INTO tokenscale.usage_events (time, tenant, source, rank, counted, tool, stream, "
                "service_name, request_id, requests, input_tokens, output_tokens, attributes, dedupe_key) "
                "VALUES (%s, 't', 'gen_ai.span', 3, true, 'app', 'app\x1fi-1', 'app', %s, 1, 100, 7, %s, %s)",
                (
                    now - timedelta(days=3, hours=n),
                    f"old-{n}",
                    Jsonb({"otel.trace_id": f"{n}" * 32, "deployment.environment.name": "staging"}),
                    f"old-{n}".encode(),
                ),
            )
        if backend == "timescaledb-community":
            conn.execute(
                "ALTER TABLE tokenscale.usage_events SET (timescaledb.enable_columnstore = true, "
                "timescaledb.segmentby = 'tenant', timescaledb.orderby = 'time DESC')"
            )
            conn.execute(
                "SELECT compress_chunk(c, if_not_compressed => true) "
                "FROM show_chunks('tokenscale.usage_events') c"
            )
    monkeypatch.setattr(migrate_module, "available_migrations", lambda: every)
    migrate(db_url)
    new = _traced(3, "33" * 16, "production")
    new.time_ns = int((now - timedelta(hours=1)).timestamp()) * 10**9
    new.request_id = "new-3"
    pool = open_pool(db_url)
    try:
        UsageWriter(pool).write(MappingResult(events=[new]))
    finally:
        pool.close()
    with psycopg.connect(db_url, autocommit=True) as conn:

        def listed(**filters: str) -> list[tuple[Any, ...]]:
            query = parse_ai_metrics_query(
                Params.from_pairs([("teamId", "t"), *filters.items()]), "completions"
            )
            return sorted(
                (i["transactionId"], i["traceId"], i["environment"])
                for i in list_ai_metrics(conn, "t", query).items
            )

        answers = {
            "all": listed(),
            "trace old": listed(traceId="1" * 32),
            "trace new": listed(traceId="33" * 16),
            "transaction old": listed(transactionId="old-2"),
            "transaction new": listed(transactionId="new-3"),
            "staging": listed(environment="staging"),
        }
        message = list_usage_records(conn, "t", Params.from_pairs([("messageId", "old-1")]))["items"]
        service = conn.execute(
            "SELECT request_id, service_name FROM tokenscale.usage_events ORDER BY request_id"
        ).fetchall()
    assert answers == {
        "all": [
            ("new-3", "33" * 16, "PRODUCTION"),
            ("old-1", "1" * 32, "STAGING"),
            ("old-2", "2" * 32, "STAGING"),
        ],
        "trace old": [("old-1", "1" * 32, "STAGING")],
        "trace new": [("new-3", "33" * 16, "PRODUCTION")],
        "transaction old": [("old-2", "2" * 32, "STAGING")],
        "transaction new": [("new-3", "33" * 16, "PRODUCTION")],
        "staging": [("old-1", "1" * 32, "STAGING"), ("old-2", "2" * 32, "STAGING")],
    }
    assert [m["messageId"] for m in message] == ["old-1"]
    assert service == [("new-3", None), ("old-1", "app"), ("old-2", "app")]
