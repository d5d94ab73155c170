"""Pure mapping of decoded OTLP requests to usage events. Imports no I/O."""

from tokenscale.mapping._core import MappingOptions, apply, map_request, normalise_model
from tokenscale.mapping.cumulative import SeriesState, resolve_cumulative
from tokenscale.mapping.model import (
    TOKEN_FIELDS,
    ActivityEvent,
    CumulativePoint,
    MappingResult,
    Signal,
    UsageEvent,
)

__all__ = [
    "TOKEN_FIELDS",
    "ActivityEvent",
    "CumulativePoint",
    "MappingOptions",
    "MappingResult",
    "SeriesState",
    "Signal",
    "UsageEvent",
    "apply",
    "map_request",
    "normalise_model",
    "resolve_cumulative",
]
