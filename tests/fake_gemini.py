"""A local stand-in for the Gemini API that Gemini CLI itself can talk to (``GOOGLE_GEMINI_BASE_URL``).

Gemini CLI first makes a routing call (``<model>:generateContent``, a JSON answer with a complexity
score), then its main streaming calls (``<model>:streamGenerateContent?alt=sse``). Every answer
reports :data:`USAGE`:

- a streaming call for a prompt holding :data:`TOOL_PROMPT_MARKER` whose last turn is not a tool
  result is answered with one ``run_shell_command`` call (:attr:`FakeGemini.command`);
- every other streaming call gets the text ``Done.``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOOL_PROMPT_MARKER = "TOOLTEST"

#: The usage of every answer: prompt tokens (no cache), output tokens.
USAGE: dict[str, int] = {"promptTokenCount": 1000, "candidatesTokenCount": 50, "totalTokenCount": 1050}
#: Tokens of one answer as tokenscale counts them.
TOKENS_PER_CALL = USAGE["promptTokenCount"] + USAGE["candidatesTokenCount"]


@dataclass
class GeminiCall:
    """One call to the stand-in: its path, its last turn, and whether it got a tool call."""

    path: str
    last_turn: dict[str, Any]
    answered_tool_call: bool

    @property
    def function_responses(self) -> list[dict[str, Any]]:
        parts = self.last_turn.get("parts") or []
        return [p["functionResponse"] for p in parts if isinstance(p, dict) and "functionResponse" in p]


@dataclass
class FakeGemini:
    """The stand-in server on an ephemeral loopback port; a context manager."""

    command: str = "echo hi"
    calls: list[GeminiCall] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeGemini:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-gemini", daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def snapshot(self) -> list[GeminiCall]:
        with self._lock:
            return list(self.calls)

    @property
    def tokens(self) -> int:
        return TOKENS_PER_CALL * len(self.snapshot())


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGemini
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        contents = body.get("contents") or [{}]
        last = contents[-1] if isinstance(contents[-1], dict) else {}
        streaming = ":streamGenerateContent" in self.path
        tool = (
            streaming
            and TOOL_PROMPT_MARKER in json.dumps(contents)
            and "functionResponse" not in json.dumps(last)
        )
        with self.fake._lock:
            self.fake.calls.append(GeminiCall(self.path, last, tool))
        if not streaming:  # the routing call: a JSON answer
            text = json.dumps({"complexity_reasoning": "a simple request", "complexity_score": 5})
            self._send("application/json", json.dumps(_response([{"text": text}])).encode())
            return
        if tool:
            call = {"name": "run_shell_command", "args": {"command": self.fake.command, "description": "run"}}
            parts: list[dict[str, Any]] = [{"functionCall": call}]
        else:
            parts = [{"text": "Done."}]
        self._send("text/event-stream", f"data: {json.dumps(_response(parts))}\r\n\r\n".encode())

    def _send(self, content_type: str, data: bytes) -> None:
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _response(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": dict(USAGE),
        "modelVersion": "stand-in",
    }
