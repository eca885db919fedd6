"""Fetch ML: a self-hosted, multi-user queue for ML experiment jobs.

Embed the scheduler in any trio program::

    async with fetchml.open_scheduler(data_dir="runs") as scheduler:
        job = await scheduler.submit({"command": ["python", "train.py"]}, user="alice")
        done = await scheduler.wait(job.id)
"""

from ._config import Config, load_config, make_config
from ._models import TERMINAL_STATES, Job, JobEvent, JobSpec, JobState, Resources, validate_spec
from .actors import Scheduler, StatusReport, Subscription, open_scheduler
from .errors import (
    AuthError,
    ConfigError,
    ConflictError,
    FetchMLError,
    InvalidRequestError,
    InvalidSpecError,
    JobNotFoundError,
    JobStartError,
    PermissionDeniedError,
    SchedulerClosedError,
    StoreError,
    SubscriberDroppedError,
)

__version__ = "0.1.0"

__all__ = [
    "TERMINAL_STATES",
    "AuthError",
    "Config",
    "ConfigError",
    "ConflictError",
    "FetchMLError",
    "InvalidRequestError",
    "InvalidSpecError",
    "Job",
    "JobEvent",
    "JobNotFoundError",
    "JobSpec",
    "JobStartError",
    "JobState",
    "PermissionDeniedError",
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
