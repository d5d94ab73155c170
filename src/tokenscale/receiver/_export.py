"""What both transports share: the export handler they call and the tenant resolver hook."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from tokenscale.mapping.model import Signal
from tokenscale.pipeline import DEFAULT_TENANT, ExportResult

__all__ = ["SIGNALS", "ExportHandler", "TenantResolver", "default_tenant_for", "resolve_tenant"]

#: The OTLP signals, in the order their services and routes are registered.
SIGNALS: tuple[Signal, ...] = ("metrics", "traces", "logs")

#: Picks the tenant of an export from its request headers (HTTP) or metadata (gRPC); keys are lower
#: case. It may raise :class:`tokenscale.errors.PermanentError` to refuse the export, and it may block
#: (an API key lookup): it is called in a worker thread.
TenantResolver = Callable[[Mapping[str, str]], str]


class ExportHandler(Protocol):
    """The one export handler per signal (:class:`tokenscale.pipeline.ExportPipeline`)."""

    def export(self, signal: Signal, request: Any, tenant: str) -> ExportResult:
        """Store one decoded ``Export*ServiceRequest``; blocking, so it is run in a worker thread."""
        ...


def default_tenant_for(headers: Mapping[str, str]) -> str:
    """Every export belongs to :data:`tokenscale.pipeline.DEFAULT_TENANT` (no API keys yet)."""
    return DEFAULT_TENANT


async def resolve_tenant(tenant_for: TenantResolver, headers: Mapping[str, str]) -> str:
    """The tenant of an export, resolved before its body is read or handed on.

    A resolver may look an API key up in the database, so it runs in a worker thread; the default
    one cannot block and is called directly.
    """
    if tenant_for is default_tenant_for:
        return DEFAULT_TENANT
    return await asyncio.to_thread(tenant_for, headers)
