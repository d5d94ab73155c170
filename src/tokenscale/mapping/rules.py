"""The per-source rules: which carrier of which client yields usage, with what token semantics.

This table is the single description of every source tokenscale understands (docs/mapping.md
renders it in prose). A *carrier* is one way a client reports usage: a metric, a log event or a
span. Within one client *stream* (a session, a conversation, or a service instance) only the
carrier with the lowest ``rank`` is counted; the others are stored but not added, so a request that
arrives as a metric, an event and a span is counted exactly once whatever the arrival order.

Token semantics are normalised to tokenscale's disjoint columns: ``input_tokens`` excludes cache
reads and writes, ``output_tokens`` includes reasoning, ``reasoning_tokens`` is the reasoning part.
Each source field contributes ``(column, sign)`` pairs; e.g. Gemini's cached count is a subset of its
input count, so it adds to ``cache_read_tokens`` and subtracts from ``input_tokens``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from tokenscale.mapping.model import TOKEN_FIELDS

__all__ = [
    "ACTIVITY_LOG_RULES",
    "ACTIVITY_METRIC_RULES",
    "AGENT_SPAN",
    "CLAUDE_SPAN",
    "LOG_RULES",
    "METRIC_RULES",
    "MIRROR_CARRIERS",
    "NON_USAGE_OPERATIONS",
    "SEMCONV_EVENT",
    "SEMCONV_SPAN",
    "SENSITIVE_KEYS",
    "TOKENSCALE_SCOPE_PREFIX",
    "TOKENSCALE_SPAN",
    "UNIT_USAGE_KEYS",
    "USAGE_COLUMNS",
    "ActivityRule",
    "Contribution",
    "FieldRule",
    "LogRule",
    "MetricRule",
    "SpanRule",
    "canonical_tool",
]

#: ``(column, sign)``: a source number adds ``sign * value`` to ``column``. Columns are the token
#: columns, ``requests`` and ``cost_usd``.
Contribution = tuple[str, int]

_IN: Final = (("input_tokens", 1),)
_OUT: Final = (("output_tokens", 1),)
_CACHE_READ_SUBSET: Final = (("input_tokens", -1), ("cache_read_tokens", 1))
_CACHE_WRITE_SUBSET: Final = (("input_tokens", -1), ("cache_write_tokens", 1))
_CACHE_READ_ADDITIVE: Final = (("cache_read_tokens", 1),)
_CACHE_WRITE_ADDITIVE: Final = (("cache_write_tokens", 1),)
_REASONING_SUBSET: Final = (("reasoning_tokens", 1),)
_REASONING_ADDITIVE: Final = (("output_tokens", 1), ("reasoning_tokens", 1))
_COST: Final = (("cost_usd", 1),)


#: The columns a field rule can add to other than ``cost_usd``, as :attr:`FieldRule.columns` indexes them.
USAGE_COLUMNS: Final = (*TOKEN_FIELDS, "requests")


@dataclass(frozen=True, slots=True)
class FieldRule:
    """The first of ``keys`` present on a record contributes ``contributions`` per unit."""

    keys: tuple[str, ...]
    contributions: tuple[Contribution, ...]
    #: ``contributions`` compiled once for the mapping's per-record loop: ``(index in USAGE_COLUMNS,
    #: sign)`` of each count column, and the signs of the ``cost_usd`` contributions.
    columns: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)
    cost_signs: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        columns = tuple((USAGE_COLUMNS.index(c), s) for c, s in self.contributions if c != "cost_usd")
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "cost_signs", tuple(s for c, s in self.contributions if c == "cost_usd"))


# --- per-request carriers ------------------------------------------------------------------------

#: GenAI semantic conventions (spans and the inference details event): input INCLUDES cache reads
#: and writes, output INCLUDES reasoning. Older names (1.26 and OpenLLMetry) are alternatives.
SEMCONV_FIELDS: Final = (
    FieldRule(("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.usage.prompt_tokens"), _IN),
    FieldRule(
        ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.usage.completion_tokens"),
        _OUT,
    ),
    FieldRule(
        ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens"), _CACHE_READ_SUBSET
    ),
    FieldRule(
        (
            "gen_ai.usage.cache_write.input_tokens",
            "gen_ai.usage.cache_creation.input_tokens",
            "gen_ai.usage.cache_creation_input_tokens",
        ),
        _CACHE_WRITE_SUBSET,
    ),
    FieldRule(
        (
            "gen_ai.usage.reasoning.output_tokens",
            "gen_ai.usage.reasoning_tokens",
            "codex.usage.reasoning_output_tokens",  # Codex CLI's handle_responses span
        ),
        _REASONING_SUBSET,
    ),
    FieldRule(("gen_ai.usage.cost",), _COST),
)


@dataclass(frozen=True, slots=True)
class LogRule:
    """A log event that carries one request's usage."""

    carrier: str
    rank: int
    fields: tuple[FieldRule, ...]
    model_keys: tuple[str, ...] = ("model", "gen_ai.response.model", "gen_ai.request.model")
    provider: str | None = None
    request_id_keys: tuple[str, ...] = ("request_id", "gen_ai.response.id", "response_id")
    #: The keys whose value identifies the request uniquely (shared with the client's other
    #: per-request carriers of the same request); not every request id is unique (Gemini's prompt_id).
    identity_keys: tuple[str, ...] = ("request_id", "gen_ai.response.id", "response_id")
    duration_ms_key: str | None = "duration_ms"
    #: An attribute that must have this value for the record to count (e.g. Codex's event.kind).
    require: tuple[str, str] | None = None
    #: A record with none of the token fields is not a usage record (Gemini emits the semconv
    #: details event twice per call, once before usage is known).
    needs_usage: bool = True


