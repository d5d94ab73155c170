"""Throwaway database servers for the tests: PostgreSQL (EmbeddedPostgres) and TimescaleDB in a chroot."""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tokenscale.embedded import DATABASE, SUPERUSER, EmbeddedPostgres, free_port

__all__ = [
    "FAST_SETTINGS",
    "ROOT_MARKER",
    "Kind",
    "Server",
    "default_timescaledb_root",
    "fresh_database",
    "server_data_dir",
    "start_postgres",
    "start_timescaledb",
]

Kind = Literal["postgres", "timescaledb-apache", "timescaledb-community"]

# A test server need not survive a power cut: skipping fsync makes DDL and CREATE DATABASE far faster.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}

ROOT_MARKER = ".tokenscale-timescaledb-root"  # written by scripts/timescaledb-root after a complete build
_ROOT_ENV = "TOKENSCALE_TIMESCALEDB_ROOT"
_DEFAULT_ROOT = Path("/var/cache/tokenscale/timescaledb-root")
_TSDB_TMP_PREFIX = "tokenscale-tsdb-"


def default_timescaledb_root() -> Path:
    """Where scripts/timescaledb-root builds the TimescaleDB root (``$TOKENSCALE_TIMESCALEDB_ROOT``)."""
    return Path(os.environ.get(_ROOT_ENV) or _DEFAULT_ROOT)


# Run in a child process: when the test process dies, even by SIGKILL, the pipe on the child's stdin
# reaches EOF and the child asks the server (argv[1] = its postmaster's pid) for a fast shutdown.
_WATCHDOG = """
import os, signal, sys
sys.stdin.buffer.read()
pid = int(sys.argv[1])
try:
    with open(f"/proc/{pid}/comm") as comm:
        if comm.read().strip() == "postgres":
            os.kill(pid, signal.SIGINT)
except OSError:
    pass
"""


def _postmaster_pid(pid_file: Path) -> int:
    return int(pid_file.read_text().split()[0])


class Server:
    """A running database server: ``conninfo`` points at its ``tokenscale`` database.

    Stopped by :meth:`stop`, else at interpreter exit, else (the process killed) by a watchdog child.
    """

    def __init__(
        self,
        conninfo: str,
        kind: Kind,
        stop: Callable[[], None] | None = None,
        postmaster_pid: int | None = None,
    ) -> None:
        self.conninfo = conninfo
        self.kind: Kind = kind
        self._stop = stop
        self._lock = threading.Lock()
        self._watchdog: subprocess.Popen[bytes] | None = None
        if stop is not None:
            atexit.register(self.stop)
        if postmaster_pid is not None:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, str(postmaster_pid)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip

    def stop(self) -> None:
        """Stop the server (once; later calls do nothing)."""
        with self._lock:
            stop, self._stop = self._stop, None
            watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()
            if watchdog.stdin is not None:
                watchdog.stdin.close()
        if stop is not None:
            atexit.unregister(self.stop)
            stop()

    def url_for(self, dbname: str) -> str:
        """The same server's conninfo, for another database."""
        if self.conninfo.startswith(("postgresql://", "postgres://")):
            parts = urllib.parse.urlsplit(self.conninfo)
            return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(dbname)))
        return make_conninfo(self.conninfo, dbname=dbname)

    def __repr__(self) -> str:
        return f"Server({self.kind}, {self.conninfo})"


