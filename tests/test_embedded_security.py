"""The embedded PostgreSQL admits its own service only: a password (SCRAM) on loopback and on the
Unix socket, kept in the data directory with mode 0600; another local user cannot connect."""

from __future__ import annotations

import os
import pwd
import signal
import stat
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from dbservers import FAST_SETTINGS
from tokenscale.embedded import EmbeddedPostgres, find_binaries


def _as_nobody(args: list[str]) -> subprocess.CompletedProcess[str]:
    nobody = pwd.getpwnam("nobody")
    return subprocess.run(
        args, capture_output=True, text=True, timeout=60, check=False, cwd="/",
        user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[], env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another local user")
def test_another_local_user_cannot_connect(server_tmp_path: Path) -> None:
    with EmbeddedPostgres(server_tmp_path, settings=FAST_SETTINGS) as pg:
        credentials = pg.credentials_file
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        assert credentials.stat().st_uid == os.geteuid()
        with psycopg.connect(pg.conninfo) as conn:  # the service, with its password
            assert conn.execute("SELECT current_user").fetchone() == ("tokenscale",)
        psql = str(find_binaries().bindir / "psql")
        without_password = f"postgresql://tokenscale@127.0.0.1:{pg.port}/tokenscale"
        for target in (
            without_password,
            f"host={pg.socket_dir} port={pg.port} user=tokenscale dbname=tokenscale",
        ):
            result = _as_nobody([psql, "-w", target, "-c", "SELECT 1"])
            assert result.returncode != 0, result
            assert result.stdout == ""
        tcp = _as_nobody([psql, "-w", without_password, "-c", "SELECT 1"])
        assert "password" in tcp.stderr, tcp.stderr  # refused for want of the password
        assert _as_nobody(["cat", str(credentials)]).returncode != 0
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(without_password, connect_timeout=5)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(
                f"postgresql://tokenscale:guess@127.0.0.1:{pg.port}/tokenscale", connect_timeout=5
            )


def test_a_cluster_created_with_trust_gets_the_password(server_tmp_path: Path) -> None:
    pg = EmbeddedPostgres(server_tmp_path, settings=FAST_SETTINGS)
    with pg:
        port = pg.port
    # What an older tokenscale left behind: trust authentication and no credentials file.
    (pg.cluster_dir / "pg_hba.conf").write_text(
        "# Written by tokenscale: trust on the Unix socket and on loopback only; nothing else may connect.\n"
        "local all all trust\nhost  all all 127.0.0.1/32 trust\nhost  all all ::1/128      trust\n"
    )
    pg.credentials_file.unlink()
    with EmbeddedPostgres(server_tmp_path, port=port, settings=FAST_SETTINGS) as again:
        with psycopg.connect(again.conninfo) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(f"postgresql://tokenscale@127.0.0.1:{again.port}/tokenscale", connect_timeout=5)


def test_a_dead_server_is_restarted_on_its_port(server_tmp_path: Path) -> None:
    with EmbeddedPostgres(server_tmp_path, settings=FAST_SETTINGS) as pg:
        port = pg.port
        with psycopg.connect(pg.conninfo) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (42)")
            conn.commit()
            conn.execute("CHECKPOINT")  # the test server runs with synchronous_commit off
        done = pg.supervise(interval=0.3)
        try:
            pid = int((pg.cluster_dir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            row = None
            while time.monotonic() < deadline:
                try:
                    with psycopg.connect(pg.conninfo, connect_timeout=2) as conn:
                        row = conn.execute("SELECT x FROM kept").fetchone()
                    break
                except psycopg.OperationalError:
                    time.sleep(0.3)
            assert row == (42,)
            assert pg.port == port
            assert int((pg.cluster_dir / "postmaster.pid").read_text().split()[0]) != pid
        finally:
            done.set()


def test_a_restarted_server_keeps_its_port(server_tmp_path: Path) -> None:
    with EmbeddedPostgres(server_tmp_path, settings=FAST_SETTINGS) as pg:
        port = pg.port
    with EmbeddedPostgres(server_tmp_path, settings=FAST_SETTINGS) as again:
        assert again.port == port
        assert not again.adopted
        with psycopg.connect(again.conninfo) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
