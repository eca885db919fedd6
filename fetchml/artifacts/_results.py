"""Outputs that come back from elsewhere: a run on a Ray node sends its output folder to the
server when it ends.

Each such run gets a *run token* (random, kept in ``<job dir>/run.<attempt>.token``, mode 0600):
the run sends it with its results, so it needs no API key and can write only its own run's
outputs.  The run sends one tar of its output folder, in parts (``offset``, ``total``) of at most
the upload part size, to ``PUT /api/v1/jobs/{id}/results?attempt=&offset=&total=``; the server
appends them and, once whole, unpacks the tar into the job's output folder (tarfile's ``data``
filter: nothing lands outside it, no links out, no devices).  :data:`UPLOADER` is the program the
run executes for that, standard library only (a Ray node needs no Fetch ML installed).

Blocking: call these from worker threads.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import tarfile
from pathlib import Path

from ..errors import InvalidRequestError, StorageFullError

__all__ = ["UPLOADER", "check_run_token", "receive_results", "run_token"]


def _token_path(job_dir: Path, attempt: int) -> Path:
    return job_dir / f"run.{attempt}.token"


def run_token(job_dir: Path, attempt: int) -> str:
    """The token of attempt ``attempt``, saved where :func:`check_run_token` finds it: made on
    the first call, the same on every later one (a start retried after its reply was lost may
    find the attempt already running with it).  Blocks on small file operations; raises
    OSError."""
    job_dir.mkdir(parents=True, exist_ok=True)
    path = _token_path(job_dir, attempt)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if token:
            return token
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)  # left empty by a crash mid-write
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
        handle.flush()
        os.fsync(handle.fileno())
    # The file's name too: a node may hold the token while a server restarted after a power
    # loss would not know it (and refuse the attempt's points).
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return token


def check_run_token(job_dir: Path, attempt: int, token: str) -> bool:
    """Whether ``token`` is attempt ``attempt``'s (compared in constant time)."""
    try:
        expected = _token_path(job_dir, attempt).read_text().strip()
    except OSError:
        return False
    return bool(expected) and hmac.compare_digest(expected.encode(), token.encode())


def receive_results(job_dir: Path, attempt: int, offset: int, total: int, data: bytes) -> int:
    """Append a part of attempt ``attempt``'s results tar; once it is whole, unpack it into the
    output folder.  Returns how much of it the server has.

    Raises InvalidRequestError for an offset other than what was received (the message says
    where to resume) or a tar that cannot be unpacked (what was received is removed);
    StorageFullError when the disk fills.
    """
    partial = job_dir / f"results.{attempt}.tar.part"
    have = partial.stat().st_size if partial.exists() else 0
    if offset != have:
        raise InvalidRequestError(
            f"offset: the server has {have} bytes of these results: resume from there",
            field="offset",
        )
    if offset + len(data) > total:
        raise InvalidRequestError("offset: the part ends past the results' size", field="offset")
    try:
        with partial.open("ab") as handle:
            handle.write(data)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise StorageFullError(f"the server could not store the results: {exc.strerror}") from None
    have += len(data)
    if have < total:
        return have
    try:
        with tarfile.open(partial, mode="r") as tar:
            tar.extractall(job_dir / "output", filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise InvalidRequestError(
            f"body: the results cannot be unpacked: {exc}", field="body"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    return total


# Run by the job's wrapper on the node, after the job's command, with what it needs in the
# environment (so that neither the program nor the token shows in the job's log):
# FETCHML_RESULTS_URL, FETCHML_JOB_ID, FETCHML_ATTEMPT, FETCHML_RUN_TOKEN, FETCHML_OUTPUT_DIR,
# FETCHML_PART_BYTES.
UPLOADER = r"""
import os, sys, tarfile, tempfile, urllib.request
env = os.environ
url, job, attempt = env["FETCHML_RESULTS_URL"], env["FETCHML_JOB_ID"], env["FETCHML_ATTEMPT"]
token, folder = env["FETCHML_RUN_TOKEN"], env["FETCHML_OUTPUT_DIR"]
part = int(env["FETCHML_PART_BYTES"])
with tempfile.TemporaryFile() as tmp:
    with tarfile.open(fileobj=tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                tar.add(os.path.join(folder, name), arcname=name)
    total = tmp.tell()
    tmp.seek(0)
    offset = 0
    while True:
        data = tmp.read(part)
        target = f"{url}/api/v1/jobs/{job}/results?attempt={attempt}&offset={offset}&total={total}"
        request = urllib.request.Request(target, data=data, method="PUT")
        request.add_header("X-Fetchml-Run-Token", token)
        request.add_header("Content-Type", "application/octet-stream")
        with urllib.request.urlopen(request, timeout=120) as answer:
            answer.read()
        offset += len(data)
        if offset >= total:
            break
print(f"[fetchml] sent {total} bytes of outputs to the server", file=sys.stderr)
"""
