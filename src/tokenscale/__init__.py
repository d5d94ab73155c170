"""tokenscale: an OpenTelemetry-native ledger of AI usage."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenscale.instrumentation import instrument, usage_context

__all__ = ["__version__", "instrument", "usage_context"]

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # tokenscale.instrument / tokenscale.usage_context are imported on first use, so that
    # `import tokenscale` needs neither the OpenTelemetry SDK nor the server's dependencies.
    if name in ("instrument", "usage_context"):
        from tokenscale import instrumentation  # noqa: PLC0415

        return getattr(instrumentation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
