"""The ``tokenscale`` command: serve, migrate, status, refresh (and the commands of other modules)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tokenscale import __version__
from tokenscale.config import ConfigError, Settings, load_settings, misspelt_env_vars
from tokenscale.errors import TokenscaleError

__all__ = ["main"]

log = logging.getLogger("tokenscale")


def _add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL/TimescaleDB URL (env TOKENSCALE_DATABASE_URL); "
        "default: an embedded PostgreSQL under --data-dir",
    )
    parser.add_argument(
        "--data-dir", type=Path, metavar="DIR", help="local state directory (env TOKENSCALE_DATA_DIR)"
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML settings file (env TOKENSCALE_CONFIG)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenscale",
        description="An OpenTelemetry-native ledger of AI usage: tokens and cost per user, team, tool, "
        "model and day.",
    )
    parser.add_argument("--version", action="version", version=f"tokenscale {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="receive OTLP (gRPC and HTTP) and store AI usage",
        description="Receive OTLP metrics, traces and logs over gRPC and HTTP and store AI usage. "
        "With no database configured, starts (and on exit stops) an embedded PostgreSQL.",
    )
    _add_database_options(serve)
    serve.add_argument("--host", help="bind address (env TOKENSCALE_HOST; default 127.0.0.1)")
    serve.add_argument(
        "--grpc-port", type=int, help="OTLP/gRPC port (env TOKENSCALE_GRPC_PORT; default 4317)"
    )
    serve.add_argument(
        "--http-port", type=int, help="OTLP/HTTP port (env TOKENSCALE_HTTP_PORT; default 4318)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="receiver processes sharing both ports (env TOKENSCALE_WORKERS; default 1)",
    )
    serve.add_argument(
        "--require-auth",
        action="store_const",
        const=True,
        help="require an API key for every request, even on loopback (env TOKENSCALE_REQUIRE_AUTH)",
    )

    migrate = sub.add_parser("migrate", help="create or upgrade the database schema")
    _add_database_options(migrate)

    status = sub.add_parser("status", help="show the back end, versions and row counts")
    _add_database_options(status)

    refresh = sub.add_parser(
        "refresh",
        help="refresh the continuous aggregates over a time range (TimescaleDB community)",
        description="Refresh usage_daily and usage_hourly over [FROM, TO): every whole bucket in "
        "the range, never the current one (it stays real-time), never a day retention may have "
        "dropped. Default: the late-data horizon (late_data_days) up to now. Only needed after "
        "changing raw events by hand: the service refreshes what it writes.",
    )
    _add_database_options(refresh)
    refresh.add_argument(
        "--from", dest="start", type=_moment, metavar="WHEN", help="start: YYYY-MM-DD or ISO 8601 time (UTC)"
    )
    refresh.add_argument(
        "--to", dest="end", type=_moment, metavar="WHEN", help="end (exclusive); default now"
    )

    from tokenscale.api.commands import add_subcommands as add_key_and_budget_commands  # noqa: PLC0415
    from tokenscale.commands import add_subcommands  # noqa: PLC0415
    from tokenscale.commands.alerts import add_subcommands as add_alert_commands  # noqa: PLC0415
    from tokenscale.commands.prices import add_subcommands as add_price_commands  # noqa: PLC0415

    add_subcommands(sub, _add_database_options)
    add_key_and_budget_commands(sub, _add_database_options)
    add_price_commands(sub, _add_database_options)
    # Listed here; run by main() before anything else (see _HOOK): `tokenscale hook --help` has its own.
    sub.add_parser(
        "hook",
        help="a coding assistant's hook: block or warn when a budget is spent (fails open)",
        add_help=False,
    )
    add_alert_commands(sub, _add_database_options)
    return parser


def _moment(text: str) -> datetime:
    """A --from/--to value: a UTC date or an ISO 8601 time (UTC unless it names its offset)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD) or ISO 8601 time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: getattr(args, key, None)
        for key in ("database_url", "data_dir", "host", "grpc_port", "http_port", "workers", "require_auth")
    }
    return load_settings(overrides, config_file=getattr(args, "config", None))


