"""The deployment files agree with each other and with the service, checked without a Docker engine.

Covers docker-compose.yml, collector-config.yaml, the Dockerfile, .dockerignore, .env.example, the
Grafana provisioning files and the dashboard, whose SQL is run against a database migrated by
:func:`tokenscale.store.migrate` on every back end the ``db_url`` fixture offers.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
import urllib.parse
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tokenscale.config import Settings
from tokenscale.store import migrate

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
COLLECTOR_FILE = REPO / "collector-config.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENV_EXAMPLE = REPO / ".env.example"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DATASOURCE_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "tokenscale.yaml"
DASHBOARD_PROVIDER_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "tokenscale.yaml"
DASHBOARD_FILE = GRAFANA_DIR / "dashboards" / "tokenscale.json"
READER_INIT_SCRIPT = REPO / "deploy" / "timescaledb" / "10-grafana-reader.sh"

# Service names the other files refer to.
DB_SERVICE = "timescaledb"
APP_SERVICE = "tokenscale"
COLLECTOR_SERVICE = "otel-collector"
GRAFANA_SERVICE = "grafana"
POSTGRES_PORT = 5432

DEFAULTS = Settings()

# Component types of the OpenTelemetry Collector contrib distribution this stack may use. The OTLP
# exporters were renamed in collector v0.144 (otlp -> otlp_grpc, otlphttp -> otlp_http); both names
# of each are accepted.
KNOWN_COMPONENTS: dict[str, frozenset[str]] = {
    "receivers": frozenset({"otlp"}),
    "processors": frozenset(
        {"memory_limiter", "batch", "attributes", "resource", "filter", "transform", "resourcedetection"}
    ),
    "exporters": frozenset({"otlp", "otlp_grpc", "otlphttp", "otlp_http", "debug"}),
    "extensions": frozenset({"health_check", "pprof", "zpages", "bearertokenauth"}),
    "connectors": frozenset(),
}
PIPELINE_SIGNALS = ("metrics", "logs", "traces")
OTLP_GRPC_EXPORTERS = frozenset({"otlp", "otlp_grpc"})

# --- helpers: .env files and compose's variable interpolation -------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a compose .env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not KEY=VALUE: {raw!r}"
        values[key.strip()] = value.strip()
    return values


def filled_env() -> dict[str, str]:
    """.env.example with every empty (secret) value replaced by a placeholder, as a user's .env."""
    return {
        key: value or f"test-{key.lower().replace('_', '-')}"
        for key, value in read_env_file(ENV_EXAMPLE).items()
    }


class MissingVariableError(KeyError):
    """A ``${VAR:?message}`` whose variable is unset or empty."""


_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}`` and ``$$``,
    applied to every string in ``value``."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["plain"]
        current = env.get(name)
        op, arg = match["op"], match["arg"] or ""
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?") and not current:
            raise MissingVariableError(f"{name}: {arg}")
        return current or ""

    return _INTERPOLATION.sub(substitute, value)


