"""``tokenscale demo`` through the real OpenTelemetry SDK into a real receiver, then ``tokenscale report``."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from otlp_clients import background_loop, running
from tokenscale.commands import add_subcommands, run_demo, run_report
from tokenscale.commands.demo import DemoError, DemoResult, ProgressBar, demo
from tokenscale.commands.report import VALUE_COLUMNS, parse_dimensions, query, report
from tokenscale.pipeline import ExportPipeline
from tokenscale.receiver.server import Receiver
from tokenscale.store import migrate
from tokenscale.store.writer import UsageWriter, open_pool

KINDS = (
    "requests",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    with background_loop() as event_loop:
        yield event_loop


@pytest.fixture
def receiver(db_url: str, loop: asyncio.AbstractEventLoop) -> Iterator[Receiver]:
    migrate(db_url)
    pool = open_pool(db_url)
    try:
        with running(loop, ExportPipeline(UsageWriter(pool))) as live:
            yield live
    finally:
        pool.close()


@pytest.fixture
def demoed(db_url: str, receiver: Receiver) -> tuple[str, DemoResult, str]:
    progress = io.StringIO()
    result = demo(f"127.0.0.1:{receiver.grpc_port}", users=5, requests=200, seed=3, stream=progress)
    return db_url, result, progress.getvalue()


def daily(url: str) -> dict[tuple[str, str, str], dict[str, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tool, user_email, model, sum(requests), sum(input_tokens), sum(cache_read_tokens), "
            "sum(cache_write_tokens), sum(output_tokens), sum(reasoning_tokens) "
            "FROM tokenscale.usage_daily GROUP BY 1, 2, 3"
        ).fetchall()
    return {(r[0], r[1], r[2]): dict(zip(KINDS, map(int, r[3:]), strict=True)) for r in rows if any(r[3:])}


def test_demo_lands_in_usage_daily_exactly(demoed: tuple[str, DemoResult, str]) -> None:
    url, result, progress = demoed
    assert result.totals.requests == 200
    assert {key: totals.as_dict() for key, totals in result.by_key.items()} == daily(url)
    tools = {tool for tool, _, _ in result.by_key}
    assert tools == {"claude_code", "support-bot", "code-review", "research-agent"}
    models = {model for _, _, model in result.by_key}
    assert {"gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-pro"} <= models
    assert len({user for _, user, _ in result.by_key}) == 5
    totals = result.totals
    assert totals.cache_read_tokens > 0 and totals.cache_write_tokens > 0 and totals.reasoning_tokens > 0
    assert "200/200" in progress and "100%" in progress and "done" in progress
    with psycopg.connect(url) as conn:
        # Claude Code's metrics arrived too, but only its events count; agent spans never count.
        sources = dict(
            conn.execute(
                "SELECT source, count(*) FILTER (WHERE counted) FROM tokenscale.usage_events GROUP BY 1"
            ).fetchall()
        )
        assert sources["claude_code.metrics"] == 0
        assert sources["claude_code.api_request"] + sources["gen_ai.span"] == 200
        unpriced = conn.execute("SELECT sum(unpriced_events) FROM tokenscale.usage_daily").fetchone()
        assert unpriced is not None and unpriced[0] == 0  # every model is a real, priced one
        activity = conn.execute(
            "SELECT metric, sum(value) FROM tokenscale.activity_events GROUP BY 1"
        ).fetchall()
        assert {m for m, _ in activity} >= {"sessions", "lines_added", "tool_calls"}
    # Everything happened within the last 7 UTC days, nothing in the future.
    with psycopg.connect(url) as conn:
        span = conn.execute("SELECT min(time), max(time) FROM tokenscale.usage_events").fetchone()
    assert span is not None
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert span[0] >= today - timedelta(days=6) and span[1] <= datetime.now(UTC)


def test_report_shows_exactly_what_the_demo_sent(demoed: tuple[str, DemoResult, str]) -> None:
    url, result, _ = demoed
    document = json.loads(report(url, days=7, fmt="json"))
    assert document["by"] == ["tool", "user", "model"]
    got = {(r["tool"], r["user"], r["model"]): {k: r[k] for k in KINDS} for r in document["rows"]}
    assert got == {key: totals.as_dict() for key, totals in result.by_key.items()}
    assert {k: document["total"][k] for k in KINDS} == result.totals.as_dict()
    assert document["total"]["total_tokens"] == result.totals.total_tokens
    totals = [r["total_tokens"] for r in document["rows"]]
    assert totals == sorted(totals, reverse=True)
    with psycopg.connect(url) as conn:
        cost = conn.execute("SELECT sum(cost_usd) FROM tokenscale.usage_daily").fetchone()
    assert cost is not None
    assert document["total"]["cost_usd"] == pytest.approx(float(cost[0]))

    # CSV: the same numbers, cost as an exact decimal.
    rows = list(csv.DictReader(io.StringIO(report(url, days=7, fmt="csv"))))
    assert len(rows) == len(document["rows"])
    assert sum(Decimal(r["cost_usd"]) for r in rows) == Decimal(cost[0]).quantize(Decimal("1e-10"))
    for parsed, expected in zip(rows, document["rows"], strict=True):
        assert [int(parsed[k]) for k in KINDS] == [expected[k] for k in KINDS]

    # The table: aligned columns, a header, one line per group, a total line.
    table = report(url, days=7, by=("tool", "model"), fmt="table").splitlines()
    assert table[0].split()[:2] == ["TOOL", "MODEL"] and "TOTAL TOKENS" in table[0]
    assert set(table[1]) == {"-", " "} and set(table[-2]) == {"-", " "}
    assert table[-1].startswith("TOTAL")
    assert f"{result.totals.total_tokens:,}" in table[-1]
    end = table[0].index("TOTAL TOKENS") + len("TOTAL TOKENS")
    for line in table[2:-2]:
        assert line[end - 1].isdigit() and line[end] == " ", line  # right-aligned under the header
    assert len(table) == 2 + len({(t, m) for t, _, m in result.by_key}) + 2


def test_report_dimensions_filters_and_errors(demoed: tuple[str, DemoResult, str]) -> None:
    url, result, _ = demoed
    by_model = query(url, 7, "model")
    expected: dict[str, int] = {}
    for (_, _, model), totals in result.by_key.items():
        expected[model] = expected.get(model, 0) + totals.total_tokens
    assert {r.keys[0]: r.total_tokens for r in by_model} == expected
    [total] = query(url, 7, ())
    assert total.keys == () and total.total_tokens == result.totals.total_tokens
    days = query(url, 7, "day")
    assert sum(r.requests for r in days) == 200 and all(r.keys[0] for r in days)
    assert len(days) <= 7
    assert report(url, 7, "tool", tenant="nobody") == "No usage in the last 7 days for tenant nobody.\n"
    assert json.loads(report(url, 7, "tool", tenant="default", fmt="json"))["total"]["requests"] == 200
    assert parse_dimensions("tool, user,tool") == ("tool", "user")
    with pytest.raises(ValueError, match="unknown dimension 'color'"):
        report(url, by="tool,color")
    with pytest.raises(ValueError, match="unknown format"):
        report(url, fmt="xml")
    with pytest.raises(ValueError, match="days"):
        report(url, days=0)
    assert set(VALUE_COLUMNS) >= set(KINDS)


def test_cli_glue(demoed: tuple[str, DemoResult, str], receiver: Receiver) -> None:
    url = demoed[0]
    parser = argparse.ArgumentParser(prog="tokenscale")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub, lambda p: p.add_argument("--database-url"))
    args = parser.parse_args(["report", "--by", "user", "--format", "json", "--database-url", url])
    out = io.StringIO()
    assert run_report(args, url, out) == 0
    assert json.loads(out.getvalue())["total"]["requests"] == 200
    args = parser.parse_args(["report", "--by", "colour"])
    assert run_report(args, url, io.StringIO()) == 2

    args = parser.parse_args(
        [
            *("demo", "--endpoint", f"http://127.0.0.1:{receiver.grpc_port}"),
            *("--requests", "12", "--users", "2", "--seed", "5", "--json", "--quiet"),
        ]
    )
    out, err = io.StringIO(), io.StringIO()
    assert run_demo(args, out, err) == 0
    assert err.getvalue() == ""
    assert json.loads(out.getvalue())["totals"]["requests"] == 12
    assert json.loads(report(url, fmt="json"))["total"]["requests"] == 212


def test_demo_without_a_receiver_fails_fast() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(DemoError, match="cannot reach"):
        demo(f"127.0.0.1:{port}", requests=5, progress=False, timeout=1)
    assert time.monotonic() - started < 10
    with pytest.raises(ValueError):
        demo(f"127.0.0.1:{port}", requests=0)


def test_progress_bar() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = ProgressBar(4, "demo", tty, width=8)
    for done in range(1, 5):
        bar.update(done)
    bar.finish("done")
    assert tty.getvalue().count("\r") == 5
    assert "\rdemo [########] 100% 4/4 done\x1b[K\n" in tty.getvalue()
    plain = io.StringIO()
    bar = ProgressBar(100, "demo", plain, width=10)
    for done in range(1, 101):
        bar.update(done)
    lines = plain.getvalue().splitlines()
    # Off a terminal: the start, then every 10%.
    assert len(lines) == 11 and lines[0] == "demo [----------]   1% 1/100"
    assert lines[-1] == "demo [##########] 100% 100/100"


def test_cli_doc_describes_every_option() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    parser = argparse.ArgumentParser(prog="tokenscale")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subcommands(sub)
    for name, command in sub.choices.items():
        assert f"## {name}\n" in text, name
        for action in command._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in text, f"{name} {option}"
    for name in ("serve", "migrate", "status", "keys", "budgets"):
        assert f"## {name}\n" in text, name
