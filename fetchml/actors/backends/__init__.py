"""Executor backends: how a job's run is started, followed, stopped and re-adopted on one kind of
substrate.  :class:`LocalBackend` runs process groups on this machine; the Ray backend
(``executor.backend: ray``, in ``_ray``) is imported only when configured, with Ray."""

from ._base import Backend, Capacity, Ended
from ._local import LocalBackend, LocalRun, job_dir, log_path, track_path, work_dir

__all__ = [
    "Backend",
    "Capacity",
    "Ended",
    "LocalBackend",
    "LocalRun",
    "job_dir",
    "log_path",
    "track_path",
    "work_dir",
]