def referenced_variables(text: str) -> dict[str, str | None]:
    """Every variable a compose file interpolates, with its operator (None for a bare reference)."""
    found: dict[str, str | None] = {}
    for match in _INTERPOLATION.finditer(text):
        if match["escaped"]:
            continue
        name = match["braced"] or match["plain"]
        if found.get(name) is None:
            found[name] = match["op"]
    return found


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` (mapping or list form) as a mapping."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.partition("=")[::2] for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def published_ports(service: Mapping[str, Any]) -> dict[int, int]:
    """container port -> host port, from ``[ip:]host:container[/proto]`` entries."""
    mapping: dict[int, int] = {}
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            mapping[int(entry["target"])] = int(entry["published"])
            continue
        parts = str(entry).split("/")[0].rsplit(":", 2)
        assert len(parts) >= 2, f"port {entry!r} publishes no host port"
        mapping[int(parts[-1])] = int(parts[-2])
    return mapping


def bind_mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """target -> source of the service's bind mounts (sources starting with . or /)."""
    mounts: dict[str, str] = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            if entry.get("type") == "bind":
                mounts[entry["target"]] = entry["source"]
            continue
        source, target = str(entry).split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = source
    return mounts


def host_path(source: str) -> Path:
    return (REPO / source).resolve()


def mount_target_of(service: Mapping[str, Any], path: Path) -> str:
    for target, source in bind_mounts(service).items():
        if host_path(source) == path.resolve():
            return target
    raise AssertionError(f"{path.relative_to(REPO)} is not mounted into the service")


def container_path_to_host(service: Mapping[str, Any], container_path: str) -> Path | None:
    """The repository file a container path resolves to through the service's bind mounts."""
    for target, source in sorted(bind_mounts(service).items(), key=lambda item: -len(item[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return host_path(source) / container_path[len(target) :].lstrip("/")
    return None


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose(compose_raw: dict[str, Any]) -> dict[str, Any]:
    """docker-compose.yml as compose would see it with a .env made from .env.example."""
    result = interpolate(compose_raw, filled_env())
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    data = yaml.safe_load(COLLECTOR_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    data = yaml.safe_load(DATASOURCE_FILE.read_text(encoding="utf-8"))
    assert data["apiVersion"] == 1
    (source,) = data["datasources"]
    assert isinstance(source, dict)
    return source


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


# --- YAML and .env files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [COMPOSE_FILE, COLLECTOR_FILE, DATASOURCE_FILE, DASHBOARD_PROVIDER_FILE],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_yaml_files_parse(path: Path) -> None:
    assert isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict)


def test_env_example_holds_no_secrets_and_every_required_one_is_empty() -> None:
    example = read_env_file(ENV_EXAMPLE)
    secrets = {key for key in example if re.search(r"PASSWORD|API_KEY|SECRET|TOKEN$", key)}
    assert secrets, ".env.example names no secrets"
    assert {key: example[key] for key in secrets if example[key]} == {}, "commit no secret values"
    # Compose refuses to start without each required variable: all are left empty in the example.
    required = {
        name
        for name, op in referenced_variables(COMPOSE_FILE.read_text(encoding="utf-8")).items()
        if op == ":?"
    }
    assert required, "compose requires no secret"
    assert required <= {key for key, value in example.items() if not value}


def test_every_compose_variable_is_documented_in_env_example() -> None:
    used = set(referenced_variables(COMPOSE_FILE.read_text(encoding="utf-8")))
    assert used - set(read_env_file(ENV_EXAMPLE)) == set()


def test_compose_refuses_to_start_without_the_secrets(compose_raw: dict[str, Any]) -> None:
    with pytest.raises(MissingVariableError):
        interpolate(compose_raw, read_env_file(ENV_EXAMPLE))


# --- docker-compose.yml ---------------------------------------------------------------------------


def test_compose_has_the_four_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {DB_SERVICE, APP_SERVICE, COLLECTOR_SERVICE, GRAFANA_SERVICE}


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name
        if "image" in service and name != APP_SERVICE:
            image = service["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"pin {name}'s image"


def test_tokenscale_is_built_from_this_repository(services: dict[str, dict[str, Any]]) -> None:
    build = services[APP_SERVICE]["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert host_path(context) == REPO
    assert (REPO / dockerfile).resolve() == DOCKERFILE


def test_every_bind_mounted_file_exists(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, source in bind_mounts(service).items():
            assert host_path(source).exists(), f"{name}: {source} (mounted at {target}) does not exist"


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for entry in service.get("volumes", []):
            source = entry["source"] if isinstance(entry, dict) else str(entry).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"


def test_database_is_persistent_and_has_a_healthcheck(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    db = services[DB_SERVICE]
    assert "timescale/timescaledb" in db["image"]
    data_volumes = [
        str(v).split(":")[0] for v in db["volumes"] if str(v).split(":")[1] == "/var/lib/postgresql/data"
    ]
    assert len(data_volumes) == 1 and data_volumes[0] in compose["volumes"], "the data must be a named volume"
    test = db["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    assert environment_of(db)["POSTGRES_PASSWORD"] == filled_env()["POSTGRES_PASSWORD"]


def test_tokenscale_waits_for_a_healthy_database(services: dict[str, dict[str, Any]]) -> None:
    depends = services[APP_SERVICE]["depends_on"]
    assert depends[DB_SERVICE]["condition"] == "service_healthy"


def test_tokenscale_database_url_points_at_the_database_service(services: dict[str, dict[str, Any]]) -> None:
    env = environment_of(services[APP_SERVICE])
    db_env = environment_of(services[DB_SERVICE])
    url = urllib.parse.urlsplit(env["TOKENSCALE_DATABASE_URL"])
    assert url.scheme in {"postgresql", "postgres"}
    assert url.hostname == DB_SERVICE
    assert (url.port or POSTGRES_PORT) == POSTGRES_PORT
    assert url.username == db_env["POSTGRES_USER"]
    assert url.path.lstrip("/") == db_env["POSTGRES_DB"]
    # The password travels in PGPASSWORD (libpq's own variable), not in the URL.
    assert url.password is None
    assert env["PGPASSWORD"] == db_env["POSTGRES_PASSWORD"]


def test_tokenscale_listens_on_all_interfaces_on_the_default_ports(
    services: dict[str, dict[str, Any]],
) -> None:
    env = environment_of(services[APP_SERVICE])
    assert env["TOKENSCALE_HOST"] == "0.0.0.0"
    assert int(env.get("TOKENSCALE_GRPC_PORT", DEFAULTS.grpc_port)) == DEFAULTS.grpc_port
    assert int(env.get("TOKENSCALE_HTTP_PORT", DEFAULTS.http_port)) == DEFAULTS.http_port


def test_tokenscale_publishes_the_default_otlp_ports(services: dict[str, dict[str, Any]]) -> None:
    assert (DEFAULTS.grpc_port, DEFAULTS.http_port) == (4317, 4318)
    assert published_ports(services[APP_SERVICE]) == {4317: 4317, 4318: 4318}


def test_collector_ports_do_not_clash_with_tokenscale(services: dict[str, dict[str, Any]]) -> None:
    collector_ports = published_ports(services[COLLECTOR_SERVICE])
    assert collector_ports == {4317: 14317, 4318: 14318}
    all_host_ports = [port for service in services.values() for port in published_ports(service).values()]
    assert len(all_host_ports) == len(set(all_host_ports))


def test_collector_runs_the_mounted_config(services: dict[str, dict[str, Any]]) -> None:
    service = services[COLLECTOR_SERVICE]
    assert service["image"].startswith("otel/opentelemetry-collector-contrib:")
    target = mount_target_of(service, COLLECTOR_FILE)
    command = service.get("command") or []
    command = shlex.split(command) if isinstance(command, str) else command
    configs = [arg.split("=", 1)[1] for arg in command if arg.startswith("--config=")]
    configs += [command[i + 1] for i, arg in enumerate(command[:-1]) if arg == "--config"]
    # Without --config the contrib image reads /etc/otelcol-contrib/config.yaml.
    assert (configs or ["/etc/otelcol-contrib/config.yaml"]) == [target]


def test_grafana_mounts_provisioning_and_dashboards(services: dict[str, dict[str, Any]]) -> None:
    service = services[GRAFANA_SERVICE]
    assert mount_target_of(service, DATASOURCE_FILE.parent) == "/etc/grafana/provisioning/datasources"
    assert mount_target_of(service, DASHBOARD_PROVIDER_FILE.parent) == "/etc/grafana/provisioning/dashboards"
    provider = yaml.safe_load(DASHBOARD_PROVIDER_FILE.read_text(encoding="utf-8"))
    (entry,) = provider["providers"]
    assert entry["type"] == "file"
    assert mount_target_of(service, DASHBOARD_FILE.parent) == entry["options"]["path"]
    home = environment_of(service).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert container_path_to_host(service, home) == DASHBOARD_FILE.resolve()


def test_reader_role_init_script_is_mounted_with_its_variables(services: dict[str, dict[str, Any]]) -> None:
    db = services[DB_SERVICE]
    target = mount_target_of(db, READER_INIT_SCRIPT)
    assert target.startswith("/docker-entrypoint-initdb.d/") and target.endswith(".sh")
    script = READER_INIT_SCRIPT.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", script))
    assert used - set(environment_of(db)) == set()


# --- collector-config.yaml ------------------------------------------------------------------------


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def test_collector_components_are_known_contrib_components(collector: dict[str, Any]) -> None:
    for section, known in KNOWN_COMPONENTS.items():
        for component_id in collector.get(section) or {}:
            assert component_type(component_id) in known, f"{section}: unknown component {component_id!r}"


def test_collector_pipelines_use_only_defined_components(collector: dict[str, Any]) -> None:
    service = collector["service"]
    for extension in service.get("extensions", []):
        assert extension in (collector.get("extensions") or {})
    pipelines = service["pipelines"]
    assert {component_type(name) for name in pipelines} == set(PIPELINE_SIGNALS)
    for name, pipeline in pipelines.items():
        assert component_type(name) in PIPELINE_SIGNALS, name
        assert pipeline.get("receivers") and pipeline.get("exporters"), name
        for kind in ("receivers", "processors", "exporters"):
            for component_id in pipeline.get(kind, []):
                assert component_id in (collector.get(kind) or {}), (
                    f"{name}: {kind} {component_id!r} undefined"
                )
        processors = pipeline.get("processors", [])
        assert processors[:1] == ["memory_limiter"], f"{name}: memory_limiter must come first"
        assert processors[-1:] == ["batch"], f"{name}: batch must come last"


def test_collector_receives_otlp_on_all_interfaces(collector: dict[str, Any]) -> None:
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"


def test_collector_memory_limiter_is_configured(collector: dict[str, Any]) -> None:
    limiter = collector["processors"]["memory_limiter"]
    assert limiter["check_interval"]
    assert limiter.get("limit_mib") or limiter.get("limit_percentage")


def tokenscale_exporter(collector: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    found = [
        (name, config)
        for name, config in collector["exporters"].items()
        if component_type(name) in OTLP_GRPC_EXPORTERS and name.endswith("/tokenscale")
    ]
    assert len(found) == 1, "expected one OTLP/gRPC exporter named <type>/tokenscale"
    return found[0]


def test_collector_exports_to_the_tokenscale_service(
    collector: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    name, config = tokenscale_exporter(collector)
    host, _, port = config["endpoint"].rpartition(":")
    assert host == APP_SERVICE and APP_SERVICE in services
    container_grpc_port = int(
        environment_of(services[APP_SERVICE]).get("TOKENSCALE_GRPC_PORT", DEFAULTS.grpc_port)
    )
    assert int(port) == container_grpc_port
    assert config["tls"]["insecure"] is True
    assert config["headers"]["authorization"] == "Bearer ${env:TOKENSCALE_API_KEY}"
    assert config["retry_on_failure"]["enabled"] is True
    assert config["sending_queue"]["enabled"] is True
    for signal, pipeline in collector["service"]["pipelines"].items():
        assert name in pipeline["exporters"], f"{signal} does not reach tokenscale"


def test_collector_environment_comes_from_compose(services: dict[str, dict[str, Any]]) -> None:
    used = set(re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)", COLLECTOR_FILE.read_text(encoding="utf-8")))
    assert used, "the collector config reads no environment variable"
    assert used - set(environment_of(services[COLLECTOR_SERVICE])) == set()


# --- Grafana --------------------------------------------------------------------------------------


def test_grafana_datasource_points_at_the_database_service(
    datasource: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert datasource["type"] in {"grafana-postgresql-datasource", "postgres"}
    url = datasource["url"]
    host, _, port = url.split("://")[-1].rpartition(":")
    assert host == DB_SERVICE and int(port) == POSTGRES_PORT
    # Grafana reads ${VAR} from its environment: every one must be passed by compose.
    grafana_env = environment_of(services[GRAFANA_SERVICE])
    text = DATASOURCE_FILE.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    assert used - set(grafana_env) == set()
    resolved = interpolate(datasource, grafana_env)
    db_env = environment_of(services[DB_SERVICE])
    assert resolved["jsonData"]["database"] == db_env["POSTGRES_DB"]
    assert resolved["user"] == db_env["GRAFANA_DB_USER"]
    assert resolved["secureJsonData"]["password"] == db_env["GRAFANA_DB_PASSWORD"]
    assert "password" not in datasource and "database" not in datasource, "Grafana 12+ ignores these keys"


def dashboard_targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target


def test_dashboard_uses_the_provisioned_datasource(
    dashboard: dict[str, Any], datasource: dict[str, Any]
) -> None:
    wanted = {"type": datasource["type"], "uid": datasource["uid"]}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert panel["datasource"] == wanted, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    for title, target in dashboard_targets(dashboard):
        assert target["datasource"] == wanted, title
        assert target["rawQuery"] and target["rawSql"].strip(), title
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"] == wanted, variable["name"]


def test_dashboard_has_the_required_panels(dashboard: dict[str, Any]) -> None:
    titles = {panel["title"] for panel in dashboard["panels"]}
    for wanted in (
        "Daily tokens by tool",
        "Daily tokens by user (top 10)",
        "Daily tokens by model",
        "Daily cost by tool",
        "Top users",
    ):
        assert wanted in titles
    for title, target in dashboard_targets(dashboard):
        assert "$__timeFilter(day)" in target["rawSql"], f"{title}: filter on the dashboard's time range"
        assert "tokenscale.usage_daily" in target["rawSql"], title


# --- the dashboard's SQL against a migrated database ----------------------------------------------

_MACROS = (
    (re.compile(r"\$__timeFilter\(\s*([^()]+?)\s*\)"), r"\1 BETWEEN now() - interval '30 days' AND now()"),
    (re.compile(r"\$__timeFrom\(\)"), "(now() - interval '30 days')"),
    (re.compile(r"\$__timeTo\(\)"), "now()"),
    (
        re.compile(r"\$__unixEpochFilter\(\s*([^()]+?)\s*\)"),
        r"\1 BETWEEN extract(epoch FROM now()) - 2592000 AND extract(epoch FROM now())",
    ),
)

SEED_TENANT = "acme"
SEED_TOOLS = ("claude_code", "codex")
SEED_VARIABLES = {
    "tenant": f"'{SEED_TENANT}'",
    "tool": ", ".join(f"'{tool}'" for tool in SEED_TOOLS),
}


def render_sql(sql: str, variables: Mapping[str, str]) -> str:
    """Grafana's macros and template variables replaced as Grafana would for the last 30 days."""
    for pattern, replacement in _MACROS:
        sql = pattern.sub(replacement, sql)
    for name, value in variables.items():
        sql = re.sub(r"\$\{" + name + r"(?::\w+)?\}|\$" + name + r"\b", value, sql)
    assert "$" not in sql.replace("$$", ""), f"unresolved macro or variable in:\n{sql}"
    return sql


# (tenant, tool, user_email, provider, model, days ago, requests, input, cache read, cache write, output,
#  reasoning, cost_usd or None when unpriced). Only the first four rows are inside the filters used below.
_T, _C = SEED_TENANT, "claude-opus-4-8"
# fmt: off
SEED_ROWS: list[tuple[Any, ...]] = [
    (_T, "claude_code", "alice@x.test", "anthropic", _C, 0, 3, 100, 1000, 200, 50, 0, "0.5"),
    (_T, "claude_code", "bob@x.test", "anthropic", _C, 2, 1, 10, 0, 0, 5, 0, None),
    (_T, "codex", "alice@x.test", "openai", "gpt-5", 5, 2, 300, 100, 0, 80, 20, "0.25"),
    (_T, "codex", None, "openai", None, 1, 1, 7, 0, 0, 3, 0, "0.01"),
    (_T, "gemini_cli", "carol@x.test", "gcp.gemini", "gemini-3.8-flash", 3, 1, 50, 0, 0, 9, 4, "0.02"),
    ("other", "claude_code", "dave@x.test", "anthropic", _C, 1, 1, 70, 0, 0, 7, 0, "0.03"),
    (_T, "claude_code", "alice@x.test", "anthropic", _C, 40, 9, 900, 0, 0, 90, 0, "9"),
]
# fmt: on
IN_FILTER = SEED_ROWS[:4]
EXPECTED = {
    "Tokens": sum(r[7] + r[8] + r[9] + r[10] for r in IN_FILTER),
    "Cost": float(sum(Decimal(r[12]) for r in IN_FILTER if r[12] is not None)),
    "Requests": sum(r[6] for r in IN_FILTER),
    "Active users": len({r[2] for r in IN_FILTER if r[2] is not None}),
    "Unpriced events": sum(1 for r in IN_FILTER if r[12] is None),
}


def seed(conn: psycopg.Connection[Any]) -> None:
    """Writes SEED_ROWS as one usage event each, into usage_daily where it is a table (tokenscale keeps
    it) or into usage_events where it is a continuous aggregate (TimescaleDB community)."""
    row = conn.execute(
        "SELECT relkind FROM pg_class WHERE oid = 'tokenscale.usage_daily'::regclass"
    ).fetchone()
    assert row is not None
    kind = row[0]
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for i, row in enumerate(SEED_ROWS):
        tenant, tool, user, provider, model, days, req, inp, cread, cwrite, out, reasoning, cost = row
        day = today - dt.timedelta(days=days)
        cost_value = None if cost is None else Decimal(cost)
        if kind == "r":
            conn.execute(
                "INSERT INTO tokenscale.usage_daily (day, tenant, tool, user_email, provider, model,"
                " requests, input_tokens, cache_read_tokens, cache_write_tokens, output_tokens,"
                " reasoning_tokens, cost_usd, unpriced_events, events)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1)",
                (day, tenant, tool, user, provider, model, req, inp, cread, cwrite, out, reasoning,
                 cost_value, int(cost is None)),
            )  # fmt: skip
        else:
            conn.execute(
                "INSERT INTO tokenscale.usage_events (time, tenant, source, rank, counted, tool, stream,"
                " service_name, user_email, provider, model, requests, input_tokens, cache_read_tokens,"
                " cache_write_tokens, output_tokens, reasoning_tokens, cost_usd, dedupe_key)"
                " VALUES (%s, %s, 'test', 1, true, %s, 's', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (day + dt.timedelta(minutes=5), tenant, tool, tool, user, provider, model, req, inp,
                 cread, cwrite, out, reasoning, cost_value, i.to_bytes(4, "big")),
            )  # fmt: skip


def test_dashboard_sql_runs_against_the_schema(db_url: str, dashboard: dict[str, Any]) -> None:
    migrate(db_url)
    with psycopg.connect(db_url) as conn:
        seed(conn)
    with psycopg.connect(db_url, autocommit=True) as conn:
        # As Grafana's role would: read-only, with only pg_read_all_data's privileges when possible.
        conn.execute("SET default_transaction_read_only = on")
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        reader_role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'pg_read_all_data'").fetchone()
        if superuser and superuser[0] and reader_role:
            conn.execute("SET ROLE pg_read_all_data")

        for variable in dashboard["templating"]["list"]:
            sql = render_sql(variable["query"], SEED_VARIABLES)
            values = [row[0] for row in conn.execute(sql)]
            assert values, f"variable {variable['name']} lists nothing"
            assert values == sorted(values)

        stats: dict[str, Any] = {}
        kinds_total = 0
        for title, target in dashboard_targets(dashboard):
            sql = render_sql(target["rawSql"], SEED_VARIABLES)
            try:
                cursor = conn.execute(sql)
            except psycopg.Error as exc:
                pytest.fail(f"panel {title!r}: {exc}\n{sql}")
            assert cursor.description is not None
            columns = [column.name for column in cursor.description]
            rows = cursor.fetchall()
            assert rows, f"panel {title!r} returned no row"
            if target["format"] == "time_series":
                assert columns[0] == "time", f"panel {title!r}: the first column must be named time"
                times = [row[0] for row in rows]
                assert times == sorted(times), f"panel {title!r}: rows must be ordered by time"
                assert len(columns) >= 2
                if "metric" in columns:
                    assert len(columns) == 3, f"panel {title!r}: time, metric and one value column"
            elif len(rows) == 1 and len(columns) == 1:
                stats[title] = rows[0][0]
            if title == "Daily tokens by kind":
                kinds_total = sum(sum(row[1:]) for row in rows)

    for title, expected in EXPECTED.items():
        assert stats[title] == pytest.approx(expected), title
    assert kinds_total == EXPECTED["Tokens"], "the token kinds must add up to the total"


# --- Dockerfile and .dockerignore -----------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def dockerfile_args() -> dict[str, str]:
    args: dict[str, str] = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ARG" and "=" in arguments:
            name, _, value = arguments.partition("=")
            args[name] = value
    return args


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    args = dockerfile_args()
    bases = [arguments.split()[0] for keyword, arguments in dockerfile_instructions() if keyword == "FROM"]
    assert len(bases) >= 2
    for base in bases:
        assert interpolate(base, args) == "python:3.11-slim"
    assert any("--from=" in arguments for keyword, arguments in final_stage() if keyword == "COPY")


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [
        interpolate(arguments, dockerfile_args()) for keyword, arguments in final_stage() if keyword == "USER"
    ]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0", ""}


def test_dockerfile_exposes_the_default_ports() -> None:
    exposed = {
        int(port.split("/")[0])
        for keyword, arguments in dockerfile_instructions()
        if keyword == "EXPOSE"
        for port in arguments.split()
    }
    assert exposed == {DEFAULTS.grpc_port, DEFAULTS.http_port}


def test_dockerfile_command_serves_on_all_interfaces() -> None:
    commands = [json.loads(arguments) for keyword, arguments in final_stage() if keyword == "CMD"]
    assert commands[-1] == ["tokenscale", "serve", "--host", "0.0.0.0"]


def healthcheck_command() -> list[str]:
    (arguments,) = [arguments for keyword, arguments in final_stage() if keyword == "HEALTHCHECK"]
    _, _, command = arguments.partition("CMD ")
    parsed = json.loads(command)
    assert isinstance(parsed, list)
    return parsed


class _HealthHandler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.mark.parametrize("status", [200, 503])
def test_dockerfile_healthcheck_asks_healthz(status: int) -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"] and "/healthz" in command[2]
    handler = type("Handler", (_HealthHandler,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {"TOKENSCALE_HTTP_PORT": str(server.server_address[1]), "PATH": "/usr/bin:/bin"}
        result = subprocess.run(
            [sys.executable, *command[1:]], env=env, capture_output=True, timeout=30, check=False
        )
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) == (status == 200), result.stderr


def test_dockerfile_reads_the_dependencies_from_pyproject() -> None:
    (run,) = [
        arguments
        for keyword, arguments in dockerfile_instructions()
        if keyword == "RUN" and "tomllib" in arguments
    ]
    words = shlex.split(run)
    code = words[words.index("-c") + 1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30, check=True
    )
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject["project"]
    expected = project["dependencies"] + project["optional-dependencies"]["server"]
    assert result.stdout.split("\n")[:-1] == expected


def test_dockerignore_keeps_secrets_and_bulk_out_of_the_build() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (".env", ".venv", ".git", "tests/captures", ".mypy_cache", ".ruff_cache", ".pytest_cache"):
        assert needed in patterns or needed.split("/")[0] in patterns, needed
    for kept in ("src", "pyproject.toml", "README.md"):
        assert kept not in patterns, f"{kept} is needed to build the wheel"


# --- docker compose config, when a compose CLI works here -----------------------------------------


def compose_cli() -> list[str] | None:
    """``docker compose`` (v2) or ``docker-compose`` (v1), whichever answers ``version``; no engine needed."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        try:
            result = subprocess.run([*command, "version"], capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0:
            return command
    return None


def run_compose_config(command: list[str], env_file: Path) -> subprocess.CompletedProcess[str]:
    # Only the env file counts: variables from this shell would take precedence over it.
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(env_file.parent)}
    return subprocess.run(
        [*command, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    command = compose_cli()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` works on this machine")
    env_file = tmp_path / "filled.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in filled_env().items()), encoding="utf-8")
    result = run_compose_config(command, env_file)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert set(rendered["services"]) == {DB_SERVICE, APP_SERVICE, COLLECTOR_SERVICE, GRAFANA_SERVICE}

    unfilled = tmp_path / "example.env"
    shutil.copyfile(ENV_EXAMPLE, unfilled)
    result = run_compose_config(command, unfilled)
    assert result.returncode != 0, "compose must refuse to run while the secrets are empty"
