"""Which of the three supported back ends a database is, and what that changes."""

from __future__ import annotations

import enum

import psycopg

from tokenscale.errors import TokenscaleError

__all__ = ["Backend", "ExtensionNotPreloadedError", "detect_backend", "ensure_extension", "recorded_backend"]


class Backend(enum.StrEnum):
    """The three back ends; every one presents the same tables and views."""

    #: TimescaleDB community edition: hypertables, continuous aggregates, policies.
    TIMESCALEDB_COMMUNITY = "timescaledb-community"
    #: TimescaleDB Apache edition: hypertables; rollups kept by tokenscale.
    TIMESCALEDB_APACHE = "timescaledb-apache"
    #: Plain PostgreSQL: declarative partitioning; rollups kept by tokenscale.
    POSTGRES = "postgres"

    @property
    def tags(self) -> frozenset[str]:
        """Migration file tags (``NNNN_name.<tag>.sql``) that apply to this back end."""
        return _TAGS[self]

    @property
    def keeps_rollups(self) -> bool:
        """True when tokenscale itself keeps ``usage_daily`` exact (no continuous aggregates)."""
        return self is not Backend.TIMESCALEDB_COMMUNITY

    @property
    def partitioned(self) -> bool:
        """True when ``usage_events`` partitions must be created ahead of writes."""
        return self is Backend.POSTGRES


_TAGS = {
    Backend.TIMESCALEDB_COMMUNITY: frozenset({"timescaledb", "community"}),
    Backend.TIMESCALEDB_APACHE: frozenset({"timescaledb", "apache", "rollup"}),
    Backend.POSTGRES: frozenset({"postgres", "rollup"}),
}


class ExtensionNotPreloadedError(TokenscaleError):
    """The server offers the timescaledb extension but does not load it at start."""


def ensure_extension(conn: psycopg.Connection[tuple[object, ...]], *, create: bool = True) -> None:
    """Create the timescaledb extension when the server offers it and it is not there yet (unless
    not ``create``: then only the check below).

    Raises :class:`ExtensionNotPreloadedError` when the server offers the extension without
    preloading it and it is to be created, or is already created in this database: TimescaleDB
    cannot be created or used then."""
    row = conn.execute(
        "SELECT installed_version IS NULL, current_setting('shared_preload_libraries') "
        "FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if row is None or (not create and row[0]):
        return
    preloaded = "timescaledb" in {lib.strip().strip('"') for lib in str(row[1]).split(",")}
    if not preloaded:
        raise ExtensionNotPreloadedError(
            "the database server offers the timescaledb extension but does not preload it: add "
            "shared_preload_libraries = 'timescaledb' to its postgresql.conf and restart it (or remove "
            "the extension's files from the server to use plain PostgreSQL)"
        )
    if row[0]:
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")


def detect_backend(conn: psycopg.Connection[tuple[object, ...]]) -> Backend:
    """The back end this connection's database is (the extension must already be created)."""
    row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    if row is None:
        return Backend.POSTGRES
    license_row = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
    license_name = license_row[0] if license_row else None
    if license_name == "timescale":
        return Backend.TIMESCALEDB_COMMUNITY
    return Backend.TIMESCALEDB_APACHE


def recorded_backend(conn: psycopg.Connection[tuple[object, ...]]) -> Backend | None:
    """The back end the schema was created for, or None before the first migration."""
    if conn.execute("SELECT to_regclass('tokenscale.schema_migrations')").fetchone() == (None,):
        return None
    row = conn.execute("SELECT backend FROM tokenscale.schema_migrations ORDER BY version LIMIT 1").fetchone()
    return Backend(str(row[0])) if row else None