#: Claude Code's own token attributes (event and span): Anthropic's additive fields, input uncached.
_CLAUDE_FIELDS: Final = (
    FieldRule(("input_tokens",), _IN),
    FieldRule(("cache_read_tokens",), _CACHE_READ_ADDITIVE),
    FieldRule(("cache_creation_tokens",), _CACHE_WRITE_ADDITIVE),
    FieldRule(("output_tokens",), _OUT),
)

CLAUDE_API_REQUEST: Final = LogRule(
    carrier="claude_code.api_request",
    rank=1,
    provider="anthropic",
    fields=(*_CLAUDE_FIELDS, FieldRule(("cost_usd",), _COST)),
)
CLAUDE_API_ERROR: Final = LogRule(
    carrier="claude_code.api_error", rank=1, provider="anthropic", fields=(), needs_usage=False
)
GEMINI_API_RESPONSE: Final = LogRule(
    carrier="gemini_cli.api_response",
    rank=1,
    provider="gcp.gemini",
    fields=(
        FieldRule(("input_token_count",), _IN),  # promptTokenCount: cache included
        FieldRule(("cached_content_token_count",), _CACHE_READ_SUBSET),
        FieldRule(("output_token_count",), _OUT),  # candidatesTokenCount: thoughts excluded
        FieldRule(("thoughts_token_count",), _REASONING_ADDITIVE),
        FieldRule(("tool_token_count",), _IN),  # toolUsePromptTokenCount: outside promptTokenCount
    ),
    request_id_keys=("response_id", "prompt_id"),
    identity_keys=("response_id",),  # prompt_id is shared by the requests of one prompt
)
GEMINI_API_ERROR: Final = LogRule(
    carrier="gemini_cli.api_error", rank=1, provider="gcp.gemini", fields=(), needs_usage=False
)
CODEX_RESPONSE_COMPLETED: Final = LogRule(
    carrier="codex.sse_event",
    rank=1,
    provider="openai",
    require=("event.kind", "response.completed"),
    fields=(
        FieldRule(("input_token_count",), _IN),  # includes cached
        FieldRule(("cached_token_count",), _CACHE_READ_SUBSET),
        FieldRule(("cache_write_token_count",), _CACHE_WRITE_SUBSET),
        FieldRule(("output_token_count",), _OUT),  # includes reasoning
        FieldRule(("reasoning_token_count",), _REASONING_SUBSET),
    ),
)
SEMCONV_EVENT: Final = LogRule(
    carrier="gen_ai.client.inference.operation.details", rank=2, fields=SEMCONV_FIELDS
)

