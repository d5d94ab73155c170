"""The dashboard's request explorer: its JSON API, and clicking through it in headless Chromium driven
over the DevTools protocol, on a real receiver and database, with exact numbers."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from otlp_clients import background_loop
from test_dashboard import CHROMIUM, decode_png, filled, get, get_json, loop  # noqa: F401 - fixtures
from tokenscale.api.openapi import openapi_document
from tokenscale.receiver.server import Receiver

SCREENSHOT_DIR = Path(os.environ.get("TOKENSCALE_DASHBOARD_SCREENSHOT", tempfile.gettempdir()))
COLUMNS = (
    "time, tenant, source, counted, tool, user_email, session_id, conversation_id, provider, model, "
    "operation, request_id, requests, input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, "
    "reasoning_tokens, input_tokens + cache_read_tokens + cache_write_tokens + output_tokens, cost_usd, "
    "cost_source, duration_ms, error_type"
)
INTS = {
    "requests",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
}


def window(days: int = 30) -> tuple[datetime, datetime]:
    today = datetime.now(UTC).date()
    since = datetime.combine(today - timedelta(days=days - 1), datetime.min.time(), tzinfo=UTC)
    return since, since + timedelta(days=days)


def events(url: str, where: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """usage_events rows in the explorer's columns, newest first."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            f"SELECT {COLUMNS} FROM tokenscale.usage_events WHERE {where} ORDER BY time DESC",
            params,
        ).fetchall()


def typed(column: str, text: str) -> Any:
    """A CSV or JSON cell as the database value it stands for."""
    if text == "" or text is None:
        return None
    if column == "time":
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    if column == "counted":
        return {"true": True, "false": False}[text] if isinstance(text, str) else text
    if column in INTS:
        return int(text)
    if column == "cost_usd":
        return Decimal(text)
    if column == "duration_ms":
        return float(text)
    return text


# --- the JSON API ----------------------------------------------------------------------------------


def test_requests_api_returns_the_rows_of_usage_events(filled: tuple[str, Receiver]) -> None:  # noqa: F811
    url, receiver = filled
    since, until = window()
    port = receiver.http_port
    status, body = get_json(port, "/api/dashboard/requests?user=ana@example.com&limit=5000")
    assert status == 200, body
    expected = events(
        url, "user_email = %s AND counted AND time >= %s AND time < %s", ("ana@example.com", since, until)
    )
    assert expected, "the demo sent usage for ana@example.com"
    got = [tuple(typed(c, r[c]) for c in body["columns"]) for r in body["rows"]]
    assert sorted(got, key=repr) == sorted(expected, key=repr)
    assert [r[0] for r in got] == sorted((r[0] for r in got), reverse=True)  # newest first
    assert body["totals"]["rows"] == len(expected) and not body["truncated"]
    assert body["totals"]["total_tokens"] == sum(r[18] for r in expected)
    assert Decimal(body["totals"]["cost_usd"]) == sum(r[19] for r in expected if r[19] is not None)

    # Sorted by tokens, ascending; a one-day range; a limit.
    status, body = get_json(port, "/api/dashboard/requests?sort=tokens&order=asc&limit=3")
    assert [r["total_tokens"] for r in body["rows"]] == sorted(r["total_tokens"] for r in body["rows"])
    assert len(body["rows"]) == 3 and body["truncated"]
    day = datetime.now(UTC).date().isoformat()
    status, body = get_json(port, f"/api/dashboard/requests?since={day}&until={day}&limit=5000")
    assert body["totals"]["rows"] == len(
        events(url, "counted AND time >= %s", (datetime.fromisoformat(day + "T00:00:00+00:00"),))
    )

    # Sessions: one row per session id, sums equal to its events.
    status, body = get_json(port, "/api/dashboard/groups?by=session")
    assert status == 200 and body["rows"]
    first = body["rows"][0]
    rows = events(url, "session_id = %s AND counted AND time >= %s", (first["key"], since))
    assert first["requests"] == sum(r[12] for r in rows) and first["total_tokens"] == sum(r[18] for r in rows)

    # Hourly: every hour, sums equal to usage_hourly.
    status, body = get_json(port, f"/api/dashboard/hourly?since={day}&until={day}")
    assert len(body["hours"]) == 24
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(input_tokens + cache_read_tokens + cache_write_tokens + output_tokens), 0) "
            "FROM tokenscale.usage_hourly WHERE hour >= %s",
            (datetime.fromisoformat(day + "T00:00:00+00:00"),),
        ).fetchone()
    assert row is not None and sum(h["total_tokens"] for h in body["hours"]) == row[0]

    # A custom date range for the summary.
    status, body = get_json(port, f"/api/dashboard/summary?since={since.date()}&until={day}")
    assert status == 200 and body["days"] == 30 and body["since"] == since.date().isoformat()

    for bad in (
        "sort=nope",
        "order=up",
        "limit=0",
        "since=yesterday",
        "by=x",
        "since=",
    ):
        path = "/api/dashboard/groups?" if bad.startswith("by") else "/api/dashboard/requests?"
        assert get(port, path + bad)[0] == 400, bad
    # A range given backwards is the same range.
    first, last = f"{since.date()}T00:00:00Z", f"{day}T23:00:00Z"
    forwards = get_json(port, f"/api/dashboard/requests?since={first}&until={last}")[1]
    backwards = get_json(port, f"/api/dashboard/requests?since={last}&until={first}")[1]
    assert backwards["rows"] == forwards["rows"] and forwards["rows"]


