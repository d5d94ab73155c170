"""The two kinds of export failure, as the OTLP specification distinguishes them.

A :class:`PermanentError` means the data itself is bad: retrying the same export cannot succeed
(gRPC INVALID_ARGUMENT, HTTP 400). A :class:`RetryableError` means the data may be fine but we could
not take it now (gRPC UNAVAILABLE, HTTP 503): the client should retry with back-off.
"""

from __future__ import annotations

__all__ = ["PermanentError", "RetryableError", "TokenscaleError"]


class TokenscaleError(Exception):
    """Base class of every error tokenscale raises on purpose."""


class PermanentError(TokenscaleError):
    """The request is malformed; retrying it unchanged will fail again."""


class RetryableError(TokenscaleError):
    """The request could not be handled now (e.g. the database is unreachable); retry later."""
