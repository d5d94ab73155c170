"""Settings: one typed object, every default in one place; flags > environment > file > defaults."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tokenscale.embedded import default_data_dir
from tokenscale.errors import TokenscaleError

__all__ = ["ENV_PREFIX", "ConfigError", "Settings", "load_settings", "misspelt_env_vars"]

#: Every setting ``name`` is also the environment variable ``TOKENSCALE_<NAME>``.
ENV_PREFIX: Final = "TOKENSCALE_"
#: The environment variable naming an optional TOML configuration file.
CONFIG_ENV: Final = "TOKENSCALE_CONFIG"


class ConfigError(TokenscaleError):
    """A setting is unknown or has a value of the wrong kind; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the tokenscale service. The field docs are the reference documentation."""

    #: PostgreSQL or TimescaleDB URL; empty: run the embedded PostgreSQL under ``data_dir``.
    database_url: str = ""
    #: Address the OTLP and API servers bind; loopback by default.
    host: str = "127.0.0.1"
    #: OTLP/gRPC port (and tokenscale's gRPC API); 0 picks a free port.
    grpc_port: int = 4317
    #: OTLP/HTTP port (and the HTTP/JSON API); 0 picks a free port.
    http_port: int = 4318
    #: Receiver processes of ``serve`` sharing both ports (SO_REUSEPORT), to decode and map on more
    #: than one core; each has its own database pool and its own ``/metrics`` counters.
    workers: int = 1
    #: Where the embedded PostgreSQL cluster and other local state live (default
    #: ``$XDG_DATA_HOME/tokenscale``, else ``~/.local/share/tokenscale``, for root ``/var/lib/tokenscale``).
    data_dir: Path = field(default_factory=default_data_dir)
    #: Require an API key for every request, even on loopback (a non-loopback bind always does).
    require_auth: bool = False
    #: Tenant whose ``admin`` API keys see every tenant in the dashboard (empty: none).
    admin_tenant: str = ""
    #: Keep prompts, responses and command lines found in telemetry (off: they are dropped).
    capture_content: bool = False
    #: Store every attribute of a usage event (off: only those the APIs, reports and the price book
    #: read back, see docs/performance.md "Bytes per request").
    keep_attributes: bool = False
    #: Late-data horizon: usage older than this many days is rejected by the receiver (OTLP partial
    #: success naming the horizon); on TimescaleDB community the refresh policies span it.
    late_data_days: int = 31
    #: Days raw usage events are kept (0: forever; else more than ``late_data_days``); daily and
    #: hourly aggregates are kept regardless.
    retention_days: int = 0
    #: Compress raw usage events older than this many days (0: never; TimescaleDB community only).
    compress_after_days: int = 0
    #: Largest accepted OTLP request body (HTTP, after gzip too) or gRPC message, in bytes.
    max_body_bytes: int = 64 * 1024 * 1024
    #: Seconds an export may wait for the database (key lookup, write) before it is answered
    #: UNAVAILABLE / 503 with Retry-After; keep it under the clients' export timeout (10 s by default).
    export_timeout: float = 4.0
    #: Seconds to wait for a database connection to open before the database counts as unreachable.
    connect_timeout: float = 3.0
    #: Exports handled at once per receiver process; beyond it RESOURCE_EXHAUSTED / 429, retry later.
    max_concurrent_exports: int = 16
    #: Request bytes (decompressed) held at once per receiver process; beyond it RESOURCE_EXHAUSTED /
    #: 429 before the body is parsed (an export arriving alone is always let in).
    max_inflight_bytes: int = 64 * 1024 * 1024
    #: Open OTLP/HTTP connections per receiver process; further ones are closed at once.
    max_connections: int = 4096
    #: Seconds an HTTP connection may take to send a request's headers before it is closed.
    header_timeout: float = 10.0
    #: Seconds a started HTTP request body may stall before the request is answered 408.
    body_timeout: float = 30.0
    #: Longest text column value (service, user, session, model, request id, ...), in UTF-8 bytes;
    #: an item with a longer one is rejected.
    max_identity_bytes: int = 512
    #: Longest string attribute value kept with a row, in UTF-8 bytes; longer ones are cut.
    max_attribute_bytes: int = 16384
    #: Most attributes kept with one row; the rest are dropped.
    max_attributes: int = 128
    #: A cost (USD) at or above this, of one record or one cost counter, is rejected.
    max_cost_usd: float = 1000000.0
    #: Bytes of exports kept on disk (``data_dir/spool``) while the database is unreachable, replayed
    #: when it is back; 0: no spool (such exports are answered UNAVAILABLE / 503).
    spool_max_bytes: int = 1024 * 1024 * 1024
    #: Attribute (resource or record/point) naming a usage event's team, for team budgets.
    budget_team_attribute: str = "team.id"
    #: Seconds between two evaluations of the budget alerts (thresholds, forecasts); 0: no alerts.
    alert_interval_seconds: float = 30.0
    #: Seconds before a failed alert webhook delivery is tried again; each further retry waits twice
    #: as long (at most an hour).
    alert_retry_seconds: float = 10.0
    #: Attempts of an alert webhook delivery before it counts as failed.
    alert_max_attempts: int = 8
    #: Log level: debug, info, warning or error.
    log_level: str = "info"
    #: Log format: ``text`` for people, ``json`` (one object per line) for log pipelines.
    log_format: str = "text"

    @classmethod
    def names(cls) -> list[str]:
        """Every setting name, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def env_var(cls, name: str) -> str:
        """The environment variable of setting ``name``."""
        return ENV_PREFIX + name.upper()