def test_docs_page_and_openapi_list_the_dashboard(filled: tuple[str, Receiver]) -> None:  # noqa: F811
    _, receiver = filled
    status, headers, body = get(receiver.http_port, "/docs")
    assert status == 200 and headers["content-type"].startswith("text/html")
    page = body.decode()
    assert "openapi.json" in page and "https://" not in page and "src=" not in page
    assert "default-src 'none'" in headers["content-security-policy"]
    paths = openapi_document()["paths"]
    for path in ("/api/dashboard/summary", "/api/dashboard/requests", "/api/dashboard/groups", "/docs"):
        assert path in paths, path


# --- Chromium over the DevTools protocol -----------------------------------------------------------


#: Run in the child: move the two pipe ends to descriptors 3 and 4 (where Chromium's
#: --remote-debugging-pipe expects them), whatever numbers they had, then become Chromium.
_EXEC_WITH_PIPES = (
    "import fcntl, os, sys\n"
    "r, w = (fcntl.fcntl(int(fd), fcntl.F_DUPFD, 100) for fd in sys.argv[1:3])\n"
    "os.dup2(r, 3)\n"
    "os.dup2(w, 4)\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)


class Browser:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (NUL-separated JSON messages)."""

    def __init__(self, downloads: Path) -> None:
        assert CHROMIUM is not None
        self._profile = tempfile.TemporaryDirectory(prefix="tokenscale-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        args = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={self._profile.name}",
            "--window-size=1280,900",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.process = subprocess.Popen(
            [sys.executable, "-c", _EXEC_WITH_PIPES, str(to_chrome_r), str(from_chrome_w), *args],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.call(
            "Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads), eventsEnabled=True
        )
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                with self._cond:
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self.events.append(message)
                    self._cond.notify_all()

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 60
        with self._cond:
            while self._next not in self._replies:
                assert self._cond.wait(max(0.0, deadline - time.monotonic())), f"no reply to {method}"
            reply = self._replies.pop(self._next)
        assert "error" not in reply, reply
        result: dict[str, Any] = reply["result"]
        return result

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        return self.call(method, self.session, **params)

    def evaluate(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
            # An exception (e.g. no document.body yet while the page loads) counts as not yet.
            if "exceptionDetails" not in result and result["result"].get("value"):
                return result["result"]["value"]
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element (scrolled into view first)."""
        box = self.evaluate(
            f"(function () {{ var e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); var r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        assert box is not None, f"nothing matches {selector}"
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.page("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.page("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(data)
        return data

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self.call("Browser.close")
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_chrome)
        self._profile.cleanup()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[tuple[Browser, Path]]:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = Browser(downloads)
    try:
        yield driver, downloads
    finally:
        driver.close()


def assert_not_blank(png: bytes) -> None:
    width, height, rows = decode_png(png)
    pixels: dict[bytes, int] = {}
    for row in rows:
        for x in range(0, len(row), 3):
            pixels[row[x : x + 3]] = pixels.get(row[x : x + 3], 0) + 1
    assert len(pixels) > 200, len(pixels)
    assert max(pixels.values()) < 0.9 * width * height


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not found")
def test_click_a_user_to_its_requests_and_export_them(
    filled: tuple[str, Receiver],  # noqa: F811
    browser: tuple[Browser, Path],
) -> None:
    url, receiver = filled
    driver, downloads = browser
    user = "ana@example.com"
    driver.page("Page.navigate", url=f"http://127.0.0.1:{receiver.http_port}/?days=30")
    driver.wait_for("document.body.getAttribute('data-loaded') === 'true'")
    driver.wait_for("document.getElementById('explorer').getAttribute('data-loaded') === 'requests'")
    assert_not_blank(driver.screenshot(SCREENSHOT_DIR / "tokenscale-dashboard-top.png"))

    # Click the user in "Top users": the explorer shows that user's requests.
    driver.click(f'#top-users button.link[data-key="{user}"]')
    driver.wait_for(
        "document.getElementById('explorer-title').textContent === 'Requests of user " + user + "' && "
        "document.getElementById('explorer').getAttribute('data-loaded') === 'requests'"
    )
    since, until = window()
    expected = events(url, "user_email = %s AND counted AND time >= %s AND time < %s", (user, since, until))
    assert int(driver.evaluate("document.getElementById('explorer').getAttribute('data-rows')")) == len(
        expected
    )
    shown_users = driver.evaluate(
        "Array.prototype.map.call(document.querySelectorAll('#explorer-rows tbody tr'),"
        " function (tr) { return tr.children[1].textContent; })"
    )
    assert shown_users == [user] * len(expected)
    status = driver.evaluate("document.getElementById('explorer-status').textContent")
    assert status.startswith(f"{len(expected)} requests \u00b7 {sum(r[18] for r in expected):,} tokens")
    png = driver.screenshot(SCREENSHOT_DIR / "tokenscale-dashboard-requests.png")
    assert_not_blank(png)

    # Export what is on screen as CSV: it equals the user's rows in usage_events.
    driver.click("#export-csv")
    deadline = time.monotonic() + 30
    while not any(
        e.get("method") == "Browser.downloadProgress" and e["params"].get("state") == "completed"
        for e in list(driver.events)
    ):
        assert time.monotonic() < deadline, driver.events[-5:]
        time.sleep(0.1)
    (exported,) = list(downloads.glob("*.csv"))
    assert exported.name == f"tokenscale-requests-{since.date()}-{(until - timedelta(days=1)).date()}.csv"
    table = list(csv.DictReader(io.StringIO(exported.read_text(encoding="utf-8"))))
    header = list(table[0].keys())
    assert header[:3] == ["time", "tenant", "source"] and "cost_usd" in header
    got = [tuple(typed(c, r[c]) for c in header) for r in table]
    assert got == expected or sorted(got, key=repr) == sorted(expected, key=repr)
    assert [r[0] for r in got] == [r[0] for r in expected]  # the on-screen order: newest first

    # Sessions view, then back to one session's requests by clicking it.
    driver.click('#view-seg button[data-view="session"]')
    driver.wait_for("document.getElementById('explorer').getAttribute('data-loaded') === 'session'")
    if int(driver.evaluate("document.getElementById('explorer').getAttribute('data-rows')")):
        session = driver.evaluate("document.querySelector('#explorer-rows tbody button.link').textContent")
        driver.click("#explorer-rows tbody button.link")
        driver.wait_for(
            "document.getElementById('explorer-title').textContent.indexOf('session ') >= 0 && "
            "document.getElementById('explorer').getAttribute('data-loaded') === 'requests'"
        )
        rows = events(url, "user_email = %s AND session_id = %s AND counted", (user, session))
        count = int(driver.evaluate("document.getElementById('explorer').getAttribute('data-rows')"))
        assert count == len(rows) > 0

    # The hourly view draws bars.
    driver.click('#gran-seg button[data-gran="hour"]')
    driver.wait_for("document.getElementById('chart-title').textContent === 'Hourly tokens (UTC)'")
    assert_not_blank(driver.screenshot(SCREENSHOT_DIR / "tokenscale-dashboard-hourly.png"))


def test_admin_view_across_tenants(filled: tuple[str, Receiver], loop: Any) -> None:  # noqa: F811
    from test_dashboard import dashboard_server  # noqa: PLC0415
    from tokenscale.auth import AuthPolicy, KeyCache, create_key  # noqa: PLC0415
    from tokenscale.store.writer import open_pool  # noqa: PLC0415

    url, _ = filled
    with psycopg.connect(url) as conn:
        operator = create_key(conn, "ops", ["admin"])
        ops_reader = create_key(conn, "ops", ["read"])
        acme_admin = create_key(conn, "acme", ["admin"])
    pool = open_pool(url)
    try:
        auth = AuthPolicy(pool, cache=KeyCache(ttl=0))
        with dashboard_server(url, loop, auth=auth, admin_tenant="ops") as receiver:

            def call(path: str, key: str) -> tuple[int, Any]:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{receiver.http_port}{path}", headers={"Authorization": f"Bearer {key}"}
                )
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        return response.status, json.loads(response.read())
                except urllib.error.HTTPError as exc:
                    return exc.code, json.loads(exc.read())

            # The operator's admin key: every tenant, or any one tenant.
            status, body = call("/api/dashboard/summary", operator)
            assert status == 200 and body["admin"] is True and body["tenant"] is None
            assert body["tenants"] == ["acme", "default"]
            status, body = call("/api/dashboard/requests?tenant=acme&limit=5000", operator)
            assert status == 200 and {r["tenant"] for r in body["rows"]} == {"acme"}
            assert body["totals"]["rows"] == len(
                events(url, "tenant = 'acme' AND counted AND time >= %s", (window()[0],))
            )
            # Anyone else: their own tenant only.
            status, body = call("/api/dashboard/requests?limit=5000", acme_admin)
            assert status == 200 and {r["tenant"] for r in body["rows"]} == {"acme"}
            assert call("/api/dashboard/requests?tenant=default", acme_admin)[0] == 403
            assert call("/api/dashboard/summary?tenant=acme", ops_reader)[0] == 403
            status, body = call("/api/dashboard/summary", ops_reader)
            assert status == 200 and body["admin"] is False and body["tenant"] == "ops"
        # The anonymous caller of a loopback bind without require_auth (the operator at the machine)
        # sees every tenant too, not only "default".
        anonymous = AuthPolicy(pool, allow_anonymous=True, cache=KeyCache(ttl=0))
        with dashboard_server(url, loop, auth=anonymous) as receiver:
            status, body = get_json(receiver.http_port, "/api/dashboard/summary")
            assert status == 200 and body["admin"] is True and body["tenants"] == ["acme", "default"]
    finally:
        pool.close()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not found")
def test_docs_page_renders_every_operation_in_chromium(filled: tuple[str, Receiver]) -> None:  # noqa: F811
    from otlp_clients import run  # noqa: PLC0415
    from test_dashboard import chromium  # noqa: PLC0415
    from tokenscale.api import UsageApiService, create_api_routes  # noqa: PLC0415
    from tokenscale.auth import AuthPolicy  # noqa: PLC0415
    from tokenscale.dashboard import create_dashboard_routes  # noqa: PLC0415
    from tokenscale.pipeline import ExportPipeline  # noqa: PLC0415
    from tokenscale.store.writer import UsageWriter, open_pool  # noqa: PLC0415

    url, _ = filled
    pool = open_pool(url)
    # As `serve` composes them: the API (and its /openapi.json) beside the dashboard and /docs.
    auth = AuthPolicy(pool, allow_anonymous=True)
    receiver = Receiver(ExportPipeline(UsageWriter(pool)), host="127.0.0.1", grpc_port=0, http_port=0)
    receiver.http_app.router.routes.extend(create_api_routes(UsageApiService(pool, auth, UsageWriter(pool))))
    receiver.http_app.router.routes.extend(create_dashboard_routes(pool, auth=auth))
    with background_loop() as loop_:
        run(loop_, receiver.start())
        try:
            dumped = chromium(f"http://127.0.0.1:{receiver.http_port}/docs", "--dump-dom")
        finally:
            run(loop_, receiver.stop())
            pool.close()
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    assert 'data-loaded="true"' in dumped.stdout, dumped.stdout[-2000:]
    # One entry per operation of the OpenAPI document (the page read it from /openapi.json).
    operations = [
        op["operationId"]
        for item in openapi_document()["paths"].values()
        for method, op in item.items()
        if method in ("get", "post", "put", "delete")
    ]
    for operation_id in operations:
        assert f'id="op-{operation_id}"' in dumped.stdout, operation_id
