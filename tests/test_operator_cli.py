"""The command line as an operator meets it: flags, messages, output layout and stable state."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tokenscale.cli import _parser, _psql_command, _settings, dashboard_url, main
from tokenscale.commands import dashboard_hint
from tokenscale.commands.report import query as report_rows
from tokenscale.config import load_settings, misspelt_env_vars
from tokenscale.instrumentation import current_usage_context, usage_context
from tokenscale.mapping import MappingResult, UsageEvent
from tokenscale.store import migrate
from tokenscale.store.writer import UsageWriter, open_pool

NS_PER_DAY = 86_400 * 10**9


def test_require_auth_is_a_flag_of_serve() -> None:
    assert _settings(_parser().parse_args(["serve", "--require-auth"])).require_auth is True
    assert _settings(_parser().parse_args(["serve"])).require_auth is False


def test_misspelt_environment_variables_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"TOKENSCALE_DATABSE_URL": "x", "TOKENSCALE_HTTP_PORT": "1", "TOKENSCALE_API_KEY": "k", "HOME": "/"}
    assert misspelt_env_vars(env) == [("TOKENSCALE_DATABSE_URL", "TOKENSCALE_DATABASE_URL")]
    assert misspelt_env_vars({"TOKENSCALE_WHATEVER": "1"}) == [("TOKENSCALE_WHATEVER", None)]
    os.environ["TOKENSCALE_LOG_LEVLE"] = "debug"
    try:
        main(["status", "--database-url", "postgresql://x@127.0.0.1:1/none?connect_timeout=1"])
    finally:
        del os.environ["TOKENSCALE_LOG_LEVLE"]
    err = capsys.readouterr().err
    assert (
        "tokenscale: warning: TOKENSCALE_LOG_LEVLE is not a tokenscale setting and is ignored "
        "(did you mean TOKENSCALE_LOG_LEVEL?)" in err
    )


def test_short_commands_log_no_info_and_status_prints_psql(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "--database-url", db_url]) == 0
    assert main(["status", "--database-url", db_url]) == 0
    captured = capsys.readouterr()
    assert " INFO " not in captured.err, captured.err
    # (A community server's URL may carry a password: left out of the printed command.)
    assert f"psql:         {_psql_command(db_url)}\n" in captured.out
    # A password stays out of the printed command (psql asks for it).
    assert _psql_command("postgresql://ana:secret@db.example.com:5433/ts") == (
        "psql postgresql://ana@db.example.com:5433/ts"
    )
    assert _psql_command("postgresql://u@h/d?sslmode=require") == "psql 'postgresql://u@h/d?sslmode=require'"


def test_without_the_server_extra_commands_say_what_to_install() -> None:
    # An instrumentation-only install: the server's modules cannot be found or imported.
    code = (
        "import sys\n"
        "for name in ('psycopg', 'psycopg_pool', 'grpc', 'starlette', 'uvicorn', 'genai_prices'):\n"
        "    sys.modules[name] = None\n"
        "from tokenscale.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    for argv in (["status"], ["report", "--days", "3"], ["keys", "list"]):
        done = subprocess.run(
            [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=False
        )
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr and "ModuleNotFoundError" not in done.stderr
        assert "pip install 'tokenscale[server]'" in done.stderr
        assert "missing: psycopg, psycopg_pool, grpc, starlette, uvicorn, genai_prices" in done.stderr
    done = subprocess.run(
        [sys.executable, "-c", code, "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and done.stdout.startswith("tokenscale ")


def _write(url: str, day_tokens: dict[int, int]) -> None:
    """One request per day offset (0: today), with the given input tokens."""
    now = time.time_ns() // NS_PER_DAY * NS_PER_DAY + 3_600 * 10**9
    events = [
        UsageEvent(
            time_ns=now - offset * NS_PER_DAY,
            tenant="t",
            carrier="gen_ai.span",
            rank=3,
            tool="app",
            stream="s",
            service_name="app",
            dedupe_key=offset.to_bytes(16, "big"),
            model="m",
            requests=1,
            input_tokens=tokens,
        )
        for offset, tokens in day_tokens.items()
    ]
    pool = open_pool(url)
    try:
        UsageWriter(pool).write(MappingResult(events=events))
    finally:
        pool.close()


def test_report_by_day_is_in_day_order(db_url: str) -> None:
    migrate(db_url)
    _write(db_url, {0: 10, 1: 500, 2: 30})
    rows = report_rows(db_url, days=7, by="day")
    today = datetime.now(UTC).date()
    assert [(r.keys[0], r.input_tokens) for r in rows] == [
        ((today - timedelta(days=2)).isoformat(), 30),
        ((today - timedelta(days=1)).isoformat(), 500),
        (today.isoformat(), 10),
    ]
    # Not by day: largest first, as before.
    assert [r.input_tokens for r in report_rows(db_url, days=7, by="model")] == [540]


def test_keys_and_budgets_lists_have_headers_and_budgets_keep_their_window(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--database-url", db_url]
    assert main(["keys", "create", "acme", "--name", "ci", *db]) == 0
    capsys.readouterr()
    assert main(["keys", "list", *db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "id\tprefix\ttenant\tscopes\tstate\tname"
    assert lines[1].split("\t")[2:] == ["acme", "ingest,read", "live", "ci"]

    assert main(["budgets", "set", "acme", "--limit", "5000", "--window-days", "7", *db]) == 0
    # A new limit alone keeps the window (0 tokens: every request is over budget).
    assert main(["budgets", "set", "acme", "--limit", "0", *db]) == 0
    assert main(["budgets", "set", "beta", "--limit", "100", *db]) == 0  # a new budget: 30 days
    capsys.readouterr()
    assert main(["budgets", "list", *db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "tenant\ttoken_limit\twindow_days\tcompany_id"
    assert [line.split("\t")[:3] for line in lines[1:]] == [["acme", "0", "7"], ["beta", "100", "30"]]
    assert all(uuid.UUID(line.split("\t")[3]) for line in lines[1:])
    assert main(["budgets", "delete", "acme", *db]) == 0
    assert main(["budgets", "delete", "acme", *db]) == 1
    capsys.readouterr()
    assert main(["budgets", "list", *db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:3] for line in lines] == [
        ["tenant", "token_limit", "window_days"],
        ["beta", "100", "30"],
    ]


def test_dashboard_urls() -> None:
    assert dashboard_hint("127.0.0.1:4317") == "the dashboard at http://127.0.0.1:4318/"
    assert dashboard_hint("http://ts.example.com:4317") == "the dashboard at http://ts.example.com:4318/"
    assert dashboard_hint("https://ts.example.com:4317/") == "the dashboard at http://ts.example.com:4318/"
    assert "http://10.0.0.5:<its HTTP port>/" in dashboard_hint("10.0.0.5:9000")
    assert dashboard_url("0.0.0.0", 4318) == "http://127.0.0.1:4318/"
    assert dashboard_url("::1", 8080) == "http://[::1]:8080/"


def test_usage_context_meta_dict_is_metadata() -> None:
    with usage_context(user="ana@example.com", meta={"bot_id": "faq", "turn": 3}, task_id="t1"):
        assert dict(current_usage_context().meta) == {"bot_id": "faq", "turn": 3, "task_id": "t1"}
    with usage_context(meta="plain"):  # not a mapping: kept as the key "meta"
        assert dict(current_usage_context().meta) == {"meta": "plain"}


def _serve_once(data_dir: Path) -> tuple[str, str]:
    """Start ``tokenscale serve`` on the embedded database; its log until ready, and the database URL."""
    env = {**os.environ, "TOKENSCALE_DATA_DIR": str(data_dir), "TOKENSCALE_GRPC_PORT": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenscale.cli", "serve", "--http-port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    log = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "ready" not in log and process.poll() is None:
        log += process.stdout.readline()
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    address = re.search(r"embedded PostgreSQL listening at (\S+):(\d+)", log)
    assert address and "ready" in log, log
    return log, f"{address[1]}:{address[2]}"


def test_serve_prints_the_dashboard_url_and_keeps_its_database_port(server_tmp_path: Path) -> None:
    log, first = _serve_once(server_tmp_path)
    http_port = re.search(r"HTTP port (\d+)", log)
    assert http_port, log
    assert f"dashboard at http://127.0.0.1:{http_port[1]}/ (HTTP API docs at /docs)" in log
    _, second = _serve_once(server_tmp_path)
    assert second == first  # the same database address from one start to the next
    host, port = first.rsplit(":", 1)
    assert (server_tmp_path / "port").read_text().strip() == port
    with pytest.raises(psycopg.OperationalError):  # stopped with serve
        psycopg.connect(host=host, port=int(port), user="tokenscale", dbname="tokenscale", connect_timeout=2)
    assert load_settings(environ={}).require_auth is False


def test_demo_names_the_dashboard_of_its_endpoint(db_url: str) -> None:
    import argparse  # noqa: PLC0415
    import io  # noqa: PLC0415

    from otlp_clients import background_loop, running  # noqa: PLC0415
    from tokenscale.commands import add_subcommands, run_demo  # noqa: PLC0415
    from tokenscale.pipeline import ExportPipeline  # noqa: PLC0415

    migrate(db_url)
    parser = argparse.ArgumentParser(prog="tokenscale")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    pool = open_pool(db_url)
    try:
        with background_loop() as loop, running(loop, ExportPipeline(UsageWriter(pool))) as receiver:
            args = parser.parse_args(
                ["demo", "--endpoint", f"localhost:{receiver.grpc_port}", "--requests", "3", "--quiet"]
            )
            out = io.StringIO()
            assert run_demo(args, out, io.StringIO()) == 0
    finally:
        pool.close()
    assert out.getvalue().splitlines()[-1] == (
        "see it: tokenscale report, or the dashboard at http://localhost:<its HTTP port>/ "
        "(the port `serve --http-port` was given)"
    )


def test_serve_with_workers_prints_the_dashboard_url(db_url: str) -> None:
    from test_serve_workers import serving  # noqa: PLC0415

    with serving(db_url, 2) as service:
        log = "".join(service.lines)
    assert f"dashboard at http://127.0.0.1:{service.http_port}/ (HTTP API docs at /docs)" in log, log
