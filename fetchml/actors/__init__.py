"""The actors (scheduler, executor, notifier) and the embedding API built on them."""

from ._backend import Backend, Ended
from ._local import LocalBackend
from ._messages import Message, StatusReport
from ._runtime import Scheduler, open_scheduler, start_actors
from ._subscription import Subscription

__all__ = [
    "Backend",
    "Ended",
    "LocalBackend",
    "Message",
    "Scheduler",
    "StatusReport",
    "Subscription",
    "open_scheduler",
    "start_actors",
]
