"""A local stand-in for Anthropic's Messages API that Claude Code itself can talk to (streaming SSE).

Claude Code sends ``HEAD /`` (a connectivity probe) and then ``POST /v1/messages?beta=true``, always
streaming. The stand-in answers every call with fixed usage numbers, recorded per call, so that a
test can compare what tokenscale stored with exactly what the "API" returned:

- a call offering the ``Bash`` tool whose conversation has no tool result yet, for a prompt that
  holds :data:`TOOL_PROMPT_MARKER`, is answered with one ``Bash`` tool call (:attr:`command`);
- every other call (a reply after a tool result, a session-title request, a plain prompt) gets a
  short text.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: A prompt holding this marker makes the stand-in answer with a Bash tool call.
TOOL_PROMPT_MARKER = "TOOLTEST"

#: The usage every answer reports, in Anthropic's schema (input excludes the cache parts).
USAGE: dict[str, int] = {
    "input_tokens": 1500,
    "cache_read_input_tokens": 400,
    "cache_creation_input_tokens": 100,
    "output_tokens": 250,
}
#: Tokens of one answer as tokenscale counts them (every part, disjoint).
TOKENS_PER_CALL = sum(USAGE.values())


@dataclass
class MessagesCall:
    """One ``POST /v1/messages`` call and what the stand-in answered."""

    body: dict[str, Any]
    headers: dict[str, str]
    answered_tool_use: bool
    usage: dict[str, int]

    @property
    def tool_results(self) -> list[str]:
        """The text of every ``tool_result`` block of the conversation's last user message."""
        # Claude Code may put a "system" message after the user's turn (a mid-conversation note).
        users = [
            m for m in self.body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"
        ]
        if not users:
            return []
        content = users[-1].get("content")
        if not isinstance(content, list):
            return []
        texts = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                inner = block.get("content")
                if isinstance(inner, list):
                    texts.append(
                        "".join(str(part.get("text", "")) for part in inner if isinstance(part, dict))
                    )
                else:
                    texts.append(str(inner or ""))
        return texts


@dataclass
class FakeAnthropic:
    """The stand-in server on an ephemeral loopback port; a context manager."""

    command: str = "echo hi"
    calls: list[MessagesCall] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeAnthropic:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-anthropic", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def record(self, call: MessagesCall) -> None:
        with self._lock:
            self.calls.append(call)

    def snapshot(self) -> list[MessagesCall]:
        with self._lock:
            return list(self.calls)

    def clear(self) -> None:
        with self._lock:
            self.calls.clear()

    @property
    def tokens(self) -> int:
        """Every token the stand-in has reported so far (the ground truth of the ledger)."""
        return sum(sum(call.usage.values()) for call in self.snapshot())


def _wants_tool(body: dict[str, Any]) -> bool:
    tools = {tool.get("name") for tool in body.get("tools") or [] if isinstance(tool, dict)}
    if "Bash" not in tools:
        return False
    messages = body.get("messages") or []
    text = json.dumps(messages)
    return TOOL_PROMPT_MARKER in text and '"tool_result"' not in text


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAnthropic
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self.send_response(404)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": "not found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not self.path.startswith("/v1/messages") or self.path.startswith("/v1/messages/count_tokens"):
            if self.path.startswith("/v1/messages/count_tokens"):
                self._json(200, {"input_tokens": USAGE["input_tokens"]})
                return
            self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": "not found"}})
            return
        body = json.loads(raw or b"{}")
        tool = _wants_tool(body)
        call = MessagesCall(body, dict(self.headers.items()), tool, dict(USAGE))
        self.fake.record(call)
        model = str(body.get("model") or "claude-test")
        events = _tool_use_events(model, self.fake.command) if tool else _text_events(model, "Done.")
        if body.get("stream"):
            self._sse(events)
        else:
            self._json(200, _as_message(model, tool, self.fake.command))

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: Iterator[tuple[str, dict[str, Any]]]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("request-id", "req_fake0001")
        self.send_header("connection", "close")
        self.end_headers()
        for name, data in events:
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()
        self.close_connection = True


def _message_start(model: str) -> tuple[str, dict[str, Any]]:
    usage = dict(USAGE, output_tokens=1)
    message = {
        "id": "msg_fake0001",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return "message_start", {"type": "message_start", "message": message}


def _message_end(stop_reason: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": dict(USAGE),
        },
    )
    yield "message_stop", {"type": "message_stop"}


def _text_events(model: str, text: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield _message_start(model)
    yield (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    yield (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
    )
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    yield from _message_end("end_turn")


def _tool_use_events(model: str, command: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield _message_start(model)
    block = {"type": "tool_use", "id": "toolu_fake0001", "name": "Bash", "input": {}}
    yield "content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}
    arguments = json.dumps({"command": command, "description": "Run the command"})
    yield (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": arguments},
        },
    )
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    yield from _message_end("tool_use")


def _as_message(model: str, tool: bool, command: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = (
        [{"type": "tool_use", "id": "toolu_fake0001", "name": "Bash", "input": {"command": command}}]
        if tool
        else [{"type": "text", "text": "Done."}]
    )
    return {
        "id": "msg_fake0001",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if tool else "end_turn",
        "stop_sequence": None,
        "usage": dict(USAGE),
    }
