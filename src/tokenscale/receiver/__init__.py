"""The OTLP receiver: gRPC and HTTP transports feeding one export handler per signal."""

from __future__ import annotations

from tokenscale.receiver._export import (
    SIGNALS,
    ExportHandler,
    TenantResolver,
    default_tenant_for,
    resolve_tenant,
)
from tokenscale.receiver.errors import DEFAULT_RETRY_AFTER_SECONDS, ExportFailure, classify_error
from tokenscale.receiver.grpc_server import add_otlp_services, create_grpc_server
from tokenscale.receiver.http_app import DEFAULT_MAX_BODY_BYTES, create_http_app
from tokenscale.receiver.server import Receiver

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_RETRY_AFTER_SECONDS",
    "SIGNALS",
    "ExportFailure",
    "ExportHandler",
    "Receiver",
    "TenantResolver",
    "add_otlp_services",
    "classify_error",
    "create_grpc_server",
    "create_http_app",
    "default_tenant_for",
    "resolve_tenant",
]
