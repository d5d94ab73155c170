"""``tokenscale demo``: a realistic burst of AI telemetry, sent through the OpenTelemetry SDK (OTLP/gRPC)."""

from __future__ import annotations

import hashlib
import random
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TextIO

from tokenscale.errors import TokenscaleError
from tokenscale.mapping.pricing import rates_for
from tokenscale.mapping.rules import canonical_tool

__all__ = ["DemoError", "DemoResult", "DemoTotals", "ProgressBar", "demo"]

_NS: Final = 1_000_000_000
#: The users' names; more users than names get ``userN@example.com``.
_NAMES: Final = ("ana", "bo", "chen", "dara", "eli", "fatima", "gus", "hana", "ivan", "jo", "kai", "lena")
_CLAUDE_CODE: Final = "claude-code"


class DemoError(TokenscaleError):
    """The demo could not deliver its telemetry (the receiver is unreachable or refused it)."""


@dataclass(frozen=True, slots=True)
class _App:
    """A GenAI application instrumented with the OpenTelemetry GenAI conventions (spans)."""

    service: str
    provider: str
    server: str
    models: tuple[tuple[str, float], ...]  # model, weight
    input_range: tuple[int, int]
    output_range: tuple[int, int]
    cache_read_share: float  # chance a request reads a cache
    cache_write_share: float  # chance a request writes one
    reasoning_share: float  # chance a request reasons
    weight: float  # share of the apps' requests
    agent: bool = False  # wraps its calls in invoke_agent spans (never counted themselves)


_APPS: Final = (
    _App(
        "support-bot",
        "openai",
        "api.openai.com",
        (("gpt-4o-mini", 0.8), ("gpt-4.1", 0.2)),
        (400, 6_000),
        (50, 900),
        0.5,
        0.0,
        0.0,
        0.45,
    ),
    _App(
        "code-review",
        "anthropic",
        "api.anthropic.com",
        (("claude-sonnet-4-5", 1.0),),
        (2_000, 30_000),
        (200, 3_000),
        0.7,
        0.4,
        0.3,
        0.3,
    ),
    _App(
        "research-agent",
        "gcp.gemini",
        "generativelanguage.googleapis.com",
        (("gemini-2.5-pro", 0.7), ("gemini-2.5-flash", 0.3)),
        (1_000, 20_000),
        (300, 4_000),
        0.4,
        0.0,
        0.8,
        0.25,
        agent=True,
    ),
)
_CLAUDE_MODELS: Final = (("claude-sonnet-4-5", 0.75), ("claude-haiku-4-5", 0.25))
_CLAUDE_SHARE: Final = 0.4


