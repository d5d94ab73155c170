"""Retention and compression of raw usage events, per back end; daily aggregates are kept.

TimescaleDB community runs both as background policies (``add_retention_policy``,
``add_columnstore_policy``), next to the refresh policies of the continuous aggregates, whose window
spans the late-data horizon (``late_data_days``, plus the day it starts in). Retention must be longer
than the horizon (:mod:`tokenscale.config` refuses anything else), so a chunk is dropped only once
it is older than every refresh window: a refresh over a dropped day would erase its aggregates.
On TimescaleDB Apache and plain PostgreSQL, tokenscale drops whole
chunks / daily partitions itself (``drop_chunks``, ``DROP TABLE`` of a partition: no DELETE bloat),
from :func:`enforce_retention`, which ``tokenscale serve`` calls every hour. Compression is a
community-edition feature; elsewhere a compression horizon is reported as not applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

from tokenscale.store.backend import Backend
from tokenscale.store.refresh import AGGREGATES

__all__ = ["RetentionReport", "apply_policies", "enforce_retention"]

log = logging.getLogger(__name__)

_HYPERTABLES = ("usage_events",)


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What :func:`apply_policies` set up, for logs and ``tokenscale status``."""

    retention: str
    compression: str


#: How far the refresh policies stop short of now: the latest buckets stay real-time.
_REFRESH_END_OFFSET: Final = timedelta(hours=1)
_REFRESH_EVERY: Final = timedelta(minutes=15)


def apply_policies(
    conn: psycopg.Connection[Any],
    backend: Backend,
    *,
    retention_days: int,
    compress_after_days: int,
    late_data_days: int = 31,
) -> RetentionReport:
    """Make the database's policies match the settings (0 days: none). Idempotent."""
    if backend is not Backend.TIMESCALEDB_COMMUNITY:
        retention = f"{retention_days} days, enforced by tokenscale" if retention_days else "keep forever"
        compression = (
            "not available on this back end (TimescaleDB community only)" if compress_after_days else "off"
        )
        if compress_after_days:
            log.warning("compress_after_days=%d ignored: %s", compress_after_days, compression)
        return RetentionReport(retention, compression)
    for aggregate, _ in AGGREGATES:
        cagg = sql.Literal(f"tokenscale.{aggregate}")
        conn.execute(sql.SQL("SELECT remove_continuous_aggregate_policy({}, if_exists => true)").format(cagg))
        conn.execute(
            sql.SQL(
                "SELECT add_continuous_aggregate_policy({}, start_offset => {}, end_offset => {}, "
                "schedule_interval => {every}, initial_start => now() + {every})"
            ).format(
                cagg,
                sql.Literal(timedelta(days=late_data_days + 1)),
                sql.Literal(_REFRESH_END_OFFSET),
                every=sql.Literal(_REFRESH_EVERY),
            )
        )
    for table in _HYPERTABLES:
        name = sql.Literal(f"tokenscale.{table}")
        conn.execute(sql.SQL("SELECT remove_retention_policy({}, if_exists => true)").format(name))
        if retention_days:
            conn.execute(
                sql.SQL("SELECT add_retention_policy({}, drop_after => {})").format(
                    name, sql.Literal(timedelta(days=retention_days))
                )
            )
        conn.execute(sql.SQL("CALL remove_columnstore_policy({}, if_exists => true)").format(name))
        if compress_after_days:
            enabled = conn.execute(
                "SELECT compression_enabled FROM timescaledb_information.hypertables "
                "WHERE hypertable_schema = 'tokenscale' AND hypertable_name = %s",
                (table,),
            ).fetchone()
            if enabled != (True,):
                # Batches per tenant in time order: a retried export's or a late row's unique-key
                # check, and a retraction, decompress only the batches of its tenant and time.
                conn.execute(
                    sql.SQL(
                        "ALTER TABLE {} SET (timescaledb.enable_columnstore = true, "
                        "timescaledb.segmentby = 'tenant', timescaledb.orderby = 'time DESC')"
                    ).format(sql.Identifier("tokenscale", table))
                )
            conn.execute(
                sql.SQL("CALL add_columnstore_policy({}, after => {})").format(
                    name, sql.Literal(timedelta(days=compress_after_days))
                )
            )
    return RetentionReport(
        f"{retention_days} days (retention policy)" if retention_days else "keep forever",
        f"after {compress_after_days} days (columnstore policy)" if compress_after_days else "off",
    )


def enforce_retention(conn: psycopg.Connection[Any], backend: Backend, retention_days: int) -> int:
    """Drop raw-event chunks or partitions wholly older than the horizon; the number dropped.

    ``usage_daily`` keeps its days: on these back ends it is a table of its own.
    """
    if not retention_days or backend is Backend.TIMESCALEDB_COMMUNITY:
        return 0
    horizon = datetime.now(UTC) - timedelta(days=retention_days)
    if backend is Backend.TIMESCALEDB_APACHE:
        rows = conn.execute(
            "SELECT drop_chunks('tokenscale.usage_events', older_than => %s::timestamptz)", (horizon,)
        ).fetchall()
        dropped = len(rows)
    else:
        last_day = horizon.date() - timedelta(days=1)  # a partition holds one whole UTC day
        dropped = 0
        for (name,) in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'tokenscale.usage_events'::regclass ORDER BY 1"
        ).fetchall():
            if _partition_day(name) <= last_day:
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier("tokenscale", name)))
                dropped += 1
    if dropped:
        log.info("retention: dropped %d chunk(s) of usage_events older than %s", dropped, horizon)
    return dropped


def _partition_day(name: str) -> date:
    """The UTC day of a partition named ``usage_events_pYYYYMMDD``."""
    return datetime.strptime(name.rsplit("_p", 1)[1], "%Y%m%d").replace(tzinfo=UTC).date()
