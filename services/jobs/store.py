"""The job store: every job's status and every worker's heartbeat, in Redis.

Celery moves a job's id to a worker; this store holds what the job is (request, state,
progress, checkpoint, result), so any API replica answers for any job and a job survives API
and worker restarts (the embedded Redis keeps an append-only file).

**Leases.** Celery delivers at least once: a job whose worker died unacknowledged is
delivered again after the visibility timeout, and a long job's message can be delivered again
while its worker still runs it. A worker therefore *claims* a job before running it: the claim
takes a lease (a Redis key with a TTL and the worker's token) that its running job renews. A
second delivery while the lease is alive is told ``busy`` (the task retries later); after the
lease expired (the worker died) the next claim takes the job over and resumes from its
checkpoint. Every write of a running job is fenced by the lease token, so a worker that lost
its lease cannot overwrite the job's new owner.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import redis

from schemas.base import utc_now
from schemas.jobs import (
    FINISHED_STATES,
    JobKind,
    JobList,
    JobResult,
    JobState,
    JobStatus,
    WorkerInfo,
    queue_of,
)

PREFIX = "depotwatch"
Publish = Callable[[JobStatus], None]
ClaimOutcome = Literal["run", "busy", "finished", "missing"]


class JobNotFoundError(KeyError):
    """No job with that id (never existed, or expired after ``keep_days``)."""


class LeaseLostError(RuntimeError):
    """This worker's lease on the job expired or was taken over: stop without writing."""


class JobStoreUnavailableError(RuntimeError):
    """Redis cannot be reached."""


@dataclass(frozen=True)
class Claim:
    """The answer to :meth:`JobStore.claim`."""

    outcome: ClaimOutcome
    job: JobStatus | None = None
    token: str | None = None


