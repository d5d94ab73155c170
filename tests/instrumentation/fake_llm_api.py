"""A local fake of the OpenAI and Anthropic HTTP APIs (JSON and SSE) and of the tokenscale budget check."""

from __future__ import annotations

import base64
import json
import re
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# Models that make the fake fail: a 400 before anything is sent, or an error event mid-stream.
MODEL_BAD_REQUEST = "error-400"
MODEL_STREAM_ERROR = "stream-error"

CREATED = 1_767_225_600  # fixed, so that two runs give identical chunks

# --- OpenAI Chat Completions -------------------------------------------------------------------

CHAT_ID = "chatcmpl-fake0001"
CHAT_FINGERPRINT = "fp_fake0001"
CHAT_USAGE: dict[str, Any] = {
    "prompt_tokens": 1200,
    "completion_tokens": 350,
    "total_tokens": 1550,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 256,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
CHAT_TEXT = ("Hello", " from", " the fake.")

# --- OpenAI Responses API ----------------------------------------------------------------------

RESPONSE_ID = "resp_fake0001"
RESPONSES_USAGE: dict[str, Any] = {
    "input_tokens": 900,
    "input_tokens_details": {"cached_tokens": 512, "cache_write_tokens": 64},
    "output_tokens": 420,
    "output_tokens_details": {"reasoning_tokens": 300},
    "total_tokens": 1320,
}

# --- OpenAI embeddings -------------------------------------------------------------------------

# Images (gpt-image-1 reports tokens) and audio (gpt-4o-transcribe reports tokens, whisper seconds).
IMAGES_USAGE: dict[str, Any] = {
    "input_tokens": 57,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 57},
    "output_tokens": 4160,
    "total_tokens": 4217,
}
TRANSCRIPTION_TOKENS_USAGE: dict[str, Any] = {
    "type": "tokens",
    "input_tokens": 122,
    "input_token_details": {"audio_tokens": 110, "text_tokens": 12},
    "output_tokens": 31,
    "total_tokens": 153,
}
TRANSCRIPTION_DURATION_USAGE: dict[str, Any] = {"type": "duration", "seconds": 14}
SPEECH_BYTES = b"ID3fake-mp3-audio"
VIDEO_ID = "video_fake0001"

EMBEDDING = (0.25, -0.5, 0.125)
EMBEDDINGS_USAGE: dict[str, Any] = {"prompt_tokens": 8, "total_tokens": 8}

# --- Anthropic Messages ------------------------------------------------------------------------

MESSAGE_ID = "msg_fake0001"
ANTHROPIC_USAGE: dict[str, Any] = {
    "input_tokens": 50,
    "cache_read_input_tokens": 2000,
    "cache_creation_input_tokens": 300,
    "output_tokens": 400,
    "output_tokens_details": {"thinking_tokens": 250},
    "service_tier": "standard",
}
ANTHROPIC_TEXT = ("Hello", " from", " Claude.")


def response_model(model: str) -> str:
    """The dated model name the fake OpenAI API answers for ``model``."""
    return f"{model}-2026-01-01"


@dataclass
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class BudgetAnswer:
    """What the fake budget endpoint answers next: a JSON body, or an HTTP status only."""

    status: int = 200
    body: Any = field(default_factory=lambda: budget_answer(10, 1000))
    delay: float = 0.0


def budget_answer(
    used: int, limit: int, *, scope: str = "user", value: str | None = "ana@example.com"
) -> Any:
    """An answer of ``GET /v1/budgets/check`` with one 30-day token window."""
    return {
        "allowed": used < limit,
        "checkedAt": "2026-12-03T12:00:00.000000Z",
        "windows": [
            {
                "budgetId": "7d1c3f4e-0000-4000-8000-000000000001",
                "scope": scope,
                "scopeValue": value,
                "unit": "tokens",
                "limit": limit,
                "used": used,
                "remaining": max(0, limit - used),
                "fraction": used / limit if limit else 1.0,
                "windowSeconds": 30 * 86400,
                "windowStart": "2026-11-03T12:00:00.000000Z",
                "windowEnd": "2026-12-03T12:00:00.000000Z",
                "exceeded": used >= limit,
            }
        ],
    }


