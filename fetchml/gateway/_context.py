"""What the gateway knows about the request or WebSocket being served, for the code under it."""

from __future__ import annotations

import contextvars

__all__ = ["source_address"]

# The client address of the request or WebSocket being served (set by the security hooks).
source_address: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fetchml_source_address", default=None
)
