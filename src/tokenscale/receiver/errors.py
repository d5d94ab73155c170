"""The one table that maps export failures to gRPC status codes and HTTP responses."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
import psycopg
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo  # type: ignore[import-untyped]
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]
from psycopg_pool import PoolTimeout

from tokenscale.auth import AuthenticationError, PermissionDeniedError
from tokenscale.errors import PermanentError, RetryableError
from tokenscale.otlp import PayloadTooLargeError
from tokenscale.pipeline import is_poison

__all__ = [
    "DEFAULT_RETRY_AFTER_SECONDS",
    "BodyTimeoutError",
    "DeadlineExceededError",
    "ExportFailure",
    "OverloadedError",
    "classify_error",
    "public_text",
]

logger = logging.getLogger("tokenscale.receiver")

#: What a client is told to wait before retrying an export we could not take (Retry-After, RetryInfo).
DEFAULT_RETRY_AFTER_SECONDS = 5


class OverloadedError(RetryableError):
    """The receiver has no room for another export now (RESOURCE_EXHAUSTED / 429, retry later)."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BodyTimeoutError(PermanentError):
    """The client stopped sending its request body (HTTP 408)."""


class DeadlineExceededError(RetryableError):
    """The database did not finish an export within the export deadline (UNAVAILABLE / 503)."""


@dataclass(frozen=True, slots=True)
class ExportFailure:
    """How one failed export is answered, on either transport."""

    grpc_code: grpc.StatusCode
    http_status: int
    message: str
    #: Seconds the client should wait before retrying; ``None`` when it must not retry.
    retry_after: int | None = None

    def status(self) -> Status:
        """The ``google.rpc.Status`` body (OTLP/HTTP error responses, gRPC status details)."""
        status = Status(code=self.grpc_code.value[0], message=self.message)
        if self.retry_after is not None:
            status.details.add().Pack(self.retry_info())
        return status

    def retry_info(self) -> RetryInfo:
        """The ``google.rpc.RetryInfo`` carrying :attr:`retry_after` (OTLP spec, "Throttling")."""
        return RetryInfo(retry_delay=Duration(seconds=self.retry_after or 0))


def public_text(message: str, limit: int = 1000) -> str:
    """``message`` safe to send: valid UTF-8 (lone surrogates escaped), at most ``limit`` characters."""
    if len(message) > limit:
        message = message[: limit - 3] + "..."
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def _database_cause(exc: BaseException) -> BaseException | None:
    """The database or pool error behind ``exc`` (itself or its cause), if any."""
    for candidate in (exc, exc.__cause__):
        if isinstance(candidate, psycopg.Error | PoolTimeout):
            return candidate
    return None


def classify_error(exc: BaseException, retry_after: int = DEFAULT_RETRY_AFTER_SECONDS) -> ExportFailure:
    """Map an exception raised while decoding or exporting to its answer: the one error table.

    A missing or unknown API key is UNAUTHENTICATED / 401, a key without the ``ingest`` scope
    PERMISSION_DENIED / 403. Bad data is permanent (INVALID_ARGUMENT / 400; 413 for an oversized
    body). Too many exports at once is RESOURCE_EXHAUSTED / 429 with a retry hint. An unreachable
    database, a pool with no free connection or a database that did not answer within the export
    deadline is retryable (UNAVAILABLE / 503 with Retry-After); its message never carries the
    database's own text. Anything else is our bug (INTERNAL / 500), logged here with its traceback
    and not described to the client.
    """
    if isinstance(exc, AuthenticationError):
        return ExportFailure(grpc.StatusCode.UNAUTHENTICATED, 401, str(exc) or "authentication required")
    if isinstance(exc, PermissionDeniedError):
        return ExportFailure(grpc.StatusCode.PERMISSION_DENIED, 403, str(exc) or "permission denied")
    if isinstance(exc, OverloadedError):
        return ExportFailure(
            grpc.StatusCode.RESOURCE_EXHAUSTED, 429, str(exc), exc.retry_after or retry_after
        )
    if isinstance(exc, BodyTimeoutError):
        return ExportFailure(grpc.StatusCode.DEADLINE_EXCEEDED, 408, str(exc))
    if isinstance(exc, PayloadTooLargeError):
        return ExportFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, 413, public_text(str(exc)))
    if isinstance(exc, PermanentError):
        return ExportFailure(
            grpc.StatusCode.INVALID_ARGUMENT, 400, public_text(str(exc)) or "invalid export request"
        )
    cause = _database_cause(exc)
    # Data the database refuses however often it is retried; the mapping's limits keep such values
    # out (see tokenscale.mapping.limits), this is the net under them.
    if isinstance(cause, psycopg.Error) and is_poison(cause):
        logger.warning(
            "export refused by the database as unstorable (SQLSTATE %s): %s", cause.sqlstate, cause
        )
        return ExportFailure(
            grpc.StatusCode.INVALID_ARGUMENT,
            400,
            f"the export holds a value the database cannot store (SQLSTATE {cause.sqlstate})",
        )
    if cause is not None or isinstance(exc, DeadlineExceededError):
        logger.warning("export answered UNAVAILABLE: %s", cause or exc)
        text = str(exc) if isinstance(exc, DeadlineExceededError) else "the database is unavailable"
        return ExportFailure(grpc.StatusCode.UNAVAILABLE, 503, f"{text}: retry later", retry_after)
    if isinstance(exc, RetryableError):
        return ExportFailure(
            grpc.StatusCode.UNAVAILABLE, 503, public_text(str(exc)) or "temporarily unavailable", retry_after
        )
    logger.error("export failed with an unexpected error", exc_info=exc)
    return ExportFailure(grpc.StatusCode.INTERNAL, 500, "internal error while handling the export")
