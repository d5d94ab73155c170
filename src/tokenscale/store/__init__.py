"""Storage: versioned migrations, back-end detection and the batched usage writer."""

from tokenscale.store.backend import Backend, detect_backend
from tokenscale.store.migrate import migrate

__all__ = ["Backend", "detect_backend", "migrate"]
