"""The body of a job's output files listing (``GET /api/v1/jobs/{id}/files``).

Apart from the other bodies: it needs :mod:`fetchml.artifacts` (and so ``tarfile`` and
``hashlib``), which a client that only lists jobs never loads.
"""

from __future__ import annotations

from ..artifacts import OutputFile
from ._replies import _Body

__all__ = ["FilesBody"]


class FilesBody(_Body, frozen=True, kw_only=True):
    """A job's output files; ``final`` once the job has ended (then each has its SHA-256)."""

    files: list[OutputFile]
    final: bool
