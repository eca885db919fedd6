"""The server: the composition root that opens the store, starts the auth actor, the core actors,
the audit log and the gateway in one supervisor nursery, and handles signals.

``fetchml serve`` runs :func:`run_server`; ``fetchml check-config`` uses :func:`load_auth` and
:func:`server_ssl_context`.
"""

from ._main import load_auth, run_server
from ._tls import server_ssl_context

__all__ = ["load_auth", "run_server", "server_ssl_context"]
