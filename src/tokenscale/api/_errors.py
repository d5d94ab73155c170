"""The errors the query and push APIs answer, and the one table mapping them to HTTP and gRPC."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
import psycopg
from psycopg_pool import PoolTimeout

from tokenscale.auth import AuthenticationError, PermissionDeniedError
from tokenscale.errors import RetryableError, TokenscaleError

__all__ = ["ApiError", "ConflictError", "Failure", "InvalidRequestError", "NotFoundError", "classify"]

logger = logging.getLogger("tokenscale.api")


class ApiError(TokenscaleError):
    """A request the API refuses; ``field`` and ``index`` say where the problem is, when known."""

    status = 400
    code = "invalid_request"

    def __init__(
        self, message: str, *, field: str | None = None, index: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.index = index
        if code is not None:
            self.code = code


class InvalidRequestError(ApiError):
    """Bad input: a missing, malformed or out-of-range value (HTTP 400, INVALID_ARGUMENT)."""


class NotFoundError(ApiError):
    """The thing asked about does not exist (HTTP 404, NOT_FOUND)."""

    status = 404
    code = "not_found"


class ConflictError(ApiError):
    """The request conflicts with what an earlier one stored (HTTP 409, FAILED_PRECONDITION)."""

    status = 409
    code = "conflict"


@dataclass(frozen=True, slots=True)
class Failure:
    """How one failed request is answered on either transport."""

    http_status: int
    grpc_code: grpc.StatusCode
    code: str
    message: str
    field: str | None = None
    index: int | None = None


_GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    406: grpc.StatusCode.INVALID_ARGUMENT,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
}


def classify(exc: BaseException) -> Failure:
    """The answer to a request that raised ``exc``.

    Refused requests keep their message; an unreachable database is 503 / UNAVAILABLE; anything
    else is our bug (500 / INTERNAL), logged here with its traceback and not described to the client.
    """
    if isinstance(exc, ApiError):
        return Failure(exc.status, _GRPC_CODES[exc.status], exc.code, exc.message, exc.field, exc.index)
    if isinstance(exc, AuthenticationError):
        return Failure(401, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", str(exc))
    if isinstance(exc, PermissionDeniedError):
        return Failure(403, grpc.StatusCode.PERMISSION_DENIED, "forbidden", str(exc))
    if isinstance(exc, RetryableError | psycopg.OperationalError | PoolTimeout):
        return Failure(
            503, grpc.StatusCode.UNAVAILABLE, "unavailable", "the database is unavailable; retry later"
        )
    logger.error("API request failed with an unexpected error", exc_info=exc)
    return Failure(500, grpc.StatusCode.INTERNAL, "internal", "internal error")
