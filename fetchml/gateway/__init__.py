"""The gateway: HTTP (``/api/v1``) and WebSocket (``/ws``) over the actors and auth.

An adapter, not the place the server is wired together (that is :mod:`fetchml.server`):
:func:`create_app` builds the Quart-Trio app around a :class:`Service`, and
:func:`apply_hypercorn_fixes` patches the hypercorn worker it is served by.
"""

from ._app import create_app
from ._hypercorn_fix import abort_connections
from ._hypercorn_fix import apply as apply_hypercorn_fixes
from ._service import Service

__all__ = ["Service", "abort_connections", "apply_hypercorn_fixes", "create_app"]
