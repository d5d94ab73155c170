"""The built-in dashboard: its JSON API and its page in headless Chromium, on a real receiver and database."""

from __future__ import annotations

import asyncio
import contextlib
import html.parser
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from google.protobuf.message import Message

from ground_truth import capture_bodies
from otlp_clients import background_loop, run
from tokenscale.commands.demo import demo
from tokenscale.dashboard import create_dashboard_routes
from tokenscale.otlp import REQUEST_TYPES
from tokenscale.pipeline import ExportPipeline
from tokenscale.receiver.server import Receiver
from tokenscale.store import migrate
from tokenscale.store.writer import UsageWriter, open_pool

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Where the page's screenshot is kept for a human to look at (overridable).
SCREENSHOT = Path(os.environ.get("TOKENSCALE_DASHBOARD_SCREENSHOT", tempfile.gettempdir())) / (
    "tokenscale-dashboard.png"
)
NS_PER_DAY = 86_400 * 10**9
TOKENS = "input_tokens + cache_read_tokens + cache_write_tokens + output_tokens"
BUDGET_LIMIT = 5_000_000


# --- feeding the ledger through the real pipeline -------------------------------------------------


def _times(message: Message, found: list[int]) -> None:
    for descriptor, value in message.ListFields():
        if descriptor.message_type is not None:
            for child in [value] if isinstance(value, Message) else value:
                _times(child, found)
        elif descriptor.name.endswith("time_unix_nano") and value:
            found.append(int(value))


def _shift(message: Message, delta_ns: int) -> None:
    """Move every ``*_time_unix_nano`` of ``message`` by ``delta_ns`` (in place)."""
    for descriptor, value in message.ListFields():
        if descriptor.message_type is not None:
            for child in [value] if isinstance(value, Message) else value:
                _shift(child, delta_ns)
        elif descriptor.name.endswith("time_unix_nano") and value:
            setattr(message, descriptor.name, int(value) + delta_ns)


def replay(pipeline: ExportPipeline, label: str, tenant: str) -> None:
    """Export a captured client run, moved by whole days to the most recent day before now."""
    requests = [
        (signal, REQUEST_TYPES[signal].FromString(raw.read_bytes()))  # type: ignore[index]
        for signal, raw, _ in capture_bodies(label)
    ]
    stamps: list[int] = []
    for _, request in requests:
        _times(request, stamps)
    now_ns = time.time_ns()
    delta = (now_ns - max(stamps)) // NS_PER_DAY * NS_PER_DAY
    for signal, request in requests:
        _shift(request, delta)
        pipeline.export(signal, request, tenant)  # type: ignore[arg-type]


def usage_totals(url: str, days: int, tenant: str | None = None) -> dict[str, Any]:
    """Sums over the dashboard's window straight from usage_daily."""
    today = datetime.now(UTC).date()
    since = datetime.combine(today - timedelta(days=days - 1), datetime.min.time(), tzinfo=UTC)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"SELECT coalesce(sum({TOKENS}), 0), coalesce(sum(requests), 0), sum(cost_usd), "
            "count(DISTINCT user_email), count(DISTINCT model) FROM tokenscale.usage_daily "
            "WHERE day >= %s AND (%s::text IS NULL OR tenant = %s)",
            (since, tenant, tenant),
        ).fetchone()
    assert row is not None
    return {
        "tokens": int(row[0]),
        "requests": int(row[1]),
        "cost": float(row[2]) if row[2] is not None else None,
        "users": int(row[3]),
        "models": int(row[4]),
    }