@dataclass(slots=True)
class DemoTotals:
    """Requests and disjoint token counts (input excludes cache; output includes reasoning)."""

    requests: int = 0
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input + cache reads + cache writes + output."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens + self.output_tokens

    def add(self, other: DemoTotals) -> None:
        """Add ``other`` to these totals."""
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.output_tokens += other.output_tokens
        self.reasoning_tokens += other.reasoning_tokens

    def as_dict(self) -> dict[str, int]:
        """The counts by ``usage_daily`` column name."""
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What the demo sent: per ``(tool, user_email, model)`` and in total, as usage_daily will count it."""

    endpoint: str
    users: tuple[str, ...]
    by_key: dict[tuple[str, str, str], DemoTotals]
    totals: DemoTotals
    spans: int
    log_records: int
    seconds: float

    def summary(self) -> str:
        """A few lines for the terminal."""
        t = self.totals
        return (
            f"sent {t.requests} AI requests from {len(self.users)} users to {self.endpoint} "
            f"in {self.seconds:.1f} s ({self.spans} spans, {self.log_records} log records, Claude Code "
            f"metrics)\n"
            f"tokens: {t.total_tokens:,} (input {t.input_tokens:,}, cache read {t.cache_read_tokens:,}, "
            f"cache write {t.cache_write_tokens:,}, output {t.output_tokens:,} incl. reasoning "
            f"{t.reasoning_tokens:,})\n"
        )


class ProgressBar:
    """A one-line progress bar on a text stream (redrawn in place on a terminal)."""

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None, width: int = 30) -> None:
        self.total = max(1, total)
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.done = 0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_percent = -1

    def update(self, done: int, note: str = "") -> None:
        """Show ``done`` of ``total`` (on a non-terminal, only every 10%)."""
        self.done = min(done, self.total)
        percent = 100 * self.done // self.total
        if not self._tty and percent // 10 == self._last_percent // 10 and self.done < self.total:
            return
        self._last_percent = percent
        filled = self.width * self.done // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"{self.label} [{bar}] {percent:3d}% {self.done}/{self.total}"
        if note:
            line += f" {note}"
        self.stream.write(("\r" + line + "\x1b[K") if self._tty else line + "\n")
        self.stream.flush()

    def finish(self, note: str = "") -> None:
        """Show completion and end the line."""
        self._last_percent = -1
        self.update(self.total, note)
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass(slots=True)
class _Request:
    tool: str
    service: str
    provider: str
    server: str
    user: str
    model: str
    start_ns: int
    duration_ns: int
    usage: DemoTotals
    session: str = ""
    agent: str = ""  # the invoke_agent run it belongs to


def _pick(rng: random.Random, weighted: Sequence[tuple[str, float]]) -> str:
    return rng.choices([w[0] for w in weighted], [w[1] for w in weighted])[0]


def _users(n: int) -> tuple[str, ...]:
    return tuple(
        f"{_NAMES[i]}@example.com" if i < len(_NAMES) else f"user{i + 1}@example.com" for i in range(n)
    )


@dataclass(slots=True)
class _Clock:
    """Moments inside working hours of the last ``days`` UTC days, never in the future."""

    rng: random.Random
    days: int
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def moment(self, lead: float = 0.0) -> int:
        """A start time whose next ``lead`` seconds also lie in the past."""
        today = self.now.replace(hour=0, minute=0, second=0, microsecond=0)
        latest = self.now - timedelta(seconds=lead + 120)
        offset = self.rng.randrange(self.days)
        when = today - timedelta(days=offset) + timedelta(seconds=self.rng.uniform(8 * 3600, 19 * 3600))
        if when > latest:
            # Today, before now: anywhere between midnight and ``latest`` (or ``latest`` itself).
            room = (latest - today).total_seconds()
            when = today + timedelta(seconds=self.rng.uniform(0, room)) if room > 0 else latest
        return int(when.timestamp() * _NS)


def _plan(rng: random.Random, users: Sequence[str], requests: int, days: int) -> list[_Request]:
    """Who asks what, when: Claude Code sessions and GenAI app calls (some inside agent runs).

    About 40% of the requests come from Claude Code; some users are much busier than others.
    """
    clock = _Clock(rng, days)
    weights = [1 / (i + 1) for i in range(len(users))]
    claude_quota = round(requests * _CLAUDE_SHARE)
    planned: list[_Request] = []
    while len(planned) < claude_quota:
        # A Claude Code session: a few turns a minute or so apart; input is what the cache missed.
        user = rng.choices(users, weights)[0]
        session = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        start = clock.moment(lead=10 * 120 + 20)
        for _ in range(min(rng.randint(3, 10), claude_quota - len(planned))):
            usage = DemoTotals(
                requests=1,
                input_tokens=rng.randint(3, 600),
                cache_read_tokens=rng.randint(5_000, 60_000),
                cache_write_tokens=rng.randint(0, 4_000),
                output_tokens=rng.randint(20, 2_500),
            )
            planned.append(
                _Request(
                    canonical_tool(_CLAUDE_CODE),
                    _CLAUDE_CODE,
                    "anthropic",
                    "api.anthropic.com",
                    user,
                    _pick(rng, _CLAUDE_MODELS),
                    start,
                    rng.randint(800, 20_000) * 1_000_000,
                    usage,
                    session=session,
                )
            )
            start += rng.randint(20, 120) * _NS
    while len(planned) < requests:
        user = rng.choices(users, weights)[0]
        app = rng.choices(_APPS, [app.weight for app in _APPS])[0]
        calls = rng.randint(2, 4) if app.agent else 1
        agent = str(uuid.UUID(int=rng.getrandbits(128), version=4)) if app.agent else ""
        start = clock.moment(lead=calls * 10)
        for _ in range(min(calls, requests - len(planned))):
            output = rng.randint(*app.output_range)
            reasoning = rng.randint(50, output) if rng.random() < app.reasoning_share else 0
            usage = DemoTotals(
                requests=1,
                input_tokens=rng.randint(*app.input_range),
                cache_read_tokens=rng.randint(256, 8_000) if rng.random() < app.cache_read_share else 0,
                cache_write_tokens=rng.randint(256, 4_000) if rng.random() < app.cache_write_share else 0,
                output_tokens=output,
                reasoning_tokens=reasoning,
            )
            duration = rng.randint(400, 9_000) * 1_000_000
            planned.append(
                _Request(
                    app.service,
                    app.service,
                    app.provider,
                    app.server,
                    user,
                    _pick(rng, app.models),
                    start,
                    duration,
                    usage,
                    agent=agent,
                )
            )
            start += duration + rng.randint(50, 800) * 1_000_000
    return planned


def _reported_cost(request: _Request) -> float | None:
    """What Claude Code would report as the request's cost (list prices), or None when unknown."""
    u = request.usage
    rates = rates_for(
        request.provider, request.model, u.input_tokens + u.cache_read_tokens + u.cache_write_tokens
    )
    if rates is None:
        return None
    return (
        u.input_tokens * rates.input
        + u.cache_read_tokens * rates.cache_read
        + u.cache_write_tokens * rates.cache_write
        + u.output_tokens * rates.output
    )


