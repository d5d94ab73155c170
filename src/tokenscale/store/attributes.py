"""Which attributes of a usage event ``usage_events.attributes`` stores.

Everything the ledger counts by has a column of its own (the disjoint token columns, identity, request
id, model, ...). Of the rest, ``usage_events.attributes`` keeps only what something reads back: the
query APIs' filters and fields (``tokenscale.meta.*``, seed 003's relation ids, trace ids and types,
the deployment environment, the modality units and image parameters of the AI-metrics listings,
prompt ids), the raw model name and Copilot's premium requests (docs/mapping.md), the usage
units the price book can price (``gen_ai.usage.*`` other than token counts,
which are columns), content the operator chose to capture (``capture_content``), and the
reconciliation's own note on residual rows. Every other attribute (resource attributes such as
``host.name`` or ``telemetry.sdk.*``, request parameters, token counts already in columns) is stored
only when the operator asks for it: setting ``keep_attributes``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from tokenscale.mapping._core import OTEL_TRACE_ID_KEY
from tokenscale.mapping.rules import LOG_RULES, SEMCONV_FIELDS, SENSITIVE_KEYS, UNIT_USAGE_KEYS

__all__ = [
    "ENVIRONMENT_KEY",
    "KEPT_KEYS",
    "KEPT_PREFIXES",
    "is_kept",
    "keep_keys",
    "kept_attributes",
    "stored_columns",
]

#: Keys with these prefixes are always kept (``tokenscale.meta.*`` and tokenscale's own keys).
KEPT_PREFIXES: Final = ("tokenscale.",)

#: Token counts the mapping moves into the token columns: never stored twice.
_TOKEN_KEYS: Final = frozenset(
    {key for f in SEMCONV_FIELDS for key in f.keys}
    | {key for rule in LOG_RULES.values() for f in rule.fields for key in f.keys}
)
_USAGE_PREFIX: Final = "gen_ai.usage."

#: Single keys always kept: what the APIs read (see tokenscale.api.ai_metrics, usage_records).
KEPT_KEYS: Final = frozenset(
    {
        OTEL_TRACE_ID_KEY,  # AI metrics: traceId
        "deployment.environment",  # AI metrics: environment
        "deployment.environment.name",
        "prompt.id",  # usage series: user inputs
        "prompt_id",
        "gen_ai.request.image.size",  # AI metrics: image listings
        "gen_ai.request.image.quality",
        "gen_ai.request.video.size",  # AI metrics: video listings
        "otel.span_id",  # AI metrics: spanId (agent and tool rows)
        "gen_ai.agent.name",  # AI metrics: agentName, agentId, toolName, toolCallId
        "gen_ai.agent.id",
        "gen_ai.tool.name",
        "gen_ai.tool.call.id",
        "reconciled.view",  # a residual row's view (the writer's own)
        "model.raw",  # the model's name before normalisation (docs/mapping.md)
        "github.copilot.cost",  # Copilot's premium requests (not USD: no column of its own)
        "team.id",  # team budgets (the default of the budget_team_attribute setting)
        *UNIT_USAGE_KEYS,
        *SENSITIVE_KEYS,  # only there when the operator set capture_content
    }
)


#: Keys the service's settings name (a team budget's attribute): kept too.
_EXTRA_KEYS: set[str] = set()


def keep_keys(keys: Iterable[str]) -> None:
    """Keep ``keys`` too from now on (in this process): what settings make the service read back,
    such as the attribute team budgets sum by (``budget_team_attribute``)."""
    _EXTRA_KEYS.update(keys)
    _KEPT_CACHE.clear()


def _kept(key: str) -> bool:
    if key in KEPT_KEYS or key in _EXTRA_KEYS or key.startswith(KEPT_PREFIXES):
        return True
    # Usage units (audio seconds, image tokens, ...) a price book's unit prices can be keyed by.
    return key.startswith(_USAGE_PREFIX) and key not in _TOKEN_KEYS


_KEPT_CACHE: dict[str, bool] = {}


def kept_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``attrs`` stored by default (see the module's docstring)."""
    cache = _KEPT_CACHE
    try:
        return {key: value for key, value in attrs.items() if cache[key]}
    except KeyError:  # a key not seen yet: decide it once (the cache is bounded: keys are the client's)
        for key in attrs:
            if key not in cache and len(cache) < 65_536:
                cache[key] = _kept(key)
        return {key: value for key, value in attrs.items() if cache.get(key, False) or _kept(key)}


#: The resource's deployment environment: stored in ``usage_events.environment`` (migration 0081).
ENVIRONMENT_KEY: Final = "deployment.environment.name"
_TRACE_HEX: Final = re.compile(r"[0-9a-f]{32}")


def stored_columns(attrs: dict[str, Any]) -> tuple[dict[str, Any], bytes | None, str | None]:
    """``attrs`` as ``usage_events`` stores them: (the attributes for the ``attributes`` column, the
    ``trace_id`` column, the ``environment`` column).

    The OTLP trace id (``otel.trace_id``, 32 lower-case hex digits as the mapping writes it) is
    stored as its 16 bytes and the ``deployment.environment.name`` text as itself, each in its own
    column and not in ``attributes`` (migration 0081; the readers take the column, else the
    attribute). Values of another form stay in ``attributes``. ``attrs`` itself is not changed."""
    trace = attrs.get(OTEL_TRACE_ID_KEY)
    environment = attrs.get(ENVIRONMENT_KEY)
    trace_id = bytes.fromhex(trace) if isinstance(trace, str) and _TRACE_HEX.fullmatch(trace) else None
    if not isinstance(environment, str):
        environment = None
    if trace_id is None and environment is None:
        return attrs, None, None
    rest = dict(attrs)
    if trace_id is not None:
        del rest[OTEL_TRACE_ID_KEY]
    if environment is not None:
        del rest[ENVIRONMENT_KEY]
    return rest, trace_id, environment


def is_kept(key: str) -> bool:
    """Whether an attribute ``key`` is stored by default (see the module's docstring)."""
    kept = _KEPT_CACHE.get(key)
    return _kept(key) if kept is None else kept
