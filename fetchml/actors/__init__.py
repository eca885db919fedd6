"""The actors (scheduler, executor, notifier) and the embedding API built on them."""

from .._models import StatusReport
from ._messages import INTERNAL_MESSAGE, Message
from ._runtime import Runtime, Scheduler, open_scheduler, prepare_runtime, serve_actors
from ._subscription import Subscription
from .backends import Backend, Ended, LocalBackend

__all__ = [
    "INTERNAL_MESSAGE",
    "Backend",
    "Ended",
    "LocalBackend",
    "Message",
    "Runtime",
    "Scheduler",
    "StatusReport",
    "Subscription",
    "open_scheduler",
    "prepare_runtime",
    "serve_actors",
]
