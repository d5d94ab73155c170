"""The database servers a benchmark run starts: the test suite's throwaway servers, made durable.

``tests/dbservers.py`` starts PostgreSQL 15 (this machine's binaries, via :mod:`tokenscale.embedded`)
and TimescaleDB (Apache edition, PostgreSQL 17, in the Debian trixie root built by
``scripts/timescaledb-root``). Tests run them with fsync off; a benchmark turns durability back on
(``ALTER SYSTEM`` + reload) so commits cost what they cost in production. ``shared_buffers`` needs a
restart, so it stays at the initdb default (128 MB) on both back ends.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

from benchmarks._common import REPO, proc_stat

__all__ = ["BACKENDS", "BackendName", "DbServer", "database", "start_server"]

BackendName = Literal["postgres", "timescaledb"]
BACKENDS: tuple[BackendName, ...] = ("postgres", "timescaledb")

#: Production-like durability and checkpoint spacing, the same on both back ends.
BENCH_SETTINGS: dict[str, str] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "work_mem": "64MB",
    "maintenance_work_mem": "512MB",
}


def _dbservers() -> Any:
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import dbservers  # type: ignore[import-not-found]  # noqa: PLC0415

    return dbservers


@dataclass
class DbServer:
    """A running server of one back end; ``admin_url`` points at its ``tokenscale`` database."""

    backend: BackendName
    admin_url: str
    version: str
    timescaledb: str | None
    postmaster_pid: int
    _server: Any

    def url_for(self, dbname: str) -> str:
        return str(self._server.url_for(dbname))

    @property
    def label(self) -> str:
        if self.timescaledb:
            return f"TimescaleDB {self.timescaledb} (apache) on PostgreSQL {self.version}"
        return f"PostgreSQL {self.version}"


def _ensure_timescaledb_root(dbservers: Any) -> Path:
    root: Path = dbservers.default_timescaledb_root()
    if (root / dbservers.ROOT_MARKER).is_file():
        return root
    print("building the TimescaleDB root (scripts/timescaledb-root, about a minute)", file=sys.stderr)
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "timescaledb-root")],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the TimescaleDB root failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def start_server(backend: BackendName) -> Iterator[DbServer]:
    """Start a throwaway server of ``backend`` with :data:`BENCH_SETTINGS`; stop it afterwards."""
    dbservers = _dbservers()
    with tempfile.TemporaryDirectory(prefix=f"tokenscale-bench-{backend}-") as tmp:
        if backend == "postgres":
            server = dbservers.start_postgres(Path(tmp))
        else:
            server = dbservers.start_timescaledb(_ensure_timescaledb_root(dbservers), Path(tmp))
        try:
            with psycopg.connect(server.conninfo, autocommit=True) as conn:
                for name, value in BENCH_SETTINGS.items():
                    conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), value))
                conn.execute("SELECT pg_reload_conf()")
                row = conn.execute("SHOW server_version").fetchone()
                version = str(row[0]).split()[0] if row else "?"
                backend_pid = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
                ts = conn.execute(
                    "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
                ).fetchone()
                # While connected: once the connection closes its backend may be gone already.
                fields = proc_stat(backend_pid)
            postmaster = int(fields[1]) if fields else 0
            yield DbServer(
                backend=backend,
                admin_url=server.conninfo,
                version=version,
                timescaledb=str(ts[0]) if ts and backend == "timescaledb" else None,
                postmaster_pid=postmaster,
                _server=server,
            )
        finally:
            server.stop()


@contextlib.contextmanager
def database(server: DbServer, prefix: str, *, migrate: bool = True) -> Iterator[str]:
    """A fresh database on ``server`` (migrated to the tokenscale schema); dropped afterwards."""
    name = f"bench_{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = server.url_for(name)
    try:
        if migrate:
            from tokenscale.store import migrate as run_migrations  # noqa: PLC0415

            run_migrations(url)
        yield url
    finally:
        with psycopg.connect(server.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
