"""Shared fixtures: a throwaway PostgreSQL and TimescaleDB server per session, a fresh database per test."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbservers import (
    ROOT_MARKER,
    Server,
    default_timescaledb_root,
    fresh_database,
    server_data_dir,
    start_postgres,
    start_timescaledb,
)

REPO = Path(__file__).resolve().parent.parent
ROOT_SCRIPT = REPO / "scripts" / "timescaledb-root"
COMMUNITY_URL_ENV = "TOKENSCALE_TEST_TIMESCALEDB_URL"

# The back ends every storage test runs against; the community edition only when a server is given.
DB_KINDS = ["postgres", "timescaledb-apache"]
if os.environ.get(COMMUNITY_URL_ENV):
    DB_KINDS.append("timescaledb-community")


def _ensure_timescaledb_root() -> Path:
    """The TimescaleDB root, built by scripts/timescaledb-root first if it is missing (~1 minute)."""
    root = default_timescaledb_root()
    if (root / ROOT_MARKER).is_file():
        return root
    result = subprocess.run(
        ["bash", str(ROOT_SCRIPT)], capture_output=True, text=True, check=False, timeout=1800
    )
    if result.returncode != 0:
        pytest.fail(f"building the TimescaleDB root failed:\n{result.stderr[-4000:]}", pytrace=False)
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Plain PostgreSQL (this machine's version: 15 on Debian 12)."""
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tsdb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """TimescaleDB, Apache edition (Debian's PostgreSQL 17 + TimescaleDB 2.19, in a chroot)."""
    server = start_timescaledb(_ensure_timescaledb_root(), tmp_path_factory.mktemp("timescaledb"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def community_server() -> Server:
    """TimescaleDB community edition at $TOKENSCALE_TEST_TIMESCALEDB_URL, used as it is (not stopped)."""
    url = os.environ.get(COMMUNITY_URL_ENV)
    if not url:
        pytest.skip(f"{COMMUNITY_URL_ENV} is not set")
    return Server(url, "timescaledb-community")


@pytest.fixture(scope="session", params=DB_KINDS)
def db_server(request: pytest.FixtureRequest) -> Server:
    """Each back end in turn: plain PostgreSQL, TimescaleDB Apache, and TimescaleDB community if given."""
    fixture = {
        "postgres": "pg_server",
        "timescaledb-apache": "tsdb_server",
        "timescaledb-community": "community_server",
    }[request.param]
    server: Server = request.getfixturevalue(fixture)
    return server


@pytest.fixture
def db_url(db_server: Server) -> Iterator[str]:
    """A fresh, empty database on ``db_server`` for this test alone (dropped afterwards)."""
    with fresh_database(db_server) as url:
        yield url


@pytest.fixture
def server_tmp_path() -> Iterator[Path]:
    """A scratch directory to use as the data dir of an EmbeddedPostgres or ``tokenscale serve``.

    Use it instead of ``tmp_path`` for server data: as root the server runs as user postgres, which
    cannot reach pytest's tmp_path reliably (see dbservers.server_data_dir).
    """
    with server_data_dir() as directory:
        yield directory


@pytest.fixture(scope="session")
def captures_dir() -> Path:
    """Recorded OTLP exports used as test input."""
    return Path(__file__).resolve().parent / "captures"
