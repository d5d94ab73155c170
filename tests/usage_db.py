"""Reading the ledger back in tests: ``usage_daily`` totals per model, rollups against raw events."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import psycopg
from psycopg import sql

from ground_truth import CACHE_SPLIT_UNREPORTED, TOKEN_KINDS, ground_truth
from tokenscale.mapping.rules import UNIT_USAGE_KEYS

__all__ = [
    "assert_rollups_match_events",
    "daily_by_model",
    "expected_daily",
    "is_community",
    "run_refresh_policies",
]


def is_community(url: str) -> bool:
    """Whether the schema at ``url`` was made for TimescaleDB community (continuous aggregates)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT backend FROM tokenscale.schema_migrations ORDER BY version LIMIT 1"
        ).fetchone()
    return row == ("timescaledb-community",)


def run_refresh_policies(url: str) -> int:
    """Run every refresh policy of the database now, as the job scheduler would (``CALL run_job``);
    the number of policies run (0 where the rollups are tables)."""
    if not is_community(url):
        return 0
    with psycopg.connect(url, autocommit=True) as conn:
        jobs = [
            row[0]
            for row in conn.execute(
                "SELECT job_id FROM timescaledb_information.jobs "
                "WHERE proc_name = 'policy_refresh_continuous_aggregate' ORDER BY job_id"
            )
        ]
        for job in jobs:
            for attempt in range(60):
                try:
                    conn.execute(sql.SQL("CALL run_job({})").format(sql.Literal(job)))
                    break
                except psycopg.errors.LockNotAvailable:
                    # A refresh of the same aggregate is running (the service's refresher or the
                    # scheduler's run of this policy): run it again once that one is done, as the
                    # scheduler would.
                    if attempt == 59:
                        raise
                    time.sleep(0.5)
    assert len(jobs) == 2, jobs  # usage_daily and usage_hourly
    return len(jobs)


def daily_by_model(url: str, *, tenant: str | None = None) -> dict[str, dict[str, int]]:
    """``requests`` and token totals per model from ``tokenscale.usage_daily`` (zero rows left out).

    On TimescaleDB community the totals are read, the refresh policies run, and the totals read
    again: both must agree (materializing never changes what the ledger shows)."""
    before = _daily_by_model(url, tenant)
    if run_refresh_policies(url):
        assert _daily_by_model(url, tenant) == before, "usage_daily changed when the refresh policies ran"
    return before


def _daily_by_model(url: str, tenant: str | None) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(("requests", *TOKEN_KINDS), 0))
    query = (
        "SELECT model, sum(requests), sum(input_tokens), sum(cache_read_tokens), sum(cache_write_tokens), "
        "sum(output_tokens), sum(reasoning_tokens) FROM tokenscale.usage_daily "
        "WHERE %(tenant)s::text IS NULL OR tenant = %(tenant)s GROUP BY model"
    )
    with psycopg.connect(url) as conn:
        for model, *values in conn.execute(query, {"tenant": tenant}):
            if any(values):
                out[model] = dict(zip(("requests", *TOKEN_KINDS), map(int, values), strict=True))
    return dict(out)


def expected_daily(label: str) -> dict[str, Any]:
    """What ``usage_daily`` must hold after replaying ``label``: the ground truth, except that where
    the client never reports the cached part of the prompt only the total input is known."""
    truth = ground_truth(label)
    if label in CACHE_SPLIT_UNREPORTED:
        for row in truth.values():
            row["input_tokens"] += row["cache_read_tokens"]
            row["cache_read_tokens"] = 0
    return truth


_ROLLUP_SUMS = (
    "sum(requests)::bigint, sum(input_tokens)::bigint, sum(cache_read_tokens)::bigint, "
    "sum(cache_write_tokens)::bigint, sum(output_tokens)::bigint, sum(reasoning_tokens)::bigint, "
    "sum(cost_usd), sum({unpriced})::bigint, sum({events})::bigint"
)
_UNPRICED = (
    "CASE WHEN cost_usd IS NULL AND cost_source IS NULL "
    "AND (input_tokens + cache_read_tokens + cache_write_tokens + output_tokens > 0 "
    # billable units without tokens (speech, whisper, images), on every back end
    "OR attributes ?| ARRAY[{units}]) "
    "THEN greatest(requests, 1) ELSE 0 END"
)


def assert_rollups_match_events(url: str, *, run_policies: bool = True) -> None:
    """``usage_daily`` and ``usage_hourly`` hold exactly the sums of the counted ``usage_events``
    (every column, cost to the last decimal, rows with no events left out); on TimescaleDB
    community also after every refresh policy has run (unless ``run_policies`` is false)."""
    _assert_rollups_match_events(url)
    if run_policies and run_refresh_policies(url):
        _assert_rollups_match_events(url)


def _assert_rollups_match_events(url: str) -> None:
    units = ", ".join(f"'{key}'" for key in sorted(UNIT_USAGE_KEYS))
    unpriced = _UNPRICED.format(units=units)
    raw_sums = _ROLLUP_SUMS.format(unpriced=unpriced, events="1")
    rollup_sums = _ROLLUP_SUMS.format(unpriced="unpriced_events", events="events")
    checks = {  # rollup -> (its keys computed from raw events, its own key columns)
        "usage_daily": (
            "date_trunc('day', time, 'UTC'), tenant, tool, user_email, provider, model",
            "day, tenant, tool, user_email, provider, model",
        ),
        "usage_hourly": ("date_trunc('hour', time, 'UTC'), tenant", "hour, tenant"),
    }
    with psycopg.connect(url) as conn:
        for table, (raw_keys, rollup_keys) in checks.items():
            groups = ", ".join(str(i + 1) for i in range(rollup_keys.count(",") + 1))
            raw = conn.execute(
                f"SELECT {raw_keys}, {raw_sums} FROM tokenscale.usage_events WHERE counted GROUP BY {groups}"
            ).fetchall()
            rollup = conn.execute(
                f"SELECT {rollup_keys}, {rollup_sums} FROM tokenscale.{table} "
                f"GROUP BY {groups} HAVING sum(events) <> 0"
            ).fetchall()
            assert raw, "no counted usage to compare"
            assert sorted(map(repr, rollup)) == sorted(map(repr, raw)), table
        # The budget check's per-scope hours, where the writer keeps them (not on community).
        if conn.execute("SELECT to_regclass('tokenscale.usage_scope_hourly')").fetchone() != (None,):
            raw = conn.execute(
                f"SELECT date_trunc('hour', time, 'UTC'), tenant, k.scope, k.value, {raw_sums} "
                "FROM tokenscale.usage_events CROSS JOIN LATERAL (VALUES ('tool', tool), ('model', model), "
                "('user', coalesce(user_email, user_id))) AS k (scope, value) "
                "WHERE counted AND k.value IS NOT NULL GROUP BY 1, 2, 3, 4"
            ).fetchall()
            rollup = conn.execute(
                f"SELECT hour, tenant, scope, scope_value, {rollup_sums} FROM tokenscale.usage_scope_hourly "
                "GROUP BY 1, 2, 3, 4 HAVING sum(events) <> 0"
            ).fetchall()
            assert sorted(map(repr, rollup)) == sorted(map(repr, raw)), "usage_scope_hourly"