#: Log rules by event name (``LogRecord.event_name``, else the ``event.name`` attribute, else the
#: body for Claude Code's ``claude_code.<name>`` bodies).
LOG_RULES: Final[dict[str, LogRule]] = {
    "api_request": CLAUDE_API_REQUEST,
    "claude_code.api_request": CLAUDE_API_REQUEST,
    "api_error": CLAUDE_API_ERROR,
    "claude_code.api_error": CLAUDE_API_ERROR,
    "gemini_cli.api_response": GEMINI_API_RESPONSE,
    "gemini_cli.api_error": GEMINI_API_ERROR,
    "codex.sse_event": CODEX_RESPONSE_COMPLETED,
    "gen_ai.client.inference.operation.details": SEMCONV_EVENT,
}


@dataclass(frozen=True, slots=True)
class SpanRule:
    """A span that carries one request's usage."""

    carrier: str
    rank: int
    fields: tuple[FieldRule, ...]
    provider: str | None = None
    model_keys: tuple[str, ...] = ("gen_ai.response.model", "gen_ai.request.model", "model")


CLAUDE_SPAN: Final = SpanRule(
    carrier="claude_code.llm_request", rank=2, provider="anthropic", fields=_CLAUDE_FIELDS
)
SEMCONV_SPAN: Final = SpanRule(carrier="gen_ai.span", rank=3, fields=SEMCONV_FIELDS)
#: Spans of tokenscale's own instrumentation (scope ``tokenscale.instrumentation.*``) outrank other
#: GenAI spans of the same app: SDKs that trace themselves (anthropic >= 2.12) emit a child span
#: with the same usage, which must not be added to ours.
TOKENSCALE_SPAN: Final = SpanRule(carrier="tokenscale.instrumentation", rank=2, fields=SEMCONV_FIELDS)
TOKENSCALE_SCOPE_PREFIX: Final = "tokenscale.instrumentation."

#: Per-request carriers that share no request identity with their client's primary carrier (Gemini
#: CLI's GenAI details event and llm_call span carry other ids than its api_response event, which
#: often has none; Codex CLI's span and its response.completed event carry none at all). They are
#: reconciled against the client's records by totals, like metrics, instead of being counted as
#: requests of their own.
MIRROR_CARRIERS: Final[dict[str, frozenset[str]]] = {
    "gemini_cli": frozenset({"gen_ai.client.inference.operation.details", "gen_ai.span"}),
    "codex": frozenset({"gen_ai.client.inference.operation.details", "gen_ai.span"}),
}

#: Per-modality usage units (``gen_ai.usage.<modality>.<unit>``) that make a span one billable
#: request even without token counts (speech is billed per input character, whisper per second):
#: such a span is stored as one request with zero tokens, its units kept in its attributes.
UNIT_USAGE_KEYS: Final = frozenset(
    {
        "gen_ai.usage.image.count",
        "gen_ai.usage.audio.seconds",
        "gen_ai.usage.text.characters",
        "gen_ai.usage.video.seconds",
        "gen_ai.usage.video.count",
    }
)