def window_used(url: str, tenant: str, window_days: int) -> int:
    """Tokens of ``tenant``'s counted usage events in the rolling window (the budget definition)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"SELECT coalesce(sum({TOKENS}), 0) FROM tokenscale.usage_events WHERE tenant = %s AND counted "
            "AND time >= now() - make_interval(days => %s) AND time <= now()",
            (tenant, window_days),
        ).fetchone()
    return int(row[0]) if row else 0


# --- a receiver with the dashboard, on a database filled through it ------------------------------


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    with background_loop() as event_loop:
        yield event_loop


@contextlib.contextmanager
def dashboard_server(url: str, loop: asyncio.AbstractEventLoop, **options: Any) -> Iterator[Receiver]:
    """A receiver on free loopback ports with the dashboard routes mounted, stopped afterwards."""
    pool = open_pool(url)
    try:
        receiver = Receiver(ExportPipeline(UsageWriter(pool)), host="127.0.0.1", grpc_port=0, http_port=0)
        receiver.http_app.router.routes.extend(create_dashboard_routes(pool, **options))
        run(loop, receiver.start())
        try:
            yield receiver
        finally:
            run(loop, receiver.stop())
    finally:
        pool.close()


@pytest.fixture
def filled(db_url: str, loop: asyncio.AbstractEventLoop) -> Iterator[tuple[str, Receiver]]:
    """Captured Claude Code, Gemini CLI and OpenAI runs, a demo burst (over gRPC), and a budget."""
    migrate(db_url)
    with dashboard_server(db_url, loop) as receiver:
        pool = open_pool(db_url)
        try:
            pipeline = ExportPipeline(UsageWriter(pool))
            for label in ("claude-tools-grpc", "gemini-grpc", "py-openai-v2-grpc"):
                replay(pipeline, label, "default")
            replay(pipeline, "claude-grpc", "acme")
        finally:
            pool.close()
        demo(f"127.0.0.1:{receiver.grpc_port}", users=4, requests=80, seed=11, progress=False)
        with psycopg.connect(db_url) as conn:
            conn.execute(
                "INSERT INTO tokenscale.budgets (tenant, token_limit, window_days) VALUES (%s, %s, 30)",
                ("default", BUDGET_LIMIT),
            )
        yield db_url, receiver


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def get_json(port: int, path: str) -> tuple[int, Any]:
    status, _, body = get(port, path)
    return status, json.loads(body)


# --- the JSON API -------------------------------------------------------------------------------


def test_summary_matches_usage_daily(filled: tuple[str, Receiver]) -> None:
    url, receiver = filled
    status, body = get_json(receiver.http_port, "/api/dashboard/summary?days=30")
    assert status == 200
    expected = usage_totals(url, 30)
    totals = body["totals"]
    assert totals["total_tokens"] == expected["tokens"] > 0
    assert totals["requests"] == expected["requests"]
    assert totals["cost_usd"] == pytest.approx(expected["cost"])
    assert body["tenants"] == ["acme", "default"]
    assert len(body["day_list"]) == 30 and body["day_list"][-1] == datetime.now(UTC).date().isoformat()
    # Every dimension partitions the same rows: its rows and its daily series add up to the totals.
    for dim in ("by_tool", "by_user", "by_model"):
        rows = body[dim]["rows"]
        assert sum(r["total_tokens"] for r in rows) == expected["tokens"], dim
        assert sum(sum(s["tokens"]) for s in body[dim]["series"]) == expected["tokens"], dim
        assert [r["total_tokens"] for r in rows] == sorted((r["total_tokens"] for r in rows), reverse=True)
    tools = {r["key"] for r in body["by_tool"]["rows"]}
    assert {"claude_code", "gemini_cli", "support-bot", "code-review", "research-agent"} <= tools
    assert {"gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-pro"} <= {
        r["key"] for r in body["by_model"]["rows"]
    }
    users = [r["key"] for r in body["top_users"]]
    assert None in users and "ana@example.com" in users
    assert totals["users"] == expected["users"]
    assert totals["models"] == expected["models"]
    budget = body["budgets"]
    assert budget["available"] is True
    [item] = budget["items"]
    used = window_used(url, "default", 30)
    assert item == {
        "tenant": "default",
        "token_limit": BUDGET_LIMIT,
        "window_days": 30,
        "tokens_used": used,
        "tokens_remaining": max(0, BUDGET_LIMIT - used),
        "within_budget": used < BUDGET_LIMIT,
        "percent_used": round(100 * used / BUDGET_LIMIT, 1),
    }


def test_summary_of_one_tenant_and_bad_parameters(filled: tuple[str, Receiver]) -> None:
    url, receiver = filled
    status, body = get_json(receiver.http_port, "/api/dashboard/summary?days=7&tenant=acme")
    assert status == 200
    assert body["tenant"] == "acme" and body["tenants"] == ["acme"]
    assert body["totals"]["total_tokens"] == usage_totals(url, 7, "acme")["tokens"] > 0
    assert {r["key"] for r in body["by_tool"]["rows"]} == {"claude_code"}
    assert body["budgets"] == {"available": True, "items": []}
    status, body = get_json(receiver.http_port, "/api/dashboard/summary?tenant=nobody")
    assert status == 200 and body["totals"]["total_tokens"] == 0 and body["by_user"]["rows"] == []
    for query, message in (("days=0", "between"), ("days=abc", "not an integer"), ("days=400", "between")):
        status, body = get_json(receiver.http_port, f"/api/dashboard/summary?{query}")
        assert status == 400 and message in body["error"], query


def test_no_budgets_table_and_no_schema(db_url: str, loop: asyncio.AbstractEventLoop) -> None:
    with dashboard_server(db_url, loop) as receiver:
        status, body = get_json(receiver.http_port, "/api/dashboard/summary")
        assert status == 503 and "tokenscale migrate" in body["error"]
        migrate(db_url)
        with psycopg.connect(db_url) as conn:
            conn.execute("DROP TABLE tokenscale.budgets")
        status, body = get_json(receiver.http_port, "/api/dashboard/summary")
        assert status == 200
        assert body["budgets"] == {"available": False, "items": []}
        assert body["totals"]["total_tokens"] == 0


def test_auth_confines_the_api_to_the_keys_tenant(db_url: str, loop: asyncio.AbstractEventLoop) -> None:
    from tokenscale.auth import AuthPolicy, KeyCache, create_key  # noqa: PLC0415

    migrate(db_url)
    with psycopg.connect(db_url) as conn:
        reader = create_key(conn, "acme", ["read"])
        ingest = create_key(conn, "acme", ["ingest"])
    pool = open_pool(db_url)
    try:
        auth = AuthPolicy(pool, cache=KeyCache(ttl=0))
        with dashboard_server(db_url, loop, auth=auth) as receiver:
            port = receiver.http_port

            def call(path: str, key: str | None) -> tuple[int, Any]:
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        return response.status, json.loads(response.read())
                except urllib.error.HTTPError as exc:
                    return exc.code, json.loads(exc.read())

            assert call("/api/dashboard/summary", None)[0] == 401
            assert call("/api/dashboard/summary", "tsk_wrong")[0] == 401
            assert call("/api/dashboard/summary", ingest)[0] == 403
            assert call("/api/dashboard/summary?tenant=default", reader)[0] == 403
            status, body = call("/api/dashboard/summary", reader)
            assert status == 200 and body["tenant"] == "acme" and body["tenants"] == ["acme"]
            # The page itself holds no data; it asks for a key when the API refuses.
            assert get(port, "/")[0] == 200
    finally:
        pool.close()


def test_page_is_self_contained(filled: tuple[str, Receiver]) -> None:
    _, receiver = filled
    status, headers, body = get(receiver.http_port, "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    page = body.decode()
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    for needle in ("http://", "https://", "<link", "src="):
        assert needle not in page.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
            '"http://www.w3.org/2000/svg"', ""
        ), needle
    assert "<script>" in page and "<style>" in page


# --- the page in a real browser -------------------------------------------------------------------


class _Dom(html.parser.HTMLParser):
    """Elements by id (their attributes and text) and the text of every table cell."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, Any]] = {}
        self.cells: list[str] = []
        self.body: dict[str, str | None] = {}
        self._open: list[tuple[str, dict[str, Any] | None]] = []
        self._cell: list[str] | None = None
        self.remaining: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "body":
            self.body = values
        if "remaining" in (values.get("class") or "").split():
            self.remaining.append(int(values["data-value"] or -1))
        entry = None
        if values.get("id"):
            entry = self.by_id[str(values["id"])] = {"attrs": values, "text": ""}
        if tag == "td":
            self._cell = []
        self._open.append((tag, entry))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break
        if tag == "td" and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        for _, entry in self._open:
            if entry is not None:
                entry["text"] += data
        if self._cell is not None:
            self._cell.append(data)


