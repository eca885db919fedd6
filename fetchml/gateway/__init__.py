"""The gateway: HTTP (``/api/v1``) and WebSocket (``/ws``) on one port, served by hypercorn."""

from ._app import create_app
from ._server import load_auth, run_server
from ._service import Service

__all__ = ["Service", "create_app", "load_auth", "run_server"]
