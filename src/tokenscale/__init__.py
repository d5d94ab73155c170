"""tokenscale: an OpenTelemetry-native ledger of AI usage."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
