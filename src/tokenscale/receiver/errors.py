"""The one table that maps export failures to gRPC status codes and HTTP responses."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo  # type: ignore[import-untyped]
from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]

from tokenscale.auth import AuthenticationError, PermissionDeniedError
from tokenscale.errors import PermanentError, RetryableError
from tokenscale.otlp import PayloadTooLargeError

__all__ = ["DEFAULT_RETRY_AFTER_SECONDS", "ExportFailure", "classify_error"]

logger = logging.getLogger("tokenscale.receiver")

#: What a client is told to wait before retrying an export we could not take (Retry-After, RetryInfo).
DEFAULT_RETRY_AFTER_SECONDS = 5


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


def classify_error(exc: BaseException, retry_after: int = DEFAULT_RETRY_AFTER_SECONDS) -> ExportFailure:
    """Map an exception raised while decoding or exporting to its answer.

    A missing or unknown API key is UNAUTHENTICATED / 401, a key without the ``ingest`` scope
    PERMISSION_DENIED / 403. Bad data is permanent (INVALID_ARGUMENT / 400; 413 for an oversized
    body); an unreachable database is retryable (UNAVAILABLE / 503 with Retry-After); anything else is our bug
    (INTERNAL / 500), logged here with its traceback and not described to the client.
    """
    if isinstance(exc, AuthenticationError):
        return ExportFailure(grpc.StatusCode.UNAUTHENTICATED, 401, str(exc) or "authentication required")
    if isinstance(exc, PermissionDeniedError):
        return ExportFailure(grpc.StatusCode.PERMISSION_DENIED, 403, str(exc) or "permission denied")
    if isinstance(exc, PayloadTooLargeError):
        return ExportFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, 413, str(exc))
    if isinstance(exc, PermanentError):
        return ExportFailure(grpc.StatusCode.INVALID_ARGUMENT, 400, str(exc) or "invalid export request")
    if isinstance(exc, RetryableError):
        return ExportFailure(
            grpc.StatusCode.UNAVAILABLE, 503, str(exc) or "temporarily unavailable", retry_after
        )
    logger.error("export failed with an unexpected error", exc_info=exc)
    return ExportFailure(grpc.StatusCode.INTERNAL, 500, "internal error while handling the export")
