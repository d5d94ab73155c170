"""What every tokenscale instrumentor shares: its telemetry, its patches, and undoing them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from tokenscale.instrumentation._telemetry import Telemetry
from tokenscale.instrumentation._wrappers import Patches

__all__ = ["SdkInstrumentor"]


class SdkInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """A provider SDK's instrumentor: subclasses create :class:`Telemetry` with :meth:`_telemetry_for`
    and record their wraps in :attr:`_patches`; ``uninstrument()`` restores them."""

    _patches: Patches | None = None
    _telemetry: Telemetry | None = None

    @staticmethod
    def _telemetry_for(
        scope: str, provider: str, kwargs: Mapping[str, Any], stream_types: tuple[type, ...]
    ) -> tuple[Telemetry, Callable[[object], bool]]:
        """The telemetry of one ``instrument(**kwargs)`` call, and the test for streamed results."""
        telemetry = Telemetry(
            scope,
            provider,
            tracer_provider=kwargs.get("tracer_provider"),
            meter_provider=kwargs.get("meter_provider"),
            budget_guard=kwargs.get("budget_guard"),
        )

        def is_stream(result: object) -> bool:
            return isinstance(result, stream_types)

        return telemetry, is_stream

    def _uninstrument(self, **kwargs: Any) -> None:
        if self._telemetry is not None:
            self._telemetry.active = False
            self._telemetry = None
        if self._patches is not None:
            self._patches.restore()
            self._patches = None
