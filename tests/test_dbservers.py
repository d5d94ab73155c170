"""The database servers the test-suite and ``tokenscale serve`` run on."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psycopg
import pytest

from dbservers import FAST_SETTINGS, Server, fresh_database
from tokenscale import embedded
from tokenscale.embedded import EmbeddedPostgres, default_data_dir, find_binaries
from tokenscale.errors import TokenscaleError


def _scalar(conninfo: str, query: str) -> object:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def test_server_accepts_connections(db_server: Server) -> None:
    # The servers the suite starts have a `tokenscale` database; a community server is used through
    # the database its URL names (the README's example: `postgres`).
    expected = (
        db_server.conninfo.rsplit("/", 1)[1].split("?")[0]
        if db_server.kind == "timescaledb-community"
        else "tokenscale"
    )
    assert _scalar(db_server.conninfo, "SELECT current_database()") == expected


def test_db_url_is_a_fresh_empty_database(db_url: str, db_server: Server) -> None:
    name = _scalar(db_url, "SELECT current_database()")
    assert isinstance(name, str)
    assert name.startswith("test_")
    assert _scalar(db_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
    if db_server.kind != "timescaledb-community":
        assert _scalar(db_url, "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") == 0


def test_db_url_databases_are_dropped(pg_server: Server) -> None:
    with fresh_database(pg_server) as url:
        name = _scalar(url, "SELECT current_database()")
    query = f"SELECT count(*) FROM pg_database WHERE datname = '{name}'"
    assert _scalar(pg_server.conninfo, query) == 0


def test_kinds_and_versions(pg_server: Server, tsdb_server: Server) -> None:
    assert pg_server.kind == "postgres"
    assert tsdb_server.kind == "timescaledb-apache"
    assert int(str(_scalar(tsdb_server.conninfo, "SHOW server_version_num"))) >= 170000
    preload = _scalar(tsdb_server.conninfo, "SHOW shared_preload_libraries")
    assert "timescaledb" in str(preload)
    assert "timescaledb" not in str(_scalar(pg_server.conninfo, "SHOW shared_preload_libraries"))


def test_timescaledb_is_the_apache_edition(tsdb_server: Server) -> None:
    with fresh_database(tsdb_server) as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        assert row is not None
        assert row[0].startswith("2.")
        assert conn.execute("SHOW timescaledb.license").fetchone() == ("apache",)
        conn.execute("CREATE TABLE t (ts timestamptz NOT NULL, v int)")
        conn.execute("SELECT create_hypertable('t', by_range('ts'))")
        conn.execute("INSERT INTO t VALUES (now(), 1), (now() - interval '30 days', 2)")
        count = conn.execute("SELECT count(*) FROM show_chunks('t')").fetchone()
        assert count is not None
        assert count[0] == 2
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="apache"):
            conn.execute(
                "CREATE MATERIALIZED VIEW d WITH (timescaledb.continuous) AS "
                "SELECT time_bucket('1 day', ts) AS day, sum(v) FROM t GROUP BY 1"
            )


# -- EmbeddedPostgres --------------------------------------------------------------------------------


def _wait_gone(cluster: Path, timeout: float = 15.0) -> None:
    """Wait until no process runs with ``cluster`` as its working directory (the server's processes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = False
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    busy = busy or os.readlink(proc / "cwd") == str(cluster)
        if not busy:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes still running in {cluster}")


def test_embedded_restart_reuses_the_cluster(server_tmp_path: Path) -> None:
    pg = EmbeddedPostgres(server_tmp_path, settings=FAST_SETTINGS)
    pg.stop()  # never started: nothing to do
    with pg:
        assert pg.conninfo.startswith(f"postgresql://tokenscale:{pg.password}@127.0.0.1:")
        assert pg.conninfo.endswith("/tokenscale")
        with psycopg.connect(pg.conninfo) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('across restarts')")
    assert not pg.running
    pg.stop()  # a second stop is harmless
    created = (pg.cluster_dir / "PG_VERSION").stat().st_mtime_ns
    with EmbeddedPostgres(server_tmp_path, settings=FAST_SETTINGS) as again:
        assert _scalar(again.conninfo, "SELECT v FROM kept") == "across restarts"
    assert (pg.cluster_dir / "PG_VERSION").stat().st_mtime_ns == created
    assert not (pg.cluster_dir / "postmaster.pid").exists()
    assert pg.log_file.is_file()


def test_embedded_recovers_from_a_crash(server_tmp_path: Path) -> None:
    # synchronous_commit stays on: a killed server must not lose the committed row.
    pg = EmbeddedPostgres(server_tmp_path, settings={"fsync": "off"})
    pg.start()
    with psycopg.connect(pg.conninfo) as conn:
        conn.execute("CREATE TABLE kept AS SELECT 42 AS v")
    pid = int((pg.cluster_dir / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pg.cluster_dir.resolve())
    assert (pg.cluster_dir / "postmaster.pid").exists()  # stale, pointing at a dead process

    # A stale pid file naming a live but unrelated process (PIDs are reused after a reboot) too.
    lines = (pg.cluster_dir / "postmaster.pid").read_text().splitlines()
    (pg.cluster_dir / "postmaster.pid").write_text("\n".join([str(os.getpid()), *lines[1:]]) + "\n")
    with EmbeddedPostgres(server_tmp_path, settings=FAST_SETTINGS) as again:
        assert _scalar(again.conninfo, "SELECT v FROM kept") == 42
    pg.stop()  # the crashed instance's stop is harmless too


def test_embedded_adopts_a_server_left_running(server_tmp_path: Path) -> None:
    first = EmbeddedPostgres(server_tmp_path, settings=FAST_SETTINGS)
    first.start()
    try:
        # A short command (`tokenscale status`) uses the running server and leaves it running.
        visitor = EmbeddedPostgres(server_tmp_path, settings=FAST_SETTINGS)
        visitor.start()
        assert visitor.adopted and visitor.port == first.port
        visitor.stop()
        assert _scalar(first.conninfo, "SELECT 1") == 1
        # The owner (`tokenscale serve`, after the process that started it died) stops it.
        second = EmbeddedPostgres(server_tmp_path, settings=FAST_SETTINGS, stop_adopted=True)
        second.start()
        assert second.port == first.port
        assert _scalar(second.conninfo, "SELECT 1") == 1
        second.stop()
        assert not (first.cluster_dir / "postmaster.pid").exists()
    finally:
        first.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_embedded_stops_even_when_its_user_lost_access(server_tmp_path: Path) -> None:
    pg = EmbeddedPostgres(server_tmp_path / "data", settings=FAST_SETTINGS)
    pg.start()
    pid = int((pg.cluster_dir / "postmaster.pid").read_text().split()[0])
    server_tmp_path.chmod(0o700)  # as pytest does to pytest-of-root/ at every start
    pg.stop()
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z")


def test_embedded_without_binaries_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv(embedded.BINDIR_ENV, raising=False)
    monkeypatch.setattr(embedded, "SEARCH_GLOBS", ())
    with pytest.raises(TokenscaleError) as info:
        find_binaries()
    message = str(info.value)
    assert "\n" not in message
    assert "apt-get install postgresql" in message
    with pytest.raises(TokenscaleError, match="apt-get install postgresql"):
        EmbeddedPostgres(tmp_path).start()
    assert not (tmp_path / "postgres").exists()


def test_find_binaries_prefers_the_highest_version() -> None:
    binaries = find_binaries()
    assert binaries.major >= 15
    assert (binaries.bindir / "initdb").exists()
    with pytest.raises(TokenscaleError, match="postgresql-99"):
        find_binaries(major=99)


def test_conninfo_needs_a_started_server(tmp_path: Path) -> None:
    with pytest.raises(TokenscaleError, match="not started"):
        _ = EmbeddedPostgres(tmp_path).conninfo


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOKENSCALE_DATA_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "explicit"
    monkeypatch.delenv("TOKENSCALE_DATA_DIR")
    assert default_data_dir() == tmp_path / "xdg" / "tokenscale"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert default_data_dir() == tmp_path / ".local" / "share" / "tokenscale"
    monkeypatch.setattr("os.geteuid", lambda: 0)  # root's home is not reachable by the server's user
    assert default_data_dir() == Path("/var/lib/tokenscale")