def chromium(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="tokenscale-chromium-") as profile:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--window-size=1280,900",
                "--virtual-time-budget=8000",
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the unfiltered rows of an 8-bit, non-interlaced RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = previous[i], previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        previous = line
    if bpp == 4:  # drop alpha
        rows = [bytes(b for i, b in enumerate(r) if i % 4 != 3) for r in rows]
    return width, height, rows


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not found: install it with `apt-get install -y --no-install-recommends chromium "
    "fonts-liberation` (Debian)",
)
def test_dashboard_renders_in_headless_chromium(filled: tuple[str, Receiver]) -> None:
    url, receiver = filled
    page = f"http://127.0.0.1:{receiver.http_port}/?days=30"
    expected = usage_totals(url, 30)

    dumped = chromium(page, "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = _Dom()
    dom.feed(dumped.stdout)
    assert dom.body.get("data-loaded") == "true", dumped.stdout[-3000:]
    assert int(dom.by_id["kpi-tokens"]["attrs"]["data-value"]) == expected["tokens"]
    assert int(dom.by_id["kpi-requests"]["attrs"]["data-value"]) == expected["requests"]
    assert float(dom.by_id["kpi-cost"]["attrs"]["data-value"]) == pytest.approx(expected["cost"])
    assert int(dom.by_id["kpi-users"]["attrs"]["data-value"]) == expected["users"]
    assert f"{expected['tokens']:,} in 30 days" in dom.by_id["kpi-tokens-sub"]["text"]
    # Tables rendered by the script: users, models and tools, with the figures the API gave.
    for name in ("ana@example.com", "(no e-mail)", "claude-sonnet-4-5", "gpt-4o-mini", "claude_code"):
        assert name in dom.cells, name
    assert dom.remaining == [max(0, BUDGET_LIMIT - window_used(url, "default", 30))]
    assert "Daily tokens by tool" in dom.by_id["chart-title"]["text"]
    assert "all tenants" in dom.by_id["footer"]["text"]
    assert dom.by_id["error"]["text"] == ""

    SCREENSHOT.unlink(missing_ok=True)
    shot = chromium(page, f"--screenshot={SCREENSHOT}")
    assert shot.returncode == 0, shot.stderr[-2000:]
    width, height, rows = decode_png(SCREENSHOT.read_bytes())
    assert (width, height) == (1280, 900)
    pixels: dict[bytes, int] = {}
    for row in rows:
        for x in range(0, len(row), 3):
            pixel = row[x : x + 3]
            pixels[pixel] = pixels.get(pixel, 0) + 1
    # Not blank: many colours (charts, text, cards), and no single colour covering nearly everything.
    assert len(pixels) > 200, len(pixels)
    assert max(pixels.values()) < 0.9 * width * height
    # The chart's palette is on screen: the stacked bars were drawn.
    drawn = {bytes.fromhex(c) for c in ("4f6bff", "1fb39a", "f2a93b")}
    assert all(pixels.get(c, 0) > 50 for c in drawn), {c.hex(): pixels.get(c, 0) for c in drawn}
