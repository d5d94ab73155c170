"""One line to make a Python AI app report its exact usage as OpenTelemetry GenAI spans and metrics."""

# Usage:  handle = instrument("http://tokenscale:4317", api_key="...")
#         with usage_context(user="ana@example.com", tenant="acme", bot_id="faq"): client.chat...
# Needs only opentelemetry-api/-sdk/-exporter-otlp and opentelemetry-instrumentation (+ wrapt);
# imports nothing of the tokenscale server. The instrumentor modules import their SDK only when
# instrumenting.

from __future__ import annotations

from tokenscale.instrumentation._budget import (
    BudgetCheck,
    BudgetExceededError,
    BudgetExceededWarning,
    BudgetGuard,
    BudgetStatus,
    BudgetWindowStatus,
    check_budgets,
)
from tokenscale.instrumentation._context import (
    UsageContext,
    UsageScope,
    bind_context,
    current_usage_context,
    usage_context,
)
from tokenscale.instrumentation._setup import InstrumentationHandle, instrument
from tokenscale.instrumentation.anthropic import AnthropicInstrumentor
from tokenscale.instrumentation.openai import OpenAIInstrumentor

__all__ = [
    "AnthropicInstrumentor",
    "BudgetCheck",
    "BudgetExceededError",
    "BudgetExceededWarning",
    "BudgetGuard",
    "BudgetStatus",
    "BudgetWindowStatus",
    "InstrumentationHandle",
    "OpenAIInstrumentor",
    "UsageContext",
    "UsageScope",
    "bind_context",
    "check_budgets",
    "current_usage_context",
    "instrument",
    "usage_context",
]
