"""The records the mapping produces: usage events, cumulative points awaiting their increment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "TOKEN_FIELDS",
    "ActivityEvent",
    "CumulativePoint",
    "MappingResult",
    "Signal",
    "UsageEvent",
]

Signal = Literal["metrics", "traces", "logs"]

#: The disjoint token columns. ``input_tokens`` excludes cache reads and writes; ``output_tokens``
#: includes reasoning and ``reasoning_tokens`` is the part of it that was reasoning.
TOKEN_FIELDS: tuple[str, ...] = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)


@dataclass(slots=True)
class UsageEvent:
    """One AI request (or, from a metric carrier, one increment of usage) as stored in ``usage_events``.

    ``carrier`` names the signal and rule the row came from. Per-request carriers of one request
    share an :attr:`identity`; of those, the best (lowest) ``rank`` is the request's
    counted record. Aggregate carriers are evidence: the writer reconciles them against the records
    of their ``stream`` (the client's resource) and counts only the usage no record accounts for.
    """

    time_ns: int
    tenant: str
    carrier: str
    rank: int
    tool: str
    stream: str
    service_name: str
    dedupe_key: bytes
    user_email: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    conversation_id: str | None = None
    provider: str | None = None
    model: str | None = None
    operation: str | None = None
    request_id: str | None = None
    requests: int = 0
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = None
    cost_source: str | None = None
    duration_ms: float | None = None
    error_type: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    #: The request's identity (its hashed provider response / request id, else its trace context),
    #: shared by every per-request carrier of the same request; None for aggregate carriers and
    #: for a record that names neither (it is a request of its own).
    identity: bytes | None = None
    #: An aggregate carrier (a metric increment, or a per-request carrier that shares no identity
    #: with its client's primary carrier): reconciled against the per-request records by totals.
    aggregate: bool = False


@dataclass(slots=True)
class ActivityEvent:
    """An increment of an AI tool's activity measure (sessions, lines added, commits, ...), stored in
    ``activity_events`` and summed per user, day and tool into ``ai_tool_daily_metrics.metrics``."""

    time_ns: int
    tenant: str
    tool: str
    stream: str
    service_name: str
    metric: str
    dedupe_key: bytes
    value: float = 0.0
    user_email: str | None = None
    user_id: str | None = None
    session_id: str | None = None


@dataclass(slots=True)
class CumulativePoint:
    """A point of a CUMULATIVE sum or histogram; the writer turns it into an increment.

    The increment needs the series' previous point, which lives in the database
    (``tokenscale.metric_series``) so that restarts and several receivers stay exact.
    ``value`` is the running total whose increment is applied to ``event`` through
    ``contributions`` (see :mod:`tokenscale.mapping.rules`); ``count`` (histograms) is the running
    number of measurements whose increment goes into ``event.requests`` when ``counts_requests``.
    """

    series_key: bytes
    start_ns: int
    time_ns: int
    value: float
    contributions: tuple[tuple[str, int], ...]
    event: UsageEvent | ActivityEvent
    count: int = 0
    counts_requests: bool = False


@dataclass(slots=True)
class MappingResult:
    """What one export request maps to, plus what had to be rejected and why."""

    events: list[UsageEvent] = field(default_factory=list)
    activity: list[ActivityEvent] = field(default_factory=list)
    cumulative: list[CumulativePoint] = field(default_factory=list)
    #: Listed rows: spans of agent, tool and workflow operations (carrier ``gen_ai.agent_span``),
    #: which aggregate requests counted elsewhere. Stored uncounted for the AI metrics listings,
    #: never a request, a view or part of any total.
    listed: list[UsageEvent] = field(default_factory=list)
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def has_rows(self) -> bool:
        """Whether there is anything to store."""
        return bool(self.events or self.activity or self.cumulative or self.listed)

    def reject(self, message: str, count: int = 1) -> None:
        """Count ``count`` items as rejected, keeping the first few messages."""
        self.rejected += count
        if len(self.errors) < 10:
            self.errors.append(message)

    @property
    def error_message(self) -> str:
        """The partial-success message: the distinct reasons, joined."""
        return "; ".join(dict.fromkeys(self.errors))