def _endpoint(endpoint: str) -> tuple[str, bool]:
    """``host:port`` and whether the channel is insecure, from ``host:port`` or ``http(s)://host:port``."""
    if endpoint.startswith("https://"):
        return endpoint.removeprefix("https://").rstrip("/"), False
    return endpoint.removeprefix("http://").rstrip("/"), True


def _check_reachable(target: str, insecure: bool, timeout: float) -> None:
    import grpc  # noqa: PLC0415

    channel = (
        grpc.insecure_channel(target)
        if insecure
        else grpc.secure_channel(target, grpc.ssl_channel_credentials())
    )
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise DemoError(
            f"cannot reach an OTLP/gRPC receiver at {target} (is `tokenscale serve` running?)"
        ) from None
    finally:
        channel.close()


def demo(
    endpoint_grpc: str,
    *,
    users: int = 5,
    requests: int = 200,
    progress: bool = True,
    days: int = 7,
    seed: int | None = None,
    api_key: str | None = None,
    stream: TextIO | None = None,
    timeout: float = 10.0,
) -> DemoResult:
    """Send ``requests`` AI requests of ``users`` users over the last ``days`` days to the OTLP/gRPC
    receiver at ``endpoint_grpc`` (``host:port`` or ``http://host:port``), through the real
    OpenTelemetry SDK, and return what usage_daily will count.

    GenAI apps (``support-bot``, ``code-review``, ``research-agent``) send GenAI-convention spans
    with ``gen_ai.usage.*`` (cache reads and writes, reasoning), the research agent inside
    ``invoke_agent`` spans; Claude Code (``service.name=claude-code``) sends ``api_request`` log
    events plus the same usage as ``claude_code.token.usage`` delta metrics, counted once. Needs the
    ``opentelemetry-sdk`` and ``opentelemetry-exporter-otlp-proto-grpc`` packages.
    """
    if users < 1 or requests < 1 or not 1 <= days <= 366:
        raise ValueError("users and requests must be positive, days between 1 and 366")
    try:
        from tokenscale.commands import _otel  # noqa: PLC0415 - needs the OpenTelemetry SDK
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise DemoError(
            f"the demo needs the OpenTelemetry SDK and OTLP/gRPC exporter ({exc.name} is missing): "
            "pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc"
        ) from exc
    started = time.monotonic()
    target, insecure = _endpoint(endpoint_grpc)
    _check_reachable(target, insecure, timeout)
    rng = random.Random(seed)
    people = _users(users)
    planned = _plan(rng, people, requests, days)
    bar = ProgressBar(len(planned), "demo", stream) if progress else None
    headers = {"authorization": f"Bearer {api_key}"} if api_key else None
    sender = _otel.Sender(target, insecure=insecure, headers=headers, timeout=timeout)
    by_key: dict[tuple[str, str, str], DemoTotals] = {}
    totals = DemoTotals()
    try:
        for done, request in enumerate(planned, 1):
            if request.service == _CLAUDE_CODE:
                sender.claude_code_request(_fields(request), _reported_cost(request))
            else:
                sender.genai_span(_fields(request))
            by_key.setdefault((request.tool, request.user, request.model), DemoTotals()).add(request.usage)
            totals.add(request.usage)
            if bar is not None:
                bar.update(done)
        if bar is not None:
            bar.update(len(planned), "flushing...")
        failures = sender.close()
    except BaseException:
        sender.close()
        raise
    if bar is not None:
        bar.finish("done")
    if failures:
        raise DemoError(f"the receiver at {target} refused or missed exports: {'; '.join(failures)}")
    return DemoResult(
        endpoint=target,
        users=people,
        by_key=by_key,
        totals=totals,
        spans=sender.spans,
        log_records=sender.log_records,
        seconds=time.monotonic() - started,
    )


def _fields(request: _Request) -> dict[str, Any]:
    """The planned request as plain values for :mod:`tokenscale.commands._otel`."""
    u = request.usage
    return {
        "service": request.service,
        "provider": request.provider,
        "server": request.server,
        "user": request.user,
        "user_id": hashlib.sha256(request.user.encode()).hexdigest(),
        "model": request.model,
        "start_ns": request.start_ns,
        "end_ns": request.start_ns + request.duration_ns,
        "session": request.session,
        "agent": request.agent,
        "input_tokens": u.input_tokens,
        "cache_read_tokens": u.cache_read_tokens,
        "cache_write_tokens": u.cache_write_tokens,
        "output_tokens": u.output_tokens,
        "reasoning_tokens": u.reasoning_tokens,
    }