#: Spans of these operations aggregate their children's usage; counting them would double count.
NON_USAGE_OPERATIONS: Final = frozenset({"invoke_agent", "create_agent", "execute_tool", "invoke_workflow"})
#: Such a span is stored as a *listed* row of its own carrier: uncounted, outside every request,
#: ledger, rollup, budget and cost, so that the AI metrics listings can show it (operation type
#: AGENT or TOOL_CALL) with the token counts the span reports.
AGENT_SPAN: Final = SpanRule(carrier="gen_ai.agent_span", rank=20, fields=SEMCONV_FIELDS)


# --- metric carriers -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricRule:
    """A metric whose points carry usage. ``by_type`` maps the value of ``type_key`` to what a
    point contributes; with no ``type_key`` every point contributes ``contributions``."""

    carrier: str
    rank: int
    type_key: str | None = None
    by_type: Mapping[str, tuple[Contribution, ...]] = field(default_factory=dict)
    contributions: tuple[Contribution, ...] = ()
    #: For histograms: the ``type_key`` value whose point count is the number of requests.
    count_requests_for: str | None = None
    provider: str | None = None
    model_keys: tuple[str, ...] = ("model", "gen_ai.response.model", "gen_ai.request.model")
    #: The client reports this carrier's cost in another metric of the same carrier (Claude Code's
    #: ``cost.usage``): token points are not priced again.
    cost_reported_elsewhere: bool = False


_SEMCONV_TOKEN_TYPES: Final = {"input": _IN, "output": _OUT}

METRIC_RULES: Final[dict[str, MetricRule]] = {
    "claude_code.token.usage": MetricRule(
        carrier="claude_code.metrics",
        rank=10,
        provider="anthropic",
        type_key="type",
        by_type={
            "input": _IN,  # uncached input only (Anthropic's additive fields)
            "output": _OUT,
            "cacheRead": _CACHE_READ_ADDITIVE,
            "cacheCreation": _CACHE_WRITE_ADDITIVE,
        },
        cost_reported_elsewhere=True,
    ),
    "claude_code.cost.usage": MetricRule(
        carrier="claude_code.metrics", rank=10, provider="anthropic", contributions=_COST
    ),
    "gemini_cli.token.usage": MetricRule(
        carrier="gemini_cli.metrics",
        rank=10,
        provider="gcp.gemini",
        type_key="type",
        by_type={
            "input": _IN,  # includes cached
            "cache": _CACHE_READ_SUBSET,
            "output": _OUT,  # excludes thoughts
            "thought": _REASONING_ADDITIVE,
            "tool": _IN,
        },
    ),
    "gemini_cli.api.request.count": MetricRule(
        carrier="gemini_cli.metrics", rank=10, provider="gcp.gemini", contributions=(("requests", 1),)
    ),
    "codex.turn.token_usage": MetricRule(
        carrier="codex.metrics",
        rank=10,
        provider="openai",
        type_key="token_type",
        by_type={
            "input": _IN,  # includes cached
            "cached_input": _CACHE_READ_SUBSET,
            "cache_write_input": _CACHE_WRITE_SUBSET,
            "output": _OUT,  # includes reasoning
            "reasoning_output": _REASONING_SUBSET,
            # "total" is the sum of the others: never counted.
        },
    ),
    # Unreleased GenAI counters (Copilot CLI): input includes cache reads and writes.
    "gen_ai.client.inference.usage.input_tokens": MetricRule(
        carrier="gen_ai.inference.usage", rank=11, contributions=_IN
    ),
    "gen_ai.client.inference.usage.output_tokens": MetricRule(
        carrier="gen_ai.inference.usage", rank=11, contributions=_OUT
    ),
    "gen_ai.client.inference.usage.cache_read.input_tokens": MetricRule(
        carrier="gen_ai.inference.usage", rank=11, contributions=_CACHE_READ_SUBSET
    ),
    "gen_ai.client.inference.usage.cache_write.input_tokens": MetricRule(
        carrier="gen_ai.inference.usage", rank=11, contributions=_CACHE_WRITE_SUBSET
    ),
    "gen_ai.client.inference.usage.reasoning.output_tokens": MetricRule(
        carrier="gen_ai.inference.usage", rank=11, contributions=_REASONING_SUBSET
    ),
    # Released histogram: input and output only (no cache or reasoning split).
    "gen_ai.client.token.usage": MetricRule(
        carrier="gen_ai.client.token.usage",
        rank=12,
        type_key="gen_ai.token.type",
        by_type=_SEMCONV_TOKEN_TYPES,
        count_requests_for="input",
    ),
    "gen_ai.client.inference.operation.input_tokens": MetricRule(
        carrier="gen_ai.inference.operation", rank=13, contributions=_IN, count_requests_for=""
    ),
    "gen_ai.client.inference.operation.output_tokens": MetricRule(
        carrier="gen_ai.inference.operation", rank=13, contributions=_OUT
    ),
}

