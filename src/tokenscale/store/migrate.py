"""Versioned SQL migrations, applied once, safely when several processes start at once."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from importlib import resources
from typing import Final

import psycopg

from tokenscale.store.backend import Backend, detect_backend, ensure_extension, recorded_backend
from tokenscale.store.refresh import materialize_history

__all__ = ["Migration", "MigrationReport", "available_migrations", "migrate"]

log = logging.getLogger(__name__)

#: Errors of a migration colliding with a TimescaleDB background job, worth another attempt.
_TRANSIENT: Final = (
    psycopg.errors.InternalError_,  # "tuple concurrently updated" (catalog rows)
    psycopg.errors.LockNotAvailable,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
)
_ATTEMPTS: Final = 5

#: Key of the session advisory lock that serialises migrations across processes.
_LOCK_KEY = 0x746F6B656E  # "token"
_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)(?:\.(?P<tag>[a-z]+))?\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One version: its files, each applying to all back ends or to those with its tag."""

    version: int
    name: str
    files: tuple[tuple[str | None, str], ...]  # (tag or None, SQL text)

    def sql_for(self, backend: Backend) -> list[str]:
        """The SQL texts of this version that apply to ``backend``, in file order."""
        return [sql for tag, sql in self.files if tag is None or tag in backend.tags]


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What :func:`migrate` found and did."""

    backend: Backend
    applied: tuple[int, ...]
    current: int


def available_migrations() -> list[Migration]:
    """Every migration shipped in ``tokenscale/store/migrations``, by version."""
    found: dict[int, tuple[str, list[tuple[str | None, str]]]] = {}
    for entry in sorted(resources.files("tokenscale.store").joinpath("migrations").iterdir(), key=str):
        match = _FILE.match(entry.name)
        if match is None:
            continue
        version = int(match["version"])
        name, files = found.setdefault(version, (match["name"], []))
        if name != match["name"]:
            raise RuntimeError(f"migration {version:04d} has two names: {name} and {match['name']}")
        files.append((match["tag"], entry.read_text(encoding="utf-8")))
    return [Migration(v, n, tuple(f)) for v, (n, f) in sorted(found.items())]


def migrate(conninfo: str) -> MigrationReport:
    """Bring the database's ``tokenscale`` schema up to date; idempotent.

    A session advisory lock makes concurrent callers wait for each other. Each version runs in its
    own transaction (continuous aggregates cannot be created in a multi-statement transaction).
    On TimescaleDB community the stored events' buckets are then materialized (cheap when they
    already are): events older than the refresh policies' window are never hidden.
    """
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            report = _migrate_locked(conn)
            if not report.backend.keeps_rollups:
                windows = materialize_history(conn)
                if windows:
                    log.info("continuous aggregates materialized: %s", "; ".join(map(str, windows)))
            return report
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def _migrate_locked(conn: psycopg.Connection[tuple[object, ...]]) -> MigrationReport:
    backend = recorded_backend(conn)
    ensure_extension(conn, create=backend is None)
    if backend is None:
        backend = detect_backend(conn)
        conn.execute("CREATE SCHEMA IF NOT EXISTS tokenscale")
        conn.execute(
            """CREATE TABLE IF NOT EXISTS tokenscale.schema_migrations (
                   version    integer     PRIMARY KEY,
                   name       text        NOT NULL,
                   backend    text        NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
    done = {row[0] for row in conn.execute("SELECT version FROM tokenscale.schema_migrations")}
    applied: list[int] = []
    migrations = available_migrations()
    for migration in migrations:
        if migration.version in done:
            continue
        log.info("applying migration %04d_%s (%s)", migration.version, migration.name, backend)
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with conn.transaction():
                    for sql in migration.sql_for(backend):
                        conn.execute(sql.encode())
                    conn.execute(
                        "INSERT INTO tokenscale.schema_migrations (version, name, backend) "
                        "VALUES (%s, %s, %s)",
                        (migration.version, migration.name, str(backend)),
                    )
                break
            except _TRANSIENT as exc:
                # TimescaleDB's job scheduler starts a refresh policy as soon as it is added, and a
                # later version changing the aggregate while that job runs can collide with it
                # ("tuple concurrently updated"): the version's transaction is rolled back; again.
                if attempt == _ATTEMPTS:
                    raise
                log.info("migration %04d collided with a background job (%s); again", migration.version, exc)
                time.sleep(0.5 * attempt)
        applied.append(migration.version)
    current = max([m.version for m in migrations if m.version in done or m.version in applied], default=0)
    return MigrationReport(backend=backend, applied=tuple(applied), current=current)