class FakeLLMAPI:
    """A real HTTP server on 127.0.0.1 (ephemeral port), served from a thread."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        #: Give every response an id of its own (``<base>-<n>``), as real APIs do; off, every
        #: response has the fixed ids the unit tests compare with.
        self.unique_ids = False
        self._answered = 0
        self.budget = BudgetAnswer()
        #: Video jobs by id: each retrieve moves a job on (queued -> in_progress -> completed, or
        #: failed for a prompt containing "fail").
        self.videos: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-llm-api", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    def start(self) -> FakeLLMAPI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLMAPI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def response_id(self, base: str) -> str:
        """The id of the next response: ``base``, or ``base-<n>`` with :attr:`unique_ids`."""
        with self._lock:
            self._answered += 1
            return f"{base}-{self._answered}" if self.unique_ids else base

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [request for request in self.requests if request.path == path]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle + delayed ACK add ~40 ms.
    disable_nagle_algorithm = True
    server: ThreadingHTTPServer
    _id: str  # the id of the response being written

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    @property
    def fake(self) -> FakeLLMAPI:
        return self.server.fake  # type: ignore[attr-defined,no-any-return]

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        self.fake.record(
            RecordedRequest(
                "GET",
                parts.path,
                {key.lower(): value for key, value in self.headers.items()},
                parse_qs(parts.query),
            )
        )
        if parts.path.startswith("/v1/videos/"):
            self._retrieve_video(parts.path.rsplit("/", 1)[1])
            return
        if parts.path != "/v1/budgets/check":
            self._json(404, {"error": "not found"})
            return
        answer = self.fake.budget
        if answer.delay:
            threading.Event().wait(answer.delay)
        if answer.status != 200:
            self._json(answer.status, {"error": "budget check failed"})
        else:
            self._json(200, answer.body)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        if self.headers.get("content-type", "").startswith("multipart/form-data"):
            # The fields of a file upload (images.edit, audio): only the text parts are read.
            body: dict[str, Any] = {
                match[1].decode(): match[2].decode()
                for match in re.finditer(rb'name="([^"]+)"\r\n\r\n(.*?)\r\n--', raw, re.S)
            }
        else:
            body = json.loads(raw or b"{}")
        path = urlsplit(self.path).path
        self.fake.record(
            RecordedRequest("POST", path, {key.lower(): value for key, value in self.headers.items()}, body)
        )
        route = {
            "/v1/chat/completions": self._chat,
            "/v1/responses": self._responses,
            "/v1/embeddings": self._embeddings,
            "/v1/messages": self._messages,
            "/v1/images/generations": self._images,
            "/v1/images/edits": self._images,
            "/v1/audio/transcriptions": self._transcription,
            "/v1/audio/translations": self._transcription,
            "/v1/audio/speech": self._speech,
            "/v1/videos": self._create_video,
        }.get(path)
        if route is None:
            self._json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})
            return
        route(body)

    # --- transport ---------------------------------------------------------------------------

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-request-id", "req_fake")
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: Iterator[tuple[str | None, Any]]) -> None:
        chunks = []
        for event, data in events:
            text = data if isinstance(data, str) else json.dumps(data)
            chunks.append((f"event: {event}\n" if event else "") + f"data: {text}\n\n")
        # The whole stream with a content-length: valid SSE, and the connection stays reusable.
        payload = "".join(chunks).encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _openai_error(self) -> None:
        self._json(
            400,
            {
                "error": {
                    "message": f"The model `{MODEL_BAD_REQUEST}` does not exist.",
                    "type": "invalid_request_error",
                    "param": "model",
                    "code": "model_not_found",
                }
            },
        )

    # --- OpenAI ------------------------------------------------------------------------------

    def _chat(self, body: dict[str, Any]) -> None:
        self._id = self.fake.response_id(CHAT_ID)
        model = body["model"]
        if model == MODEL_BAD_REQUEST:
            self._openai_error()
            return
        n = int(body.get("n") or 1)
        reasons = ["stop"] + ["length"] * (n - 1)
        if not body.get("stream"):
            self._json(
                200,
                {
                    "id": self._id,
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": response_model(model),
                    "system_fingerprint": CHAT_FINGERPRINT,
                    "service_tier": "default",
                    "choices": [
                        {
                            "index": index,
                            "message": {"role": "assistant", "content": "".join(CHAT_TEXT), "refusal": None},
                            "logprobs": None,
                            "finish_reason": reasons[index],
                        }
                        for index in range(n)
                    ],
                    "usage": CHAT_USAGE,
                },
            )
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self._sse(self._chat_chunks(model, n, reasons, include_usage))

    def _chat_chunks(
        self, model: str, n: int, reasons: list[str], include_usage: bool
    ) -> Iterator[tuple[str | None, Any]]:
        def chunk(choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
            data: dict[str, Any] = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": response_model(model),
                "system_fingerprint": CHAT_FINGERPRINT,
                "service_tier": "default",
                "choices": choices,
            }
            if include_usage:
                data["usage"] = usage
            return data

        for index in range(n):
            yield (
                None,
                chunk(
                    [{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
                ),
            )
        for number, text in enumerate(CHAT_TEXT):
            if model == MODEL_STREAM_ERROR and number == 1:
                yield None, {"error": {"message": "The server had an error", "type": "server_error"}}
                return
            for index in range(n):
                yield None, chunk([{"index": index, "delta": {"content": text}, "finish_reason": None}])
        for index in range(n):
            yield None, chunk([{"index": index, "delta": {}, "finish_reason": reasons[index]}])
        if include_usage:
            yield None, chunk([], CHAT_USAGE)
        yield None, "[DONE]"

    def _response(self, model: str, status: str, *, done: bool) -> dict[str, Any]:
        output: list[dict[str, Any]] = []
        if done:
            output = [
                {"type": "reasoning", "id": "rs_fake0001", "summary": []},
                {
                    "type": "message",
                    "id": "msg_out0001",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "".join(CHAT_TEXT), "annotations": []}],
                },
            ]
        return {
            "id": self._id,
            "object": "response",
            "created_at": CREATED,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": None,
            "model": response_model(model),
            "output": output,
            "parallel_tool_calls": True,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "usage": RESPONSES_USAGE if done else None,
        }

    def _responses(self, body: dict[str, Any]) -> None:
        self._id = self.fake.response_id(RESPONSE_ID)
        model = body["model"]
        if model == MODEL_BAD_REQUEST:
            self._openai_error()
            return
        if not body.get("stream"):
            self._json(200, self._response(model, "completed", done=True))
            return
        self._sse(self._response_events(model))

    def _response_events(self, model: str) -> Iterator[tuple[str | None, Any]]:
        sequence = iter(range(1000))

        def event(kind: str, **fields: Any) -> tuple[str, Any]:
            return kind, {"type": kind, "sequence_number": next(sequence), **fields}

        yield event("response.created", response=self._response(model, "in_progress", done=False))
        yield event("response.in_progress", response=self._response(model, "in_progress", done=False))
        item = {
            "type": "message",
            "id": "msg_out0001",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        yield event("response.output_item.added", output_index=0, item=item)
        part = {"type": "output_text", "text": "", "annotations": []}
        yield event(
            "response.content_part.added", item_id="msg_out0001", output_index=0, content_index=0, part=part
        )
        for number, text in enumerate(CHAT_TEXT):
            if model == MODEL_STREAM_ERROR and number == 1:
                yield event("error", code="server_error", message="The server had an error", param=None)
                return
            yield event(
                "response.output_text.delta",
                item_id="msg_out0001",
                output_index=0,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        yield event(
            "response.output_text.done",
            item_id="msg_out0001",
            output_index=0,
            content_index=0,
            text="".join(CHAT_TEXT),
            logprobs=[],
        )
        yield event("response.completed", response=self._response(model, "completed", done=True))

    def _embeddings(self, body: dict[str, Any]) -> None:
        model = body["model"]
        if model == MODEL_BAD_REQUEST:
            self._openai_error()
            return
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if body.get("encoding_format") == "base64":
            vector: Any = base64.b64encode(struct.pack(f"<{len(EMBEDDING)}f", *EMBEDDING)).decode()
        else:
            vector = list(EMBEDDING)
        self._json(
            200,
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": index, "embedding": vector}
                    for index in range(len(inputs))
                ],
                "model": model,
                "usage": EMBEDDINGS_USAGE,
            },
        )

    def _images(self, body: dict[str, Any]) -> None:
        count = int(body.get("n") or 1)
        answer = {
            "created": CREATED,
            "data": [{"b64_json": base64.b64encode(b"png").decode()} for _ in range(count)],
            "size": body.get("size", "1024x1024"),
            "quality": body.get("quality", "high"),
            "usage": IMAGES_USAGE,
        }
        if str(body.get("model", "")).startswith("dall-e"):
            del answer["usage"]  # DALL-E is billed per image and reports no tokens
        self._json(200, answer)

    def _transcription(self, body: dict[str, Any]) -> None:
        usage = (
            TRANSCRIPTION_DURATION_USAGE if body.get("model") == "whisper-1" else TRANSCRIPTION_TOKENS_USAGE
        )
        self._json(200, {"text": "Hello from the fake.", "usage": usage})

    def _create_video(self, body: dict[str, Any]) -> None:
        video_id = self.fake.response_id(VIDEO_ID)
        job = {
            "id": video_id,
            "object": "video",
            "created_at": CREATED,
            "model": body.get("model", "sora-2"),
            "prompt": body.get("prompt"),
            "seconds": str(body.get("seconds", "4")),
            "size": body.get("size", "720x1280"),
            "status": "queued",
            "progress": 0,
        }
        with self.fake._lock:
            self.fake.videos[video_id] = job
        self._json(200, job)

    def _retrieve_video(self, video_id: str) -> None:
        with self.fake._lock:
            job = self.fake.videos.get(video_id)
            if job is None:
                answer = None
            else:
                if job["status"] == "queued":
                    job.update(status="in_progress", progress=50)
                elif job["status"] == "in_progress" and "fail" in (job["prompt"] or ""):
                    job.update(status="failed", error={"code": "moderation_blocked", "message": "blocked"})
                elif job["status"] == "in_progress":
                    job.update(status="completed", progress=100, completed_at=CREATED + 60)
                answer = dict(job)
        if answer is None:
            self._json(404, {"error": {"message": f"no video {video_id}", "type": "not_found"}})
        else:
            self._json(200, answer)

    def _speech(self, body: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("content-type", "audio/mpeg")
        self.send_header("content-length", str(len(SPEECH_BYTES)))
        self.end_headers()
        self.wfile.write(SPEECH_BYTES)

    # --- Anthropic ---------------------------------------------------------------------------

    def _messages(self, body: dict[str, Any]) -> None:
        self._id = self.fake.response_id(MESSAGE_ID)
        model = body["model"]
        if model == MODEL_BAD_REQUEST:
            self._json(
                400,
                {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": f"model: {model} is not valid"},
                    "request_id": "req_fake",
                },
            )
            return
        if not body.get("stream"):
            self._json(
                200,
                {
                    "id": self._id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": "".join(ANTHROPIC_TEXT)}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": ANTHROPIC_USAGE,
                },
            )
            return
        self._sse(self._message_events(model))

    def _message_events(self, model: str) -> Iterator[tuple[str | None, Any]]:
        start_usage = {**ANTHROPIC_USAGE, "output_tokens": 1}
        del start_usage["output_tokens_details"]
        message = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        }
        yield "message_start", {"type": "message_start", "message": message}
        yield (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        yield "ping", {"type": "ping"}
        for number, text in enumerate(ANTHROPIC_TEXT):
            if model == MODEL_STREAM_ERROR and number == 1:
                yield (
                    "error",
                    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                )
                return
            yield (
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": 0}
        delta_usage = {
            "input_tokens": ANTHROPIC_USAGE["input_tokens"],
            "cache_read_input_tokens": ANTHROPIC_USAGE["cache_read_input_tokens"],
            "cache_creation_input_tokens": ANTHROPIC_USAGE["cache_creation_input_tokens"],
            "output_tokens": ANTHROPIC_USAGE["output_tokens"],
            "output_tokens_details": ANTHROPIC_USAGE["output_tokens_details"],
        }
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": delta_usage,
            },
        )
        yield "message_stop", {"type": "message_stop"}