@contextlib.contextmanager
def _database(settings: Settings, *, owner: bool = False) -> Iterator[str]:
    """The configured database URL, or an embedded PostgreSQL started for the duration.

    Only the ``owner`` (``serve``) stops an embedded server it found already running; a short
    command leaves the server of a running ``serve`` alone.
    """
    if settings.database_url:
        yield _with_connect_timeout(settings.database_url, settings.connect_timeout)
        return
    from tokenscale.embedded import EmbeddedPostgres  # noqa: PLC0415 - only when embedded

    server = EmbeddedPostgres(settings.data_dir, stop_adopted=owner)
    log.info("starting the embedded PostgreSQL in %s", server.data_dir)
    server.start()
    # The service keeps its server running: restarted (on the same port) if it dies.
    supervisor = server.supervise() if owner else None
    try:
        log.info(
            "embedded PostgreSQL listening at %s (password in %s)", server.address, server.credentials_file
        )
        yield _with_connect_timeout(server.conninfo, settings.connect_timeout)
    finally:
        if supervisor is not None:
            supervisor.set()
        server.stop()


def _with_connect_timeout(url: str, seconds: float) -> str:
    """``url`` with libpq's ``connect_timeout`` (unless it sets one): a database host that accepts
    connections and never answers is then reported within that time instead of hanging."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: PLC0415

    if "connect_timeout" in conninfo_to_dict(url):
        return url
    return make_conninfo(url, connect_timeout=max(2, round(seconds)))


def _migrate(url: str) -> Any:
    from tokenscale.store import migrate  # noqa: PLC0415

    report = migrate(url)
    applied = ", ".join(f"{v:04d}" for v in report.applied) or "none"
    log.info("schema at version %04d on %s (applied now: %s)", report.current, report.backend, applied)
    return report.backend


def _apply_policies(url: str, backend: Any, settings: Settings) -> None:
    import psycopg  # noqa: PLC0415

    from tokenscale.store.retention import apply_policies  # noqa: PLC0415

    with psycopg.connect(url, autocommit=True) as conn:
        report = apply_policies(
            conn,
            backend,
            retention_days=settings.retention_days,
            compress_after_days=settings.compress_after_days,
            late_data_days=settings.late_data_days,
        )
    log.info("raw usage events: retention %s; compression %s", report.retention, report.compression)


async def _enforce_retention_hourly(pool: Any, backend: Any, retention_days: int) -> None:
    from tokenscale.store.retention import enforce_retention  # noqa: PLC0415

    def run() -> None:
        with pool.connection() as conn:
            enforce_retention(conn, backend, retention_days)

    while True:
        try:
            await asyncio.to_thread(run)
        except Exception:
            log.exception("retention run failed; trying again in an hour")
        await asyncio.sleep(3600)


def _cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    from tokenscale.commands import run_report  # noqa: PLC0415

    with _database(settings) as url:
        return run_report(args, url)


def _cmd_keys_or_budgets(settings: Settings, args: argparse.Namespace) -> int:
    from tokenscale.api.commands import run_command  # noqa: PLC0415

    with _database(settings) as url:
        _migrate(url)
        return run_command(args, url, sys.stdout)


def _cmd_prices(settings: Settings, args: argparse.Namespace) -> int:
    from tokenscale.commands.prices import run_prices, run_reprice  # noqa: PLC0415

    with _database(settings) as url:
        _migrate(url)
        return (run_reprice if args.command == "reprice" else run_prices)(args, url)


def _cmd_alerts(settings: Settings, args: argparse.Namespace) -> int:
    from tokenscale.commands.alerts import run_alerts  # noqa: PLC0415

    with _database(settings) as url:
        _migrate(url)
        return run_alerts(args, url, sys.stdout, settings)


def _cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from tokenscale.commands import run_demo  # noqa: PLC0415

    return run_demo(args)


def _cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    with _database(settings) as url:
        _migrate(url)
    return 0


def _cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg  # noqa: PLC0415

    from tokenscale.store.backend import recorded_backend  # noqa: PLC0415

    with _database(settings) as url, psycopg.connect(url) as conn:
        backend = recorded_backend(conn)
        version = conn.execute("SHOW server_version").fetchone()
        print(f"database:     PostgreSQL {version[0] if version else '?'}")
        embedded = (
            ""
            if settings.database_url
            else f"  (while `tokenscale serve` runs; PGPASSWORD from {settings.data_dir / 'credentials'})"
        )
        print(f"psql:         {_psql_command(url)}{embedded}")
        ext = conn.execute(
            "SELECT extversion, current_setting('timescaledb.license', true) FROM pg_extension "
            "WHERE extname = 'timescaledb'"
        ).fetchone()
        if ext is not None:
            print(f"timescaledb:  {ext[0]} (license {ext[1]})")
        if backend is None:
            print("schema:       not created (run `tokenscale migrate`)")
            return 1
        row = conn.execute("SELECT max(version) FROM tokenscale.schema_migrations").fetchone()
        print(f"back end:     {backend}")
        print(f"schema:       version {row[0] if row else 0:04d}")
        for table in ("usage_events", "usage_daily", "usage_hourly"):
            count = conn.execute(
                psycopg.sql.SQL("SELECT count(*) FROM tokenscale.{}").format(psycopg.sql.Identifier(table))
            ).fetchone()
            print(f"{table + ':':<13} {count[0] if count else 0} rows")
        if not backend.keeps_rollups:
            for job in conn.execute(
                "SELECT proc_name, schedule_interval::text, hypertable_name "
                "FROM timescaledb_information.jobs "
                "WHERE hypertable_schema = 'tokenscale' ORDER BY job_id"
            ):
                print(f"policy:       {job[0]} every {job[1]} on {job[2]}")
    return 0


def _cmd_refresh(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg  # noqa: PLC0415

    from tokenscale.store.backend import recorded_backend  # noqa: PLC0415
    from tokenscale.store.refresh import (  # noqa: PLC0415
        plan_refresh,
        refresh,
        retention_safe_start,
        stored_ranges,
        within_stored,
    )

    now = datetime.now(UTC)
    start = args.start or now - timedelta(days=settings.late_data_days)
    end = args.end or now
    if start >= end:
        print("tokenscale: --from must be before --to", file=sys.stderr)
        return 2
    with _database(settings) as url, psycopg.connect(url, autocommit=True) as conn:
        backend = recorded_backend(conn)
        if backend is None:
            print("tokenscale: the schema is not created (run `tokenscale migrate`)", file=sys.stderr)
            return 1
        if backend.keeps_rollups:
            print(
                f"nothing to refresh: on {backend} tokenscale keeps usage_daily and usage_hourly exact itself"
            )
            return 0
        safe = retention_safe_start(now, settings.retention_days)
        if safe is not None and start < safe:
            print(
                f"from {safe:%Y-%m-%d}: raw events before it may have been dropped by retention "
                f"({settings.retention_days} days), and a refresh there would erase their aggregates"
            )
        # plan_refresh covers the buckets holding its first and last moments: `end` is exclusive.
        # Only days usage_events still holds: a dropped day's aggregates are never recomputed.
        windows = within_stored(
            plan_refresh(
                start, end - timedelta(microseconds=1), now=now, retention_days=settings.retention_days
            ),
            stored_ranges(conn),
        )
        started = time.monotonic()
        refresh(conn, windows)
        for window in windows:
            print(f"refreshed {window}")
        if not windows:
            print("nothing to refresh: the range holds no stored day before the current buckets")
        log.info("refresh took %.1f s", time.monotonic() - started)
    return 0


def _psql_command(url: str) -> str:
    """The ``psql`` command line that opens ``url`` (a URL or key=value conninfo) as a URL: its
    password, if any, left out (psql asks, or reads PGPASSWORD), and so is the connect timeout."""
    import shlex  # noqa: PLC0415
    from urllib.parse import quote, urlencode  # noqa: PLC0415

    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

    params = {k: str(v) for k, v in conninfo_to_dict(url).items()}
    params.pop("password", None)
    params.pop("connect_timeout", None)
    user = params.pop("user", "")
    host = params.pop("host", "")
    port = params.pop("port", "")
    dbname = params.pop("dbname", "")
    if host.startswith("/"):  # a socket directory: only as a parameter
        params["host"], host = host, ""
    host = f"[{host}]" if ":" in host else host
    netloc = (f"{quote(user, safe='')}@" if user else "") + host + (f":{port}" if port else "")
    query = f"?{urlencode(params)}" if params else ""
    target = f"postgresql://{netloc}/{quote(dbname, safe='')}{query}"
    return f"psql {shlex.quote(target)}"


def _cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    with _database(settings, owner=True) as url:
        backend = _migrate(url)
        _apply_policies(url, backend, settings)
        if settings.workers > 1:
            from tokenscale.workers import serve_workers  # noqa: PLC0415

            return serve_workers(settings, url, backend)
        with _service(settings, url, backend) as (receiver, retention):
            asyncio.run(_serve(receiver, retention() if retention is not None else None))
    return 0


@contextlib.contextmanager
def _service(
    settings: Settings, url: str, backend: Any, *, worker: int | None = None
) -> Iterator[tuple[Any, Callable[[], Coroutine[Any, Any, None]] | None]]:
    """Everything ``serve`` serves, composed on ``url`` (already migrated): the receiver (not yet
    started) with every route and service, and its background task: the hourly retention (if one
    is due) and the budget alerts (unless ``alert_interval_seconds`` is 0).

    ``worker`` is the index of one of several processes of ``serve --workers N``: its receiver binds
    with SO_REUSEPORT, its ``/metrics`` names it, and only worker 1 runs the background tasks.
    On TimescaleDB community each process runs a refresher of the continuous aggregates its exports
    touch. The refresher and the database pools are closed when the block ends."""
    from tokenscale.api.grpc_service import UsageApiServicer  # noqa: PLC0415
    from tokenscale.api.http import create_api_routes  # noqa: PLC0415
    from tokenscale.api.service import UsageApiService  # noqa: PLC0415
    from tokenscale.auth import AuthPolicy  # noqa: PLC0415
    from tokenscale.dashboard import create_dashboard_routes  # noqa: PLC0415
    from tokenscale.mapping import MappingOptions  # noqa: PLC0415
    from tokenscale.mapping.limits import Limits  # noqa: PLC0415
    from tokenscale.pipeline import ExportPipeline  # noqa: PLC0415
    from tokenscale.receiver.server import Receiver  # noqa: PLC0415
    from tokenscale.receiver.spool import Spool  # noqa: PLC0415
    from tokenscale.selfmetrics import (  # noqa: PLC0415
        HttpTransportMiddleware,
        InstrumentedPipeline,
        InstrumentedWriter,
        Registry,
        create_health_routes,
    )
    from tokenscale.store.attributes import keep_keys  # noqa: PLC0415
    from tokenscale.store.prices import PriceBookCache  # noqa: PLC0415
    from tokenscale.store.refresh import Refresher  # noqa: PLC0415
    from tokenscale.store.writer import UsageWriter, open_pool  # noqa: PLC0415

    pool = open_pool(url, connect_timeout=settings.connect_timeout)
    spool: Any = None
    # Reads (API, dashboard, key look-ups, readiness) get their own pool: never behind ingest.
    read_pool = open_pool(url, max_size=4, connect_timeout=settings.connect_timeout)
    stack = contextlib.ExitStack()
    try:
        # A worker's samples carry worker="K": scrapes of the shared port reach any worker, and each
        # worker's counters must stay series of their own.
        registry = Registry(const_labels={"worker": str(worker)} if worker is not None else None)
        if worker is not None:
            registry.gauge(
                "tokenscale_worker_info",
                "This process of `tokenscale serve --workers N` (every other metric counts this "
                "process alone).",
                ("pid",),
            ).labels(str(os.getpid())).set(1)
        if not backend.keeps_rollups:
            # Continuous aggregates: the buckets every export touches are refreshed after its commit.
            refresher = Refresher(
                url, late_data_days=settings.late_data_days, retention_days=settings.retention_days
            ).start()
            stack.callback(refresher.close)
            on_commit = refresher.note
        else:
            on_commit = None
        # Half the export timeout for a pooled connection: an export the database cannot take is
        # then still spooled (or answered UNAVAILABLE) within the export timeout.
        wait = settings.export_timeout / 2
        # Team budgets sum usage by this attribute: stored even where other attributes are not.
        keep_keys([settings.budget_team_attribute])
        writer = InstrumentedWriter(
            UsageWriter(
                pool,
                timeout=wait,
                prices=PriceBookCache(read_pool),
                on_commit=on_commit,
                keep_attributes=settings.keep_attributes,
            ),
            registry,
        )
        options = MappingOptions(capture_content=settings.capture_content)
        limits = Limits(
            max_identity_bytes=settings.max_identity_bytes,
            max_attribute_bytes=settings.max_attribute_bytes,
            max_attributes=settings.max_attributes,
            max_cost_usd=settings.max_cost_usd,
        )
        if settings.spool_max_bytes:
            spool = Spool(settings.data_dir / "spool", max_bytes=settings.spool_max_bytes)
        exports = ExportPipeline(writer, options, limits, spool, late_data_days=settings.late_data_days)
        pipeline = InstrumentedPipeline(exports, registry)
        # A key lookup waits a quarter of the export timeout: the write's wait must fit in it too.
        auth = AuthPolicy.for_bind(
            read_pool, settings.host, require_auth=settings.require_auth, timeout=settings.export_timeout / 4
        )
        api = UsageApiService(
            read_pool,
            auth,
            UsageWriter(pool, on_commit=on_commit, keep_attributes=settings.keep_attributes),
            team_attribute=settings.budget_team_attribute,
        )
        receiver = Receiver(
            pipeline,
            host=settings.host,
            grpc_port=settings.grpc_port,
            http_port=settings.http_port,
            max_body_bytes=settings.max_body_bytes,
            tenant_for=auth.tenant_for,
            grpc_services=[UsageApiServicer(api).add_to_server],
            reuse_port=worker is not None,
            export_timeout=settings.export_timeout,
            body_timeout=settings.body_timeout,
            header_timeout=settings.header_timeout,
            max_connections=settings.max_connections,
            max_concurrent_exports=settings.max_concurrent_exports,
            max_inflight_bytes=settings.max_inflight_bytes,
        )
        receiver.http_app.add_middleware(HttpTransportMiddleware, registry=registry)
        receiver.http_app.router.routes.extend(create_health_routes(read_pool, registry))
        receiver.http_app.router.routes.extend(create_api_routes(api))
        receiver.http_app.router.routes.extend(
            create_dashboard_routes(read_pool, auth=auth, admin_tenant=settings.admin_tenant)
        )
        background: list[Callable[[], Coroutine[Any, Any, None]]] = []
        if settings.retention_days and backend.keeps_rollups and worker in (None, 1):
            background.append(
                functools.partial(_enforce_retention_hourly, pool, backend, settings.retention_days)
            )
        if settings.alert_interval_seconds and worker in (None, 1):
            background.append(_alert_task(settings, url, stack))
        retention: Callable[[], Coroutine[Any, Any, None]] | None = None
        if background:
            retention = functools.partial(_run_together, background)
        if spool is not None:
            spool.start(exports.replay)
        yield receiver, retention
    finally:
        if spool is not None:
            spool.stop()
        stack.close()
        read_pool.close()
        pool.close()


def _alert_task(
    settings: Settings, url: str, stack: contextlib.ExitStack
) -> Callable[[], Coroutine[Any, Any, None]]:
    """The budget alerts' task (evaluation and webhook delivery) on its own small pool."""
    from tokenscale.alerts import AlertService, DeliveryPolicy  # noqa: PLC0415
    from tokenscale.store.writer import open_pool  # noqa: PLC0415

    pool = open_pool(url, max_size=2, connect_timeout=settings.connect_timeout)
    stack.callback(pool.close)
    service = AlertService(
        pool,
        interval=settings.alert_interval_seconds,
        team_attribute=settings.budget_team_attribute,
        policy=DeliveryPolicy(
            retry_seconds=settings.alert_retry_seconds, max_attempts=settings.alert_max_attempts
        ),
    )
    return service.run