def _convert(name: str, value: Any) -> Any:
    kind = {f.name: f.type for f in dataclasses.fields(Settings)}[name]
    try:
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(value)
            return number
        if kind == "bool":
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(value)
        if kind == "Path":
            return Path(str(value)).expanduser()
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except ValueError:
        raise ConfigError(f"setting {name!r}: {value!r} is not a valid {kind}") from None


def _check_database_url(url: str) -> None:
    """Raise :class:`ConfigError` unless ``url`` is a PostgreSQL URL or key=value conninfo."""
    try:
        from psycopg import ProgrammingError  # noqa: PLC0415 - a server dependency
        from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415
    except ImportError:  # the instrumentation alone is installed: nothing connects
        return
    if "://" in url and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"setting 'database_url': unsupported scheme {url.split('://', 1)[0]!r} "
            "(expected postgresql://user@host:port/dbname)"
        )
    try:
        conninfo_to_dict(url)
    except ProgrammingError as exc:
        raise ConfigError(
            f"setting 'database_url': not a PostgreSQL URL (postgresql://user@host:port/dbname) "
            f"or key=value conninfo: {str(exc).strip().splitlines()[0]}"
        ) from None


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Settings from ``overrides`` (command-line flags; None values ignored), the environment,
    an optional TOML file (``config_file`` or ``$TOKENSCALE_CONFIG``), then the defaults.

    An unknown key in the file or in ``overrides`` raises :class:`ConfigError` naming it.
    """
    env = os.environ if environ is None else environ
    names = set(Settings.names())
    values: dict[str, Any] = {}
    path = config_file or (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        section = data.get("tokenscale", data)
        for key, value in section.items():
            if key not in names:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[key] = _convert(key, value)
    for name in names:
        if (raw := env.get(Settings.env_var(name))) is not None:
            values[name] = _convert(name, raw)
    for key, value in (overrides or {}).items():
        if key not in names:
            raise ConfigError(f"unknown setting {key!r}")
        if value is not None:
            values[key] = _convert(key, value)
    settings = Settings(**values)
    if settings.log_format not in ("text", "json"):
        raise ConfigError(f"setting 'log_format': {settings.log_format!r} is not one of text, json")
    for name in ("retention_days", "compress_after_days", "max_body_bytes", "spool_max_bytes"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"setting {name!r}: must not be negative")
    for name in (
        "export_timeout",
        "connect_timeout",
        "max_concurrent_exports",
        "max_inflight_bytes",
        "max_connections",
        "header_timeout",
        "body_timeout",
        "max_identity_bytes",
        "max_attribute_bytes",
        "max_attributes",
        "max_cost_usd",
    ):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"setting {name!r}: must be greater than 0")
    if settings.late_data_days < 1:
        raise ConfigError("setting 'late_data_days': must be at least 1")
    if settings.retention_days and settings.retention_days <= settings.late_data_days:
        raise ConfigError(
            f"setting 'retention_days' ({settings.retention_days}) must be greater than 'late_data_days' "
            f"({settings.late_data_days}): raw usage events may be dropped only once they are older than "
            "the late-data horizon, where no more usage can arrive and the aggregates are final"
        )
    if settings.alert_interval_seconds < 0:
        raise ConfigError("setting 'alert_interval_seconds': must not be negative")
    if settings.alert_retry_seconds <= 0:
        raise ConfigError("setting 'alert_retry_seconds': must be greater than 0")
    if settings.alert_max_attempts < 1:
        raise ConfigError("setting 'alert_max_attempts': must be at least 1")
    if settings.workers < 1:
        raise ConfigError("setting 'workers': must be at least 1")
    for name in ("grpc_port", "http_port"):
        port = getattr(settings, name)
        if not 0 <= port <= 65535:
            raise ConfigError(f"setting {name!r}: {port} is not a TCP port (0-65535; 0 picks a free one)")
    if settings.database_url:
        _check_database_url(settings.database_url)
    return settings


#: ``TOKENSCALE_*`` variables that are not settings but are read elsewhere (the instrumentation, the
#: embedded server, the test suite and deployment scripts).
_OTHER_ENV: Final = frozenset(
    {
        CONFIG_ENV,
        "TOKENSCALE_API_KEY",
        "TOKENSCALE_API_URL",
        "TOKENSCALE_COMPANY_ID",
        "TOKENSCALE_HOOK_USER",
        "TOKENSCALE_HOOK_TEAM",
        "TOKENSCALE_HOOK_WARN_AT",
        "TOKENSCALE_HOOK_TIMEOUT",
        "TOKENSCALE_TENANT",
        "TOKENSCALE_PG_USER",
        "TOKENSCALE_PG_BINDIR",
        "TOKENSCALE_TIMESCALEDB_ROOT",
        "TOKENSCALE_TEST_TIMESCALEDB_URL",
        "TOKENSCALE_DEBIAN_MIRROR",
        "TOKENSCALE_DASHBOARD_SCREENSHOT",
        "TOKENSCALE_DB_NAME",
        "TOKENSCALE_DB_READER_USER",
        "TOKENSCALE_DB_READER_PASSWORD",
    }
)


def misspelt_env_vars(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """``TOKENSCALE_*`` variables of ``environ`` that name no setting: (variable, the setting's
    variable it most resembles, or None), sorted. A misspelt variable would otherwise be ignored."""
    env = os.environ if environ is None else environ
    known = [Settings.env_var(name) for name in Settings.names()]
    found = []
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in known or var in _OTHER_ENV:
            continue
        # Compared without the common prefix, which would make every name look alike.
        names = [k.removeprefix(ENV_PREFIX) for k in known]
        close = difflib.get_close_matches(var.removeprefix(ENV_PREFIX), names, n=1, cutoff=0.75)
        found.append((var, ENV_PREFIX + close[0] if close else None))
    return found
