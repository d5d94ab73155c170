"""The private PostgreSQL server of ``tokenscale serve``: finds the binaries, creates and runs a cluster."""

from __future__ import annotations

import atexit
import contextlib
import glob
import logging
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tokenscale.errors import TokenscaleError

__all__ = [
    "BINDIR_ENV",
    "DATABASE",
    "SEARCH_GLOBS",
    "SUPERUSER",
    "USER_ENV",
    "EmbeddedPostgres",
    "PostgresBinaries",
    "default_data_dir",
    "find_binaries",
    "free_port",
]

log = logging.getLogger(__name__)

DATABASE = "tokenscale"
"""The database created in every embedded cluster."""

SUPERUSER = "tokenscale"
"""The cluster's bootstrap superuser (the user name in :attr:`EmbeddedPostgres.conninfo`)."""

BINDIR_ENV = "TOKENSCALE_PG_BINDIR"
"""Environment variable naming the directory of ``initdb``/``pg_ctl``/``postgres`` (skips the search)."""

USER_ENV = "TOKENSCALE_PG_USER"
"""When running as root: the system user to run the server as (default ``postgres``)."""

SEARCH_GLOBS: tuple[str, ...] = (
    "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
    "/usr/pgsql-*/bin",  # PGDG packages on RHEL, Fedora
    "/opt/homebrew/opt/postgresql@*/bin",  # Homebrew, Apple silicon
    "/usr/local/opt/postgresql@*/bin",  # Homebrew, Intel
)
"""Where server binaries are looked for besides ``$PATH`` and ``pg_config --bindir``."""

_TOOLS = ("initdb", "pg_ctl", "postgres")
_INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install them "
    f"(Debian/Ubuntu: apt-get install postgresql; Fedora: dnf install postgresql-server; "
    f"macOS: brew install postgresql) or set {BINDIR_ENV} to their directory"
)
_PG_CTL_TIMEOUT = 60
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes; leave room for ".s.PGSQL.NNNNN"
_HBA = """\
# Written by tokenscale: a password (SCRAM) on the Unix socket and on loopback only; nothing else may
# connect. The password is in the data directory's credentials file, readable by its owner alone.
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
host  all all ::1/128      scram-sha-256
"""
_LEGACY_HBA_MARK = "# Written by tokenscale: trust on"
#: The file holding the superuser's password, mode 0600, in the data directory.
CREDENTIALS_FILE = "credentials"