class JobStore:
    """Jobs and workers in one Redis database.

    ``publish`` receives every status written (the worker and API send it to ``jobs.v1``);
    ``clock`` is injected by tests.
    """

    def __init__(
        self,
        client: redis.Redis,
        keep_days: float = 30.0,
        publish: Publish | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.redis = client
        self.keep_s = int(keep_days * 86400)
        self.publish = publish
        self.clock = clock

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> JobStore:
        """A store on the Redis at ``url`` (short socket timeouts: the API must not hang)."""
        client = redis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=3.0)
        return cls(client, **kwargs)

    # ----------------------------------------------------------------- keys

    @staticmethod
    def _job_key(job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}"

    @staticmethod
    def _lease_key(job_id: str) -> str:
        return f"{PREFIX}:lease:{job_id}"

    @staticmethod
    def _worker_key(name: str) -> str:
        return f"{PREFIX}:worker:{name}"

    _INDEX = f"{PREFIX}:jobs"
    _WORKERS = f"{PREFIX}:workers"

    # ----------------------------------------------------------------- API side

    def ping(self) -> None:
        """Raise :class:`JobStoreUnavailableError` when Redis does not answer."""
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise JobStoreUnavailableError(f"job store (Redis) unreachable: {exc}") from None

    def create(self, request: Any) -> JobStatus:
        """Store a new queued job for ``request`` (a validated job model) and return it."""
        now = self.clock()
        job = JobStatus(
            id=uuid.uuid4().hex,
            kind=request.kind,
            request=request.model_dump(mode="json"),
            queue=queue_of(request),
            created_at=now,
            updated_at=now,
            message="waiting for a worker",
        )
        with self.redis.pipeline() as pipe:
            pipe.set(self._job_key(job.id), job.model_dump_json())
            pipe.zadd(self._INDEX, {job.id: now.timestamp()})
            pipe.execute()
        self._published(job)
        return job

    def get(self, job_id: str) -> JobStatus:
        """The job, or :class:`JobNotFoundError`."""
        raw = self.redis.get(self._job_key(job_id))
        if raw is None:
            raise JobNotFoundError(job_id)
        return JobStatus.model_validate_json(raw)

    def jobs(
        self,
        state: JobState | None = None,
        kind: JobKind | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> JobList:
        """Jobs newest first, optionally of one state and kind."""
        ids = [_text(i) or "" for i in self.redis.zrevrange(self._INDEX, 0, -1)]
        raws = self.redis.mget([self._job_key(i) for i in ids]) if ids else []
        gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:  # expired after keep_days
            self.redis.zrem(self._INDEX, *gone)
        jobs = [JobStatus.model_validate_json(raw) for raw in raws if raw is not None]
        jobs = [
            j
            for j in jobs
            if (state is None or j.state == state) and (kind is None or j.kind == kind)
        ]
        return JobList(jobs=jobs[offset : offset + limit], total=len(jobs))

    def request_cancel(self, job_id: str) -> JobStatus:
        """Cancel a queued job at once; ask a running one to stop (its worker obeys at its
        next progress step). A finished job is returned unchanged."""

        def change(job: JobStatus) -> JobStatus | None:
            if job.finished:
                return None
            if job.state == "queued":
                return self._finished(job, "cancelled", message="cancelled before it started")
            return job.model_copy(
                update={"cancel_requested": True, "message": "cancelling", **self._touch()}
            )

        return self._modify(job_id, change, fence=None)

    # ----------------------------------------------------------------- worker side

    def claim(self, job_id: str, worker: str, lease_s: float) -> Claim:
        """Take the job's lease for ``worker`` and mark it running (attempts + 1).

        One transaction (WATCH job and lease, MULTI): a cancel, a finish or another claim
        that lands between reading the job and writing it makes this one start over, so a
        cancelled or finished job is never brought back to running."""
        token = uuid.uuid4().hex
        key, lease = self._job_key(job_id), self._lease_key(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key, lease)
                    raw = pipe.get(key)
                    if raw is None:
                        return Claim("missing")
                    job = JobStatus.model_validate_json(raw)
                    if job.finished:
                        return Claim("finished", job)
                    if pipe.exists(lease):
                        return Claim("busy", job)
                    if job.cancel_requested:
                        # Its worker died while cancelling: nothing left to stop.
                        new = self._finished(job, "cancelled", message="cancelled")
                        outcome: ClaimOutcome = "finished"
                    else:
                        new = self._running(job, worker)
                        outcome = "run"
                    pipe.multi()
                    if outcome == "run":
                        pipe.set(lease, token, px=_ms(lease_s))
                    self._queue_write(pipe, new)
                    pipe.execute()
                except redis.WatchError:
                    continue
                self._published(new)
                return Claim(outcome, new, token if outcome == "run" else None)

    def _running(self, job: JobStatus, worker: str) -> JobStatus:
        now = self.clock()
        resumed = job.state == "running"
        return job.model_copy(
            update={
                "state": "running",
                "worker": worker,
                "attempts": job.attempts + 1,
                "started_at": job.started_at or now,
                "message": (
                    f"resumed by {worker} (attempt {job.attempts + 1})"
                    if resumed
                    else f"started by {worker}"
                ),
                **self._touch(),
            }
        )

    def fail_unqueued(self, job_id: str, error: str) -> JobStatus:
        """A job stored but not sent to the engine (Redis failed in between): failed, so it
        is not listed as waiting forever."""
        return self._modify(
            job_id,
            lambda j: None if j.finished else self._finished(j, "failed", error=error),
            fence=None,
        )

    def renew(self, job_id: str, token: str, lease_s: float) -> bool:
        """Extend the lease if ``token`` still holds it; False when it was lost."""
        renewed = self.redis.eval(_RENEW, 1, self._lease_key(job_id), token, _ms(lease_s))
        return bool(renewed)

    def progress(
        self,
        job_id: str,
        token: str,
        pct: float,
        message: str,
        checkpoint: dict[str, Any] | None = None,
    ) -> JobStatus:
        """Record progress (and a checkpoint to resume from); returns the job as stored, so
        the caller sees ``cancel_requested``. Raises :class:`LeaseLostError`."""

        def change(job: JobStatus) -> JobStatus:
            update: dict[str, Any] = {
                "progress_pct": round(max(0.0, min(100.0, pct)), 2),
                "message": message,
                **self._touch(),
            }
            if checkpoint is not None:
                update["checkpoint"] = checkpoint
            return job.model_copy(update=update)

        return self._modify(job_id, change, fence=token)

    def finish(
        self,
        job_id: str,
        token: str,
        state: JobState,
        result: JobResult | None = None,
        error: str | None = None,
        message: str = "",
    ) -> JobStatus:
        """End a running job (succeeded, failed or cancelled) and release its lease."""
        if state not in FINISHED_STATES:
            raise ValueError(f"{state} is not a finished state")
        job = self._modify(
            job_id,
            lambda j: self._finished(j, state, result=result, error=error, message=message),
            fence=token,
        )
        self.redis.eval(_RELEASE, 1, self._lease_key(job_id), token)
        return job

    def requeue(self, job_id: str, token: str, message: str) -> JobStatus:
        """Hand a running job back (its worker stops): queued again, checkpoint kept, lease
        released. The caller sends it to the engine again."""
        job = self._modify(
            job_id,
            lambda j: j.model_copy(
                update={"state": "queued", "worker": None, "message": message, **self._touch()}
            ),
            fence=token,
        )
        self.redis.eval(_RELEASE, 1, self._lease_key(job_id), token)
        return job

    # ----------------------------------------------------------------- workers

    def heartbeat(self, info: WorkerInfo, ttl_s: float) -> None:
        """Record a worker's heartbeat; it vanishes from :meth:`workers` after ``ttl_s``."""
        with self.redis.pipeline() as pipe:
            pipe.set(self._worker_key(info.name), info.model_dump_json(), px=_ms(ttl_s))
            pipe.sadd(self._WORKERS, info.name)
            pipe.execute()

    def forget_worker(self, name: str) -> None:
        """A worker that stops cleanly leaves the list at once."""
        with self.redis.pipeline() as pipe:
            pipe.delete(self._worker_key(name))
            pipe.srem(self._WORKERS, name)
            pipe.execute()

    def workers(self) -> list[WorkerInfo]:
        """Workers whose heartbeat has not expired, by name."""
        names = sorted(_text(n) or "" for n in self.redis.smembers(self._WORKERS))
        raws = self.redis.mget([self._worker_key(n) for n in names]) if names else []
        gone = [n for n, raw in zip(names, raws, strict=True) if raw is None]
        if gone:
            self.redis.srem(self._WORKERS, *gone)
        return [WorkerInfo.model_validate_json(raw) for raw in raws if raw is not None]

    # ----------------------------------------------------------------- internals

    def _touch(self) -> dict[str, datetime]:
        return {"updated_at": self.clock()}

    def _finished(
        self,
        job: JobStatus,
        state: JobState,
        result: JobResult | None = None,
        error: str | None = None,
        message: str = "",
    ) -> JobStatus:
        now = self.clock()
        return job.model_copy(
            update={
                "state": state,
                "finished_at": now,
                "updated_at": now,
                "result": result,
                "error": error,
                "message": message or state,
                "progress_pct": 100.0 if state == "succeeded" else job.progress_pct,
            }
        )

    def _modify(
        self,
        job_id: str,
        change: Callable[[JobStatus], JobStatus | None],
        fence: str | None,
    ) -> JobStatus:
        """Read-modify-write one job atomically (WATCH/MULTI); with ``fence``, only while that
        token holds the job's lease."""
        key, lease = self._job_key(job_id), self._lease_key(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key, lease)
                    raw = pipe.get(key)
                    if raw is None:
                        raise JobNotFoundError(job_id)
                    if fence is not None and _text(pipe.get(lease)) != fence:
                        raise LeaseLostError(job_id)
                    job = JobStatus.model_validate_json(raw)
                    new = change(job)
                    if new is None:
                        return job
                    pipe.multi()
                    self._queue_write(pipe, new)
                    pipe.execute()
                except redis.WatchError:
                    continue
                self._published(new)
                return new

    def _write(self, job: JobStatus) -> None:
        with self.redis.pipeline() as pipe:
            self._queue_write(pipe, job)
            pipe.execute()
        self._published(job)

    def _queue_write(self, pipe: Any, job: JobStatus) -> None:
        ttl = self.keep_s if job.finished else None
        pipe.set(self._job_key(job.id), job.model_dump_json(), ex=ttl)
        if ttl is not None:
            # The index entry goes when list() finds the job expired.
            pipe.zadd(self._INDEX, {job.id: job.created_at.timestamp()})

    def _published(self, job: JobStatus) -> None:
        if self.publish is not None:
            self.publish(job)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else raw


# Extend / delete a lease only if the caller's token still holds it.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