async def _run_together(tasks: list[Callable[[], Coroutine[Any, Any, None]]]) -> None:
    """Run the service's background tasks side by side until cancelled."""
    await asyncio.gather(*(task() for task in tasks))


async def _serve(receiver: Any, background: Coroutine[Any, Any, None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await receiver.start()
    task = asyncio.create_task(background) if background is not None else None
    log.info("dashboard at %s (HTTP API docs at /docs)", dashboard_url(receiver.host, receiver.http_port))
    log.info("tokenscale %s ready; press Ctrl-C to stop", __version__)
    await stop.wait()
    log.info("shutting down")
    if task is not None:
        task.cancel()
    await receiver.stop()


def dashboard_url(host: str, port: int) -> str:
    """The dashboard's URL for a receiver bound to ``host``:``port`` (a wildcard bind: loopback)."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any), and
    ``worker`` and ``pid`` in a worker process of ``serve --workers N``."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            entry.update(worker=self.worker, pid=record.process)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _configure_logging(settings: Settings, *, worker: int | None = None, quiet: bool = False) -> None:
    """Logging to stderr as ``settings`` say; a worker process (``worker``) names itself in each line.

    ``quiet`` (the short commands): the default level ``info`` becomes ``warning``, so that a command's
    output is not interleaved with progress lines; an explicit ``debug`` level still applies."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        formatter: logging.Formatter = _JsonFormatter(worker)
        formatter.converter = time.gmtime
    elif worker is not None:
        formatter = logging.Formatter(
            f"%(asctime)s %(levelname)s %(name)s [worker {worker}, pid %(process)d]: %(message)s"
        )
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    level = settings.log_level.upper()
    if quiet and level == "INFO":
        level = "WARNING"
    logging.basicConfig(level=level, handlers=[handler], force=True)


#: The command a coding assistant runs as its hook (tokenscale.commands.hook).
_HOOK = "hook"

#: Modules of the ``server`` extra; without them only the instrumentation is installed.
_SERVER_MODULES = ("psycopg", "psycopg_pool", "grpc", "starlette", "uvicorn", "genai_prices")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tokenscale`` console script."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == [_HOOK]:
        # Run by an assistant before every prompt or tool call: no server dependency, no settings
        # file, no database, nothing imported that it does not use.
        from tokenscale.commands.hook import main as hook_main  # noqa: PLC0415

        return hook_main(arguments[1:])
    missing = [name for name in _SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing and arguments == ["--version"]:
        print(f"tokenscale {__version__}")
        return 0
    if missing:
        # Checked before the commands are even parsed: their modules import the server dependencies.
        print(
            f"tokenscale: the commands need the server dependencies (missing: {', '.join(missing)}); "
            "this install has only the instrumentation. Install them with: "
            "pip install 'tokenscale[server]' (from a source checkout: pip install '.[server]')",
            file=sys.stderr,
        )
        return 1
    args = _parser().parse_args(arguments)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"tokenscale: {exc}", file=sys.stderr)
        return 2
    for var, meant in misspelt_env_vars():
        hint = f" (did you mean {meant}?)" if meant else ""
        print(f"tokenscale: warning: {var} is not a tokenscale setting and is ignored{hint}", file=sys.stderr)
    _configure_logging(settings, quiet=args.command != "serve")
    import psycopg  # noqa: PLC0415 - a server dependency, checked above

    commands = {
        "serve": _cmd_serve,
        "migrate": _cmd_migrate,
        "status": _cmd_status,
        "refresh": _cmd_refresh,
        "report": _cmd_report,
        "demo": _cmd_demo,
        "keys": _cmd_keys_or_budgets,
        "budgets": _cmd_keys_or_budgets,
        "prices": _cmd_prices,
        "reprice": _cmd_prices,
        "alerts": _cmd_alerts,
    }
    try:
        return commands[args.command](settings, args)
    except TokenscaleError as exc:
        print(f"tokenscale: {exc}", file=sys.stderr)
        return 1
    except psycopg.OperationalError as exc:
        detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"tokenscale: database unavailable: {detail}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