def default_data_dir() -> Path:
    """``$TOKENSCALE_DATA_DIR``, else ``$XDG_DATA_HOME/tokenscale``, else ``~/.local/share/tokenscale``
    (``/var/lib/tokenscale`` for root, whose home the server's own user could not enter)."""
    explicit = os.environ.get("TOKENSCALE_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return Path(xdg).expanduser() / "tokenscale"
    if os.geteuid() == 0:
        return Path("/var/lib/tokenscale")
    return Path.home() / ".local" / "share" / "tokenscale"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class PostgresBinaries:
    """A directory holding ``initdb``, ``pg_ctl`` and ``postgres`` of one PostgreSQL version."""

    bindir: Path
    version: tuple[int, ...]

    @property
    def major(self) -> int:
        return self.version[0]

    def tool(self, name: str) -> str:
        return str(self.bindir / name)


def _has_tools(directory: Path) -> bool:
    return all(os.access(directory / tool, os.X_OK) and (directory / tool).is_file() for tool in _TOOLS)


def _version_of(bindir: Path) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError:
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", out)
    if match is None:
        return None
    return tuple(int(part) for part in match.groups() if part is not None)


def _candidate_dirs() -> list[Path]:
    found: list[Path] = []
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if entry:
            initdb = Path(entry) / "initdb"
            if initdb.is_file():
                found.append(initdb.resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            bindir = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
            if bindir:
                found.append(Path(bindir))
    for pattern in SEARCH_GLOBS:
        found.extend(Path(match) for match in sorted(glob.glob(pattern)))
    unique: dict[Path, None] = {}
    for directory in found:
        with contextlib.suppress(OSError):
            unique.setdefault(directory.resolve(), None)
    return list(unique)


def find_binaries(major: int | None = None) -> PostgresBinaries:
    """The PostgreSQL server binaries to use: the highest version found, or exactly ``major``.

    Searches ``$TOKENSCALE_PG_BINDIR`` alone when set, else ``$PATH``, ``pg_config --bindir`` and
    :data:`SEARCH_GLOBS`. Raises :class:`TokenscaleError` saying what to install when none fit.
    """
    explicit = os.environ.get(BINDIR_ENV)
    dirs = [Path(explicit)] if explicit else _candidate_dirs()
    found: list[PostgresBinaries] = []
    for directory in dirs:
        if _has_tools(directory):
            version = _version_of(directory)
            if version is not None:
                found.append(PostgresBinaries(directory, version))
    if explicit and not found:
        raise TokenscaleError(f"{BINDIR_ENV}={explicit} does not hold working initdb, pg_ctl and postgres")
    if major is not None:
        found = [binaries for binaries in found if binaries.major == major]
        if not found:
            raise TokenscaleError(
                f"the existing cluster needs PostgreSQL {major} server binaries, which are not installed "
                f"(Debian/Ubuntu: apt-get install postgresql-{major}; or set {BINDIR_ENV})"
            )
    if not found:
        raise TokenscaleError(_INSTALL_HINT)
    return max(found, key=lambda binaries: binaries.version)  # max() keeps the first of equals


@dataclass(frozen=True)
class _Account:
    """The unprivileged user the server runs as when we are root."""

    uid: int
    gid: int
    home: str

    def can_search(self, path: Path) -> bool:
        st = path.stat()
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid == self.gid:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)


def _account_named(name: str) -> _Account | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return _Account(entry.pw_uid, entry.pw_gid, entry.pw_dir if os.path.isdir(entry.pw_dir) else "/")


def _server_account(cluster: Path) -> _Account | None:
    """None when not root; else whom to run PostgreSQL as (it refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(FileNotFoundError):
        st = cluster.stat()
        if st.st_uid != 0:  # an existing cluster: run as its owner
            try:
                home = pwd.getpwuid(st.st_uid).pw_dir
            except KeyError:
                home = "/"
            return _Account(st.st_uid, st.st_gid, home if os.path.isdir(home) else "/")
    wanted = os.environ.get(USER_ENV)
    if wanted:
        account = _account_named(wanted)
        if account is None:
            raise TokenscaleError(f"{USER_ENV}={wanted}: no such user")
        return account
    account = _account_named("postgres")
    if account is None and shutil.which("useradd") is not None:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", "--comment", "tokenscale PostgreSQL", "tokenscale"],
            capture_output=True, check=False,
        )  # fmt: skip
        account = _account_named("tokenscale")
    if account is None:
        account = _account_named("nobody")
    if account is None:
        raise TokenscaleError(
            "running as root, and no unprivileged user to run PostgreSQL as: create 'postgres'"
        )
    return account


def _tail(path: Path, start: int = 0, lines: int = 15) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(start)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _postmaster_pid(pid_file: Path) -> int:
    return int(pid_file.read_text().split()[0])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedPostgres:
    """A PostgreSQL cluster of our own under ``data_dir``, started and stopped by us.

    Layout: the cluster in ``data_dir/postgres``, the server log in ``data_dir/postgres.log``, the Unix
    socket in ``data_dir/run``. :meth:`start` creates the cluster once (password authentication on the
    socket and loopback only, superuser and database ``tokenscale``), then reuses it. Run as root, the
    server runs as the user ``postgres`` (or the cluster's owner), since PostgreSQL refuses root.
    Usable as a context manager.
    """

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        settings: Mapping[str, str] | None = None,
        stop_adopted: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.host = host
        self.requested_port = port
        self.settings: dict[str, str] = dict(settings or {})
        self.cluster_dir = self.data_dir / "postgres"
        self.log_file = self.data_dir / "postgres.log"
        self._socket_dir = self.data_dir / "run"
        self._temp_socket_dir: Path | None = None
        self._port: int | None = None
        self._running = False
        #: Whether :meth:`start` found our server already running and used it.
        self.adopted = False
        #: Whether :meth:`stop` stops an adopted server too. Off by default, so that a short command
        #: (``tokenscale status``) does not stop the server of a ``tokenscale serve`` still running.
        self.stop_adopted = stop_adopted
        self._binaries: PostgresBinaries | None = None
        self._account: _Account | None = None
        self._password: str | None = None

    # -- public API ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    @property
    def port(self) -> int:
        if self._port is None:
            raise TokenscaleError("the embedded PostgreSQL server is not started")
        return self._port

    @property
    def socket_dir(self) -> Path:
        return self._temp_socket_dir or self._socket_dir

    @property
    def conninfo(self) -> str:
        """libpq URL of the ``tokenscale`` database, e.g. ``postgresql://tokenscale@127.0.0.1:5432/tokenscale``."""
        return self.conninfo_for(DATABASE)

    def conninfo_for(self, dbname: str) -> str:
        """libpq URL of another database of this server (with the superuser's password)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{SUPERUSER}:{self.password}@{host}:{self.port}/{dbname}"

    @property
    def address(self) -> str:
        """``host:port`` of the server, for messages (the conninfo holds the password)."""
        return f"{self.host}:{self.port}"

    @property
    def credentials_file(self) -> Path:
        return self.data_dir / CREDENTIALS_FILE

    @property
    def password(self) -> str:
        """The superuser's password, created with the cluster (see :data:`CREDENTIALS_FILE`)."""
        if self._password is None:
            try:
                self._password = self.credentials_file.read_text(encoding="ascii").strip()
            except FileNotFoundError:
                raise TokenscaleError(
                    f"{self.credentials_file} is missing: the embedded PostgreSQL was not started"
                ) from None
        return self._password

    def start(self) -> None:
        """Create the cluster if needed and start the server; returns when it accepts connections."""
        if self._running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._account = _server_account(self.cluster_dir)
        major = self._cluster_major()
        self._binaries = find_binaries(major)
        if self._account is not None:
            self._grant_access()
        password = self._ensure_credentials()
        if major is None:
            self._initdb(password)
        self._prepare_socket_dir()
        self.adopted = self._adopt_or_clear_stale()
        if not self.adopted:
            self._start_server()
        self._running = True
        atexit.register(self.stop)
        try:
            self._require_password(password)
            self._ensure_database()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are rolled back). Harmless when not running."""
        if not self._running:
            return
        self._running = False
        atexit.unregister(self.stop)
        if self.adopted and not self.stop_adopted:
            log.info("leaving the PostgreSQL server we found running (port %d) as it was", self.port)
            return
        result = self._pg_ctl("stop", "-m", "fast")
        pid_file = self.cluster_dir / "postmaster.pid"
        if result.returncode != 0 and pid_file.exists():
            # pg_ctl may have failed because its user can no longer reach the cluster (e.g. an
            # ancestor's permissions changed); signal the postmaster ourselves: SIGINT = fast shutdown.
            log.warning("pg_ctl stop failed (%s); signalling the postmaster", result.stderr.strip())
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(pid_file.read_text().split()[0])
                if self._is_our_postmaster(pid):
                    os.kill(pid, signal.SIGINT)
                    deadline = time.monotonic() + _PG_CTL_TIMEOUT
                    while _pid_alive(pid) and time.monotonic() < deadline:
                        time.sleep(0.05)
                    if _pid_alive(pid):
                        os.kill(pid, signal.SIGQUIT)  # immediate shutdown
        if self._temp_socket_dir is not None:
            shutil.rmtree(self._temp_socket_dir, ignore_errors=True)
            self._temp_socket_dir = None

    def alive(self) -> bool:
        """Whether the server's postmaster is running (its pid file names a live process of ours)."""
        try:
            pid = _postmaster_pid(self.cluster_dir / "postmaster.pid")
        except (OSError, ValueError, IndexError):
            return False
        return _pid_alive(pid) and self._is_our_postmaster(pid)

    def restart_if_dead(self) -> bool:
        """Start the server again, on the same port, if it died; True if it had to."""
        if not self._running or self.alive():
            return False
        log.error("the embedded PostgreSQL server is gone (see %s): starting it again", self.log_file)
        self.requested_port = self.port  # the service's connections name this port
        self._adopt_or_clear_stale()
        self._start_server()
        log.info("the embedded PostgreSQL server is running again on port %d", self.port)
        return True

    def supervise(self, interval: float = 2.0) -> threading.Event:
        """Check every ``interval`` s in a background thread that the server runs, restarting it when
        it died; set the returned event to stop watching."""
        done = threading.Event()

        def watch() -> None:
            while not done.wait(interval):
                try:
                    self.restart_if_dead()
                except Exception:
                    log.exception("restarting the embedded PostgreSQL server failed; trying again")

        threading.Thread(target=watch, name="tokenscale-pg-supervisor", daemon=True).start()
        return done

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running on port {self._port}" if self._running else "stopped"
        return f"EmbeddedPostgres({str(self.data_dir)!r}, {state})"

    # -- running commands ---------------------------------------------------------------------------

    def _run(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        if self._account is not None:
            env["HOME"] = self._account.home
            env.pop("XDG_RUNTIME_DIR", None)
            return subprocess.run(
                list(args), capture_output=True, text=True, env=env, cwd="/", check=False,
                user=self._account.uid, group=self._account.gid, extra_groups=[], umask=0o077,
            )  # fmt: skip
        return subprocess.run(list(args), capture_output=True, text=True, env=env, cwd="/", check=False)

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert self._binaries is not None
        return self._run(
            [
                self._binaries.tool("pg_ctl"),
                *args,
                "-D",
                str(self.cluster_dir),
                "-w",
                "-t",
                str(_PG_CTL_TIMEOUT),
            ]
        )

    def _chown(self, path: Path) -> None:
        if self._account is not None:
            os.chown(path, self._account.uid, self._account.gid)

    # -- steps of start() ---------------------------------------------------------------------------

    def _cluster_major(self) -> int | None:
        try:
            return int((self.cluster_dir / "PG_VERSION").read_text().strip().split(".")[0])
        except FileNotFoundError:
            if self.cluster_dir.exists():
                raise TokenscaleError(
                    f"{self.cluster_dir} exists but is no PostgreSQL cluster (no PG_VERSION): move it away"
                ) from None
            return None
        except (OSError, ValueError) as exc:
            raise TokenscaleError(f"cannot read {self.cluster_dir / 'PG_VERSION'}: {exc}") from exc

    def _grant_access(self) -> None:
        """As root: let the server's user reach the data dir (search permission on each ancestor)."""
        assert self._account is not None
        for directory in [*reversed(self.data_dir.parents), self.data_dir]:
            if not self._account.can_search(directory):
                mode = directory.stat().st_mode
                log.warning(
                    "adding search permission (o+x) to %s so PostgreSQL's user can reach its data", directory
                )
                os.chmod(directory, stat.S_IMODE(mode) | stat.S_IXOTH)

    def _ensure_credentials(self) -> str:
        """The superuser's password, created (random, mode 0600, owned by whoever runs tokenscale)
        the first time; the data directory itself is made private to its owner."""
        path = self.credentials_file
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{CREDENTIALS_FILE}.tmp")
            temporary.unlink(missing_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
            temporary.rename(path)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("%s was readable by others (mode %o): made 0600", path, mode)
            os.chmod(path, 0o600)
        self._password = None
        return self.password

    def _require_password(self, password: str) -> None:
        """A cluster created with trust authentication (older tokenscale) gets the password and the
        password-only pg_hba.conf, then reloads its configuration."""
        hba = self.cluster_dir / "pg_hba.conf"
        try:
            legacy = hba.read_text().startswith(_LEGACY_HBA_MARK)
        except PermissionError:
            legacy = False
        if not legacy:
            return
        import psycopg  # noqa: PLC0415
        from psycopg import sql  # noqa: PLC0415

        host = f"[{self.host}]" if ":" in self.host else self.host
        trusted = f"postgresql://{SUPERUSER}@{host}:{self.port}/postgres"
        with psycopg.connect(trusted, autocommit=True, connect_timeout=30) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(SUPERUSER), sql.Literal(password))
            )
            hba.write_text(_HBA)
            conn.execute("SELECT pg_reload_conf()")
        log.info("the embedded PostgreSQL now requires its password (%s)", self.credentials_file)

    def _initdb(self, password: str) -> None:
        """Create the cluster in a scratch directory, then rename it: a cluster dir is always complete."""
        assert self._binaries is not None
        scratch = self.data_dir / "postgres.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        self._chown(scratch)
        pwfile = scratch / "pwfile"  # read by initdb (the server's user), removed before the rename
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(password + "\n")
        self._chown(pwfile)
        data = scratch / "data"
        args = [
            self._binaries.tool("initdb"), "-D", str(data), "-U", SUPERUSER,
            "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C",
        ]  # fmt: skip
        if self.settings.get("fsync") == "off":
            args.append("--no-sync")
        result = self._run(args)
        pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise TokenscaleError(f"initdb failed: {(result.stderr or result.stdout).strip()}")
        hba = data / "pg_hba.conf"
        hba.write_text(_HBA)
        self._chown(hba)
        os.chmod(hba, 0o600)
        data.rename(self.cluster_dir)
        shutil.rmtree(scratch, ignore_errors=True)
        log.info("created PostgreSQL %s cluster in %s", self._binaries.major, self.cluster_dir)

    def _prepare_socket_dir(self) -> None:
        directory = self._socket_dir
        if len(str(directory)) > _MAX_SOCKET_PATH - 15 or re.search(r"[\s,'\"\\]", str(directory)):
            directory = Path(tempfile.mkdtemp(prefix="tokenscale-pg-"))
            self._temp_socket_dir = directory
        directory.mkdir(mode=0o700, exist_ok=True)
        self._chown(directory)
        if not self.log_file.exists():
            self.log_file.touch(mode=0o600)
        self._chown(self.log_file)

    def _adopt_or_clear_stale(self) -> bool:
        """Handle a postmaster.pid left behind; True when a live server of ours was adopted."""
        pid_file = self.cluster_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except FileNotFoundError:
            return False
        pid = int(lines[0]) if lines and lines[0].strip().isdigit() else 0
        if pid > 0 and _pid_alive(pid) and self._is_our_postmaster(pid):
            port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else 0
            listen = lines[5].strip() if len(lines) > 5 else ""
            ready = len(lines) > 7 and lines[7].strip() == "ready"
            if ready and port and listen == self.host and self.requested_port in (0, port):
                log.info("reusing PostgreSQL server left running (pid %d, port %d)", pid, port)
                self._port = port
                return True
            log.info("stopping PostgreSQL server left running (pid %d) to restart it as asked", pid)
            result = self._pg_ctl("stop", "-m", "fast")
            if result.returncode != 0:
                raise TokenscaleError(f"cannot stop the leftover server (pid {pid}): {result.stderr.strip()}")
            return False
        log.info("removing stale %s (pid %d is not our server)", pid_file, pid)
        pid_file.unlink(missing_ok=True)
        for leftover in self.socket_dir.glob(".s.PGSQL.*"):
            leftover.unlink(missing_ok=True)
        return False

    def _is_our_postmaster(self, pid: int) -> bool:
        """Whether ``pid`` is a postmaster serving this cluster (it runs with the cluster as cwd)."""
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except FileNotFoundError:
            return not Path("/proc/self").exists()  # no /proc (not Linux): trust the pid file
        except PermissionError:
            return False  # we can read the cwd of every server we started: this one is someone else's
        return Path(cwd) == self.cluster_dir.resolve()

    @property
    def port_file(self) -> Path:
        """Where the port of the last start is remembered (``data_dir/port``)."""
        return self.data_dir / "port"

    def _remembered_port(self) -> int | None:
        try:
            port = int(self.port_file.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None
        if not 0 < port < 65536:
            return None
        try:  # still free? (else a fresh one, without a failed start first)
            with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET) as sock:
                # As PostgreSQL binds: connections of the last run in TIME_WAIT do not block it.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.host, port))
        except OSError:
            return None
        return port

    def _start_server(self) -> None:
        assert self._binaries is not None
        attempts = 5 if self.requested_port == 0 else 1
        # The port of the last start (remembered in the data directory) is tried first, so that the
        # database URL stays the same from one start to the next.
        remembered = self._remembered_port() if self.requested_port == 0 else None
        for attempt in range(attempts):
            port = self.requested_port or (remembered if attempt == 0 and remembered else 0)
            port = port or free_port(self.host)
            options = [
                "-p", str(port), "-c", f"listen_addresses={self.host}",
                "-c", f"unix_socket_directories={self.socket_dir}",
            ]  # fmt: skip
            for name, value in self.settings.items():
                options += ["-c", f"{name}={value}"]
            log_start = self.log_file.stat().st_size
            result = self._pg_ctl("start", "-l", str(self.log_file), "-o", shlex.join(options))
            if result.returncode == 0:
                self._port = port
                with contextlib.suppress(OSError):
                    self.port_file.write_text(f"{port}\n", encoding="utf-8")
                return
            server_log = _tail(self.log_file, log_start)
            # A port taken meanwhile, or a start that failed before the server wrote a word (pg_ctl
            # itself failing, e.g. under load): try again on another port.
            if attempt + 1 < attempts and ("could not bind" in server_log or not server_log.strip()):
                log.info("PostgreSQL did not start on port %d; trying another", port)
                continue
            detail = server_log or (result.stderr or result.stdout).strip()
            raise TokenscaleError(f"PostgreSQL did not start (log: {self.log_file}):\n{detail}")

    def _ensure_database(self) -> None:
        import psycopg  # noqa: PLC0415 - keep `import tokenscale.embedded` light
        from psycopg import sql  # noqa: PLC0415

        with psycopg.connect(self.conninfo_for("postgres"), autocommit=True, connect_timeout=30) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