# --- activity (ai_tool_daily_metrics.metrics) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActivityRule:
    """A metric whose points count an AI tool's activity: into ``metric``, or, by the value of
    ``type_key``, into the measure ``by_type`` names (other values are not counted)."""

    metric: str | None = None
    type_key: str | None = None
    by_type: Mapping[str, str] = field(default_factory=dict)


_ADDED_REMOVED: Final = {"added": "lines_added", "removed": "lines_removed"}

ACTIVITY_METRIC_RULES: Final[dict[str, ActivityRule]] = {
    "claude_code.session.count": ActivityRule("sessions"),
    "claude_code.lines_of_code.count": ActivityRule(type_key="type", by_type=_ADDED_REMOVED),
    "claude_code.commit.count": ActivityRule("commits"),
    "claude_code.pull_request.count": ActivityRule("pull_requests"),
    "claude_code.active_time.total": ActivityRule("active_seconds"),
    "claude_code.code_edit_tool.decision": ActivityRule(
        type_key="decision", by_type={"accept": "edits_accepted", "reject": "edits_rejected"}
    ),
    "gemini_cli.session.count": ActivityRule("sessions"),
    "gemini_cli.lines.changed": ActivityRule(type_key="type", by_type=_ADDED_REMOVED),
    "gemini_cli.tool.call.count": ActivityRule("tool_calls"),
    "gemini_cli.file.operation.count": ActivityRule("file_operations"),
}

#: Log events that each count one unit of an activity measure (where no metric counts it).
ACTIVITY_LOG_RULES: Final[dict[str, str]] = {
    "claude_code.tool_result": "tool_calls",
}

# --- identity, tools, privacy --------------------------------------------------------------------

_TOOLS: Final = {
    "claude-code": "claude_code",
    "gemini-cli": "gemini_cli",
    "codex": "codex",
    "codex_cli_rs": "codex",
    "codex-cli": "codex",
    "codex_exec": "codex",
    "github-copilot": "copilot",
    "copilot-cli": "copilot",
    "github-copilot-cli": "copilot",
    "copilot": "copilot",
}


def canonical_tool(service_name: str) -> str:
    """The canonical tool id of a client (``claude_code``, ``gemini_cli``, ``codex``, ``copilot``),
    else its ``service.name``."""
    tool = _TOOLS.get(service_name)
    if tool is not None:
        return tool
    lowered = service_name.lower()
    if "copilot" in lowered:
        return "copilot"
    if lowered.startswith("codex"):
        return "codex"
    return service_name or "unknown"


#: Attribute keys holding content (prompts, responses, command lines); dropped unless the operator
#: turns content capture on.
SENSITIVE_KEYS: Final = frozenset(
    {
        "prompt",
        "response",
        "user_prompt",
        "tool_input",
        "tool_parameters",
        "tool_result",
        "function_args",
        "gen_ai.prompt",
        "gen_ai.completion",
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.system_instructions",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
        "gen_ai.tool.definitions",
        "process.command_args",
        "process.command_line",
        "process.command",
    }
)
