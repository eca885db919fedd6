"""Fetch ML: a self-hosted, multi-user queue for ML experiment jobs.

Embed the scheduler in any trio program::

    async with fetchml.open_scheduler(data_dir="runs") as scheduler:
        job = await scheduler.submit({"command": ["python", "train.py"]}, user="alice")
        done = await scheduler.wait(job.id)
"""

from typing import TYPE_CHECKING, Any

from .errors import (
    AuthError,
    ConfigError,
    ConflictError,
    FetchMLError,
    InternalError,
    InvalidRequestError,
    InvalidSpecError,
    JobNotFoundError,
    JobStartError,
    PermissionDeniedError,
    RateLimitedError,
    SchedulerClosedError,
    StoreError,
    SubscriberDroppedError,
)

if TYPE_CHECKING:
    from ._config import Config, load_config, make_config
    from ._models import (
        TERMINAL_STATES,
        Job,
        JobEvent,
        JobSpec,
        JobState,
        Resources,
        StatusReport,
        validate_spec,
    )
    from .actors import Scheduler, Subscription, open_scheduler

# Imported on first use: ``import fetchml`` (and so every ``ml`` command) must not pay for trio,
# sqlite and the actors.  Maps each public name to the module that defines it.
_LAZY = {
    "Config": "._config",
    "load_config": "._config",
    "make_config": "._config",
    "TERMINAL_STATES": "._models",
    "Job": "._models",
    "JobEvent": "._models",
    "JobSpec": "._models",
    "JobState": "._models",
    "Resources": "._models",
    "validate_spec": "._models",
    "Scheduler": ".actors",
    "StatusReport": "._models",
    "Subscription": ".actors",
    "open_scheduler": ".actors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fetchml' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "TERMINAL_STATES",
    "AuthError",
    "Config",
    "ConfigError",
    "ConflictError",
    "FetchMLError",
    "InternalError",
    "InvalidRequestError",
    "InvalidSpecError",
    "Job",
    "JobEvent",
    "JobNotFoundError",
    "JobSpec",
    "JobStartError",
    "JobState",
    "PermissionDeniedError",
    "RateLimitedError",
    "Resources",
    "Scheduler",
    "SchedulerClosedError",
    "StatusReport",
    "StoreError",
    "SubscriberDroppedError",
    "Subscription",
    "load_config",
    "make_config",
    "open_scheduler",
    "validate_spec",
]
