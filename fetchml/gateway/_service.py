"""What every gateway operation does, independent of HTTP or WebSocket: authorization included.

HTTP routes and WebSocket ops both call these methods with the caller's :class:`Principal`, so
the visibility rules live in exactly one place: a caller sees a job only if it may read that
job's owner's jobs; a job it may not see is reported as not found, never as forbidden, so its
existence does not leak (cancel is the exception the contract names: 403 "you can only cancel your
own jobs", and an analyst is told it lacks ``jobs:update``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import msgspec

from .._config import LimitsSettings
from .._models import Job, JobMatch, JobSpec, JobState, text_problem
from ..actors import Scheduler, StatusReport, Subscription
from ..audit import AuditLog
from ..auth import (
    DATASETS_WRITE,
    JOBS_CREATE,
    JOBS_READ,
    JOBS_READ_ALL,
    STATUS_READ,
    AuthActor,
    Principal,
)
from ..errors import (
    AuthError,
    JobNotFoundError,
    PermissionDeniedError,
    RateLimitedError,
)
from ..protocol import DatasetBody, DatasetInfo, Identity, RegisterDataset
from ..tracking import MetricWatch
from ._context import source_address
from ._limits import AddressGuard, Limits
from ._sessions import Sessions

__all__ = ["MAX_JOB_ID", "Service"]

# The largest id the store can hold (SQLite INTEGER).  A larger id from a client names no job;
# passed on, it would make the store raise OverflowError (a 500, or a crashed scheduler).
MAX_JOB_ID = 2**63 - 1

log = logging.getLogger("fetchml.gateway")


class Service:
    """The operations of the gateway on behalf of authenticated principals.

    ``limits`` (``limits.*`` of the config; None: no limits) sets the per-key rate limit that
    :meth:`over_limit` checks and the ban of addresses that :meth:`authenticate` applies.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        auth: AuthActor,
        audit: AuditLog | None = None,
        *,
        limits: LimitsSettings | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.auth = auth
        self.audit = audit
        self.limits = Limits(limits)
        self.sessions = Sessions(auth)

    async def record(self, action: str, **entry: Any) -> None:
        """Audit ``action`` of the request being served, from its client's address, with
        ``entry`` (``user``, ``outcome``, ``code``, ``job_id``: see ``AuditLog.record``); no audit
        log: nothing.  Waits until the entry is written; raises OSError if it cannot be."""
        if self.audit is not None:
            await self.audit.record(action, source=source_address.get(), **entry)

    async def authenticate(self, key: str | None) -> Principal:
        """The principal for an API key.  Raises :class:`AuthError` (401), audited.

        Raises :class:`RateLimitedError` (429), audited, before any key is looked at when the
        source address is banned.  A wrong key (not a missing one) counts against the address;
        enough of them start its ban (a warning and an audit entry ``ban``).  Waits on the auth
        actor (bcrypt, the first time a key is seen) and on the audit log.
        """
        guard = self.limits.addresses
        address = source_address.get()
        if guard is not None and address is not None:
            left = guard.banned_for(address)
            if left:
                await self._refuse_banned(address, left)
        try:
            if not key:
                if not self.auth.config.enabled:
                    return await self.auth.authenticate("")
                raise AuthError("missing API key")
            if text_problem(key) is not None:
                raise AuthError("invalid API key")  # no key has a NUL or a lone surrogate
            cached = self.auth.authenticate_cached(key)
            if cached is not None:
                return cached
            if guard is None or address is None:
                return await self.auth.authenticate(key)
            return await self._checked(guard, address, key)
        except AuthError as exc:
            # Counted before the audit write, so attempts racing this one already see a ban.
            ban = bool(key) and guard is not None and address is not None and guard.failed(address)
            await self.record("auth", user=None, outcome="refused", code=exc.code)
            if ban and address is not None:
                await self._start_ban(address)
            raise

    async def _checked(self, guard: AddressGuard, address: str, key: str) -> Principal:
        """Check ``key`` with bcrypt under ``address``'s reservation (see ``begin_check``).

        Raises RateLimitedError, audited, when the address already has as many keys under check
        as it may still get wrong before a ban; AuthError for a wrong key.
        """
        digest = hashlib.sha256(key.encode()).digest()
        if not guard.begin_check(address, digest):
            log.warning("refused a key check from %s: too many under way at once", address)
            await self._refuse(
                "ban",
                "auth",
                None,
                "too many API keys being checked at once from this address",
                1.0,
            )
        try:
            return await self.auth.authenticate(key)
        finally:
            guard.end_check(address, digest)

    def over_limit(self, who: Principal) -> float:
        """Count one request of ``who``'s key: 0.0 if it may go ahead, else the seconds until
        one could (then call :meth:`refuse_rate`).  Never waits."""
        keys = self.limits.keys
        return 0.0 if keys is None else keys.take(who.user, who.key_id)

    async def refuse_rate(self, who: Principal, action: str, retry_after_s: float) -> NoReturn:
        """Log and audit a request over ``who``'s rate limit, then raise RateLimitedError.

        Waits on the audit log.
        """
        log.warning(
            "rate limited %s by %s (key %s) from %s: retry in %.2f s",
            action,
            who.user,
            who.key_id or "-",
            source_address.get(),
            retry_after_s,
        )
        settings = self.limits.settings
        assert settings is not None
        message = (
            f"too many requests with this API key (limit {settings.requests_per_s:g} per second, "
            f"bursts of {settings.burst})"
        )
        await self._refuse("key", action, who.user, message, retry_after_s)

    async def _refuse_banned(self, address: str, left: float) -> NoReturn:
        log.warning("refused a request from banned address %s (%.0f s left)", address, left)
        message = "this address is temporarily banned after too many failed API keys"
        await self._refuse("ban", "auth", None, message, left)

    async def _refuse(
        self, kind: str, action: str, user: str | None, message: str, retry_after_s: float
    ) -> NoReturn:
        """Count (``kind`` for ``/metrics``), audit and raise one rate-limit refusal; the caller
        has logged why.  Waits on the audit log.  Raises RateLimitedError."""
        self.limits.refused[kind] += 1
        await self.record(action, user=user, outcome="refused", code=RateLimitedError.code)
        raise RateLimitedError(message, retry_after_s=retry_after_s)

    async def _start_ban(self, address: str) -> None:
        settings = self.limits.settings
        assert settings is not None
        log.warning(
            "banned address %s for %g s: %d failed API keys within %g s",
            address,
            settings.ban_s,
            settings.auth_failures,
            settings.auth_failure_window_s,
        )
        await self.record("ban", user=None, outcome="refused", code="rate_limited")

    @contextlib.asynccontextmanager
    async def _refusals(self, action: str, who: Principal) -> AsyncIterator[None]:
        """Audit a missing permission (403) raised inside the block, then let it through."""
        try:
            yield
        except PermissionDeniedError as exc:
            await self.record(action, user=who.user, outcome="refused", code=exc.code)
            raise

    async def submit(self, who: Principal, spec: JobSpec) -> Job:
        """Queue ``spec`` (decoded from a request) as ``who``.  Raises PermissionDeniedError,
        InvalidSpecError.

        A dependency on a job ``who`` may not see is reported as unknown, like a missing one, so
        ``depends_on`` cannot probe other users' jobs: the scheduler applies that rule in the
        pass that reads the dependencies anyway.  Waits on the scheduler and the audit log.
        """
        async with self._refusals("submit", who):
            who.require(JOBS_CREATE)
        job = await self.scheduler.submit_decoded(
            spec, user=who.user, visible_owners=_visible_owners(who)
        )
        await self.record("submit", user=who.user, job_id=job.id)  # before the acknowledgement
        return job

    async def register_dataset(
        self, who: Principal, asked: RegisterDataset
    ) -> tuple[DatasetBody, bool]:
        """Register ``asked`` (a new dataset, or a new version of one) as ``who``; returns every
        version and whether one was added (not when the latest already says the same).  Raises
        PermissionDeniedError, InvalidRequestError naming the field, ConflictError (the name).
        Waits on the registry and the audit log."""
        async with self._refusals("dataset_register", who):
            who.require(DATASETS_WRITE)
        body, added = await self.scheduler.datasets.register(asked, who.user)
        if added:
            await self.record("dataset_register", user=who.user)
        return body, added

    async def datasets(self, who: Principal) -> list[DatasetInfo]:
        """Every registered dataset (any user who may read jobs sees them all: they are shared
        records, not data).  Raises PermissionDeniedError."""
        async with self._refusals("datasets", who):
            self._require_some_read(who)
        return await self.scheduler.datasets.datasets()

    async def dataset(self, who: Principal, name: str) -> DatasetBody:
        """Every version of dataset ``name``.  Raises PermissionDeniedError, NotFoundError."""
        async with self._refusals("datasets", who):
            self._require_some_read(who)
        return await self.scheduler.datasets.info(name)

    async def states(self, who: Principal, job_ids: list[int]) -> dict[int, str]:
        """The state of each job of ``job_ids`` that ``who`` may see (one read for a page, not
        one per job).  Raises PermissionDeniedError."""
        async with self._refusals("list", who):
            self._require_some_read(who)
        facts = await self.scheduler.states_of(job_ids)
        return {i: state.value for i, (state, owner) in facts.items() if who.can_read_job(owner)}

    async def get(self, who: Principal, job_id: int) -> Job:
        """A job ``who`` may see.  Raises JobNotFoundError (also for jobs it may not see)."""
        async with self._refusals("get", who):
            self._require_some_read(who)
        job = await self._job(job_id)
        if not who.can_read_job(job.user):
            raise JobNotFoundError(job_id)
        return job

    async def list(
        self,
        who: Principal,
        *,
        user: str | None = None,
        states: list[JobState] | None = None,
        limit: int = 100,
        before_id: int | None = None,
        match: JobMatch | None = None,
    ) -> list[Job]:
        """Jobs ``who`` may see, newest first, those ``match`` keeps.  A researcher's list is
        always their own."""
        async with self._refusals("list", who):
            self._require_some_read(who)
            if not who.can(JOBS_READ_ALL):
                if user not in (None, who.user):
                    raise PermissionDeniedError(
                        f"missing permission {JOBS_READ_ALL}", permission=JOBS_READ_ALL
                    )
                user = who.user
        return await self.scheduler.list(
            user=user, states=states, limit=limit, before_id=before_id, match=match
        )

    async def cancel(self, who: Principal, job_id: int) -> Job:
        """Cancel a job; returns it once ended.  Raises 404 / 403 / 409 errors."""
        job = await self._job(job_id)
        async with self._refusals("cancel", who):
            who.require_cancel_job(job.user)
        cancelled = await self.scheduler.cancel(job_id, user=who.user)
        await self.record("cancel", user=who.user, job_id=job_id)  # before the acknowledgement
        return cancelled

    async def status(self, who: Principal) -> StatusReport:
        """The queue summary.  Without ``jobs:read:all`` the per-user counts show only the
        caller's own (the machine's summary, yes; other users' activity, no)."""
        async with self._refusals("status", who):
            who.require(STATUS_READ)
        report = await self.scheduler.status()
        if who.can(JOBS_READ_ALL):
            return report
        return msgspec.structs.replace(
            report,
            running_by_user=_only(report.running_by_user, who.user),
            queued_by_user=_only(report.queued_by_user, who.user),
        )

    async def logs(
        self, who: Principal, job_id: int, *, offset: int = 0, follow: bool = False
    ) -> AsyncIterator[bytes]:
        """The job's log chunks, after checking ``who`` may see the job."""
        await self.get(who, job_id)
        return self.scheduler.logs(job_id, offset=offset, follow=follow)

    async def watch_metrics(self, who: Principal, job_id: int) -> MetricWatch:
        """Job ``job_id``'s metric points from now on, after checking ``who`` may see the job."""
        await self.get(who, job_id)
        return self.scheduler.watch_metrics(job_id)

    async def subscribe(
        self,
        who: Principal,
        *,
        job_id: int | None = None,
        since: int | None = None,
        buffer: int,
    ) -> Subscription:
        """Events ``who`` may see: one job's, or all visible jobs' (own only for researchers)."""
        if job_id is not None:
            await self.get(who, job_id)
            return self.scheduler.subscribe(job_id=job_id, since=since, buffer=buffer)
        async with self._refusals("subscribe", who):
            self._require_some_read(who)
        user = None if who.can(JOBS_READ_ALL) else who.user
        return self.scheduler.subscribe(user=user, since=since, buffer=buffer)

    @staticmethod
    def whoami(who: Principal) -> Identity:
        return Identity(
            user=who.user,
            roles=list(who.roles),
            permissions=sorted(who.permissions),
            admin=who.admin,
        )

    async def _job(self, job_id: int) -> Job:
        if job_id > MAX_JOB_ID:
            raise JobNotFoundError(job_id)
        return await self.scheduler.get(job_id)

    @staticmethod
    def _require_some_read(who: Principal) -> None:
        if not (who.can(JOBS_READ) or who.can(JOBS_READ_ALL)):
            raise PermissionDeniedError(f"missing permission {JOBS_READ}", permission=JOBS_READ)


def _visible_owners(who: Principal) -> tuple[str, ...] | None:
    """Whose jobs ``who`` may see, for the scheduler (None: everyone's)."""
    if who.can(JOBS_READ_ALL):
        return None
    return (who.user,) if who.can(JOBS_READ) else ()


def _only(counts: dict[str, int], user: str) -> dict[str, int]:
    return {u: n for u, n in counts.items() if u == user}