@contextlib.contextmanager
def fresh_database(server: Server, prefix: str = "test_") -> Iterator[str]:
    """Create an empty database on ``server``, yield its conninfo, drop it afterwards."""
    name = f"{prefix}{secrets.token_hex(6)}"
    with psycopg.connect(server.conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server.url_for(name)
    finally:
        with psycopg.connect(server.conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def server_data_dir(prefix: str = "tokenscale-test-") -> Iterator[Path]:
    """A scratch directory for a server's data, removed afterwards.

    Not under pytest's tmp_path: run as root, PostgreSQL runs as another user, who must be able to
    reach the directory, and every pytest run resets pytest-of-root/ to mode 0700, which would cut
    off the servers of any other pytest run still going.
    """
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def start_postgres(tmpdir: Path) -> Server:
    """A PostgreSQL server of this machine's binaries (15 on Debian 12) on a free loopback port.

    Its data lives in a scratch directory of its own (see :func:`server_data_dir`), deleted when the
    server stops; the server log is then copied to ``tmpdir``.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="tokenscale-pg-"))
    pg = EmbeddedPostgres(data_dir, port=0, settings=FAST_SETTINGS)

    def stop() -> None:
        try:
            pg.stop()
        finally:
            with contextlib.suppress(OSError):
                shutil.copyfile(pg.log_file, Path(tmpdir) / "postgres.log")
            shutil.rmtree(data_dir, ignore_errors=True)

    try:
        pg.start()
    except BaseException:
        stop()
        raise
    return Server(pg.conninfo, "postgres", stop, _postmaster_pid(pg.cluster_dir / "postmaster.pid"))


# -- TimescaleDB inside the trixie root ----------------------------------------------------------------


def _privileged(cmd: Sequence[str]) -> list[str]:
    return list(cmd) if os.geteuid() == 0 else ["sudo", "-n", *cmd]


def _run(cmd: Sequence[str], what: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({shlex.join(cmd)}):\n{(result.stderr or result.stdout).strip()}")
    return result


def _postgres_ids(root: Path) -> tuple[int, int]:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "postgres":
            return int(fields[2]), int(fields[3])
    raise RuntimeError(f"no user postgres in {root}/etc/passwd: rebuild the root (scripts/timescaledb-root)")


def _pg_bindir(root: Path) -> str:
    """The highest PostgreSQL version in the root, as a path inside it."""
    found = sorted(root.glob("usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError(f"no PostgreSQL in {root}: rebuild it (scripts/timescaledb-root)")
    return "/" + str(found[-1].parent.relative_to(root))


def _remove_stale_data_dirs(root: Path) -> None:
    """Delete data dirs of earlier runs whose server is gone (a killed test session leaves them)."""
    for directory in (root / "tmp").glob(_TSDB_TMP_PREFIX + "*"):
        try:
            if time.time() - directory.stat().st_mtime < 600:
                continue  # maybe another session's server, still starting
            pid = int((directory / "data" / "postmaster.pid").read_text().splitlines()[0])
        except FileNotFoundError:
            pid = 0
        except (OSError, ValueError, IndexError):
            continue  # unreadable: leave it alone
        if pid and Path(f"/proc/{pid}/root").resolve() == root:
            continue  # a live server of another session
        subprocess.run(_privileged(["rm", "-rf", "--one-file-system", str(directory)]), check=False)


def start_timescaledb(root: Path, tmpdir: Path, *, preload: bool = True) -> Server:
    """A TimescaleDB (Apache edition) server run in the Debian root built by scripts/timescaledb-root
    (with ``preload`` false: offering the extension without preloading it, a misconfigured server).

    Runs as the root's user ``postgres`` with ``chroot`` (so needs root, or sudo without a password);
    the data lives in the root's /tmp, the server listens on a free loopback port, and its log is
    copied to ``tmpdir`` when it stops. The extension itself is not created: migrations do that.
    """
    root = Path(root).resolve()
    if not (root / ROOT_MARKER).is_file():
        raise RuntimeError(f"{root} is not a complete TimescaleDB root: run scripts/timescaledb-root")
    uid, gid = _postgres_ids(root)
    bindir = _pg_bindir(root)
    _remove_stale_data_dirs(root)
    host_dir = Path(tempfile.mkdtemp(prefix=_TSDB_TMP_PREFIX, dir=root / "tmp"))
    _run(_privileged(["chown", f"{uid}:{gid}", str(host_dir)]), "chown of the TimescaleDB data dir")
    inner = "/tmp/" + host_dir.name  # the same directory as seen inside the root
    data, logfile = f"{inner}/data", f"{inner}/server.log"

    def in_root(*args: str) -> list[str]:
        env = ["env", "-i", "PATH=/usr/bin:/bin", "HOME=/var/lib/postgresql", "LC_ALL=C"]
        return _privileged(["chroot", f"--userspec={uid}:{gid}", f"--groups={gid}", str(root), *env, *args])

    def cleanup() -> None:
        with contextlib.suppress(OSError):
            shutil.copyfile(host_dir / "server.log", Path(tmpdir) / "timescaledb.log")
        subprocess.run(_privileged(["rm", "-rf", "--one-file-system", str(host_dir)]), check=False)

    try:
        initdb = [f"{bindir}/initdb", "-D", data, "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C"]
        _run(in_root(*initdb, "--no-sync"), "initdb in the TimescaleDB root")
        port = 0
        for attempt in range(5):
            port = free_port()
            options = [
                "-p", str(port), "-k", inner,
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"shared_preload_libraries={'timescaledb' if preload else ''}",
                "-c", "dynamic_shared_memory_type=mmap",
                "-c", "timescaledb.telemetry_level=off",
            ]  # fmt: skip
            for name, value in FAST_SETTINGS.items():
                options += ["-c", f"{name}={value}"]
            start = in_root(f"{bindir}/pg_ctl", "start", "-D", data, "-l", logfile, "-w", "-t", "60",
                            "-o", shlex.join(options))  # fmt: skip
            result = subprocess.run(start, capture_output=True, text=True, check=False, timeout=120)
            if result.returncode == 0:
                break
            server_log = (host_dir / "server.log").read_text(errors="replace")
            if attempt < 4 and "could not bind" in server_log:
                continue
            raise RuntimeError(f"TimescaleDB did not start:\n{result.stderr.strip()}\n{server_log[-3000:]}")
    except BaseException:
        cleanup()
        raise

    def stop() -> None:
        subprocess.run(
            in_root(f"{bindir}/pg_ctl", "stop", "-D", data, "-m", "fast", "-w", "-t", "60"),
            capture_output=True, check=False, timeout=120,
        )  # fmt: skip
        cleanup()

    conninfo = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}"
    server = Server(
        conninfo, "timescaledb-apache", stop, _postmaster_pid(host_dir / "data" / "postmaster.pid")
    )
    try:
        with psycopg.connect(server.url_for("postgres"), autocommit=True, connect_timeout=30) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    except BaseException:
        server.stop()
        raise
    return server
