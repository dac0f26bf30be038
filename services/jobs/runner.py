"""Runs one job on a worker: claim it, keep its lease alive, run its kind, record the end.

A kind is a function ``(JobContext) -> JobResult``. It reports progress through
:meth:`JobContext.progress`, which also hands it the stop signals: a cancel request from the
API (:class:`JobCancelledError`), a lost lease (:class:`~services.jobs.store.LeaseLostError`:
another worker took the job over) and the worker's own shutdown (:class:`WorkerStoppingError`:
the job is queued again and resumes elsewhere from its checkpoint).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis
from prometheus_client import Counter, Histogram

from schemas.jobs import JobResult, JobStatus
from services.jobs.store import JobStore, LeaseLostError
from services.runtime.settings import Settings
from services.runtime.storage import ObjectStore

log = logging.getLogger(__name__)

JOBS_ENDED = Counter(
    "depotwatch_jobs_ended_total",
    "Job attempts that ended on this worker, by kind and how",
    ["kind", "outcome"],
)
JOB_SECONDS = Histogram(
    "depotwatch_job_seconds",
    "Wall time of job attempts on this worker",
    ["kind"],
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
)


class JobCancelledError(Exception):
    """The API asked the job to stop."""


class WorkerStoppingError(Exception):
    """The worker is shutting down: the job goes back to the queue."""


class JobInputError(ValueError):
    """The job's input cannot be used (a missing video, an unknown camera): it fails with
    this message, which says what to fix."""


KindRunner = Callable[["JobContext"], JobResult]
RunOutcome = Literal["done", "busy", "finished", "missing", "lost", "requeue"]


@dataclass
class JobContext:
    """What a kind sees of its job: the request, settings, progress and result storage."""

    job: JobStatus
    token: str
    settings: Settings
    store: JobStore
    stopping: threading.Event
    lease_lost: threading.Event
    min_interval_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _last: float = field(default=-1e9, init=False)
    _results: ObjectStore | None = field(default=None, init=False)

    @property
    def request(self) -> dict[str, Any]:
        """The request as accepted by the API."""
        return self.job.request

    @property
    def checkpoint(self) -> dict[str, Any] | None:
        """Where a previous attempt got to (None on the first attempt)."""
        return self.job.checkpoint

    def progress(self, pct: float, message: str, checkpoint: dict[str, Any] | None = None) -> None:
        """Record progress (at most once per ``min_interval_s`` unless a checkpoint is given)
        and stop the job here if it was cancelled, taken over, or the worker stops."""
        if self.lease_lost.is_set():
            raise LeaseLostError(self.job.id)
        if self.stopping.is_set():
            raise WorkerStoppingError(self.job.id)
        now = self.clock()
        if checkpoint is None and now - self._last < self.min_interval_s:
            return
        self._last = now
        try:
            self.job = self.store.progress(self.job.id, self.token, pct, message, checkpoint)
        except redis.RedisError as exc:
            # A Redis hiccup must not fail hours of work: the lease keeper decides whether
            # the job is still ours; a checkpoint missed here only means resuming earlier.
            log.warning("job progress not recorded", extra={"job": self.job.id, "error": str(exc)})
            return
        if self.job.cancel_requested:
            raise JobCancelledError(self.job.id)

    @property
    def results(self) -> ObjectStore:
        """The bucket job inputs and results live in (created on first use)."""
        if self._results is None:
            s3 = self.settings.s3.model_copy(update={"bucket": self.settings.jobs.results_bucket})
            self._results = ObjectStore(s3, timeout_s=60.0, retries=2)
            self._results.ensure_bucket()
        return self._results

    def _still_ours(self) -> None:
        # A worker that lost the job must not overwrite its new owner's objects.
        if self.lease_lost.is_set():
            raise LeaseLostError(self.job.id)

    def key(self, name: str) -> str:
        """The object key of this job's result ``name``."""
        return f"jobs/{self.job.id}/{name}"

    def put(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Store a result object; returns its ``s3://bucket/key``."""
        self._still_ours()
        stored = self.results.put(self.key(name), data, content_type)
        return f"s3://{stored.bucket}/{stored.key}"

    def put_file(self, name: str, path: Path) -> str:
        """Store a result file (streamed); returns its ``s3://bucket/key``."""
        self._still_ours()
        stored = self.results.put_file(self.key(name), path)
        return f"s3://{stored.bucket}/{stored.key}"


class LeaseKeeper:
    """Renews a job's lease every ``lease_s / 4`` on a thread; sets ``lost`` if it cannot."""

    def __init__(self, store: JobStore, job_id: str, token: str, lease_s: float) -> None:
        self.store, self.job_id, self.token, self.lease_s = store, job_id, token, lease_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id[:8]}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        failures = 0
        while not self._stop.wait(self.lease_s / 4):
            try:
                if not self.store.renew(self.job_id, self.token, self.lease_s):
                    log.warning("job lease lost", extra={"job": self.job_id})
                    self.lost.set()
                    return
                failures = 0
            except Exception as exc:  # Redis outage: keep trying until the lease would end
                failures += 1
                log.warning("job lease not renewed", extra={"job": self.job_id, "error": str(exc)})
                if failures >= 3:
                    self.lost.set()
                    return


def run_job(
    job_id: str,
    store: JobStore,
    settings: Settings,
    worker: str,
    kinds: dict[str, KindRunner],
    stopping: threading.Event,
    running: set[str] | None = None,
) -> RunOutcome:
    """Claim and run one job; the outcome tells the task what to do with its message."""
    lease_s = settings.jobs.lease_s
    claim = store.claim(job_id, worker, lease_s)
    if claim.outcome != "run":
        return claim.outcome
    assert claim.job is not None
    assert claim.token is not None
    job, token = claim.job, claim.token
    runner = kinds.get(job.kind)
    if runner is None:  # not routed here (queues are per kind): a misconfigured worker
        store.finish(job_id, token, "failed", error=f"this worker cannot run {job.kind} jobs")
        return "done"
    log.info("job started", extra={"job": job_id, "kind": job.kind, "attempt": job.attempts})
    if running is not None:
        running.add(job_id)
    started = time.monotonic()
    outcome: RunOutcome = "lost"
    try:
        outcome = _attempt(job, token, store, settings, worker, runner, stopping, started)
        return outcome
    finally:
        JOBS_ENDED.labels(job.kind, outcome).inc()
        JOB_SECONDS.labels(job.kind).observe(time.monotonic() - started)
        if running is not None:
            running.discard(job_id)


def _attempt(
    job: JobStatus,
    token: str,
    store: JobStore,
    settings: Settings,
    worker: str,
    runner: KindRunner,
    stopping: threading.Event,
    started: float,
) -> RunOutcome:
    job_id, lease_s = job.id, settings.jobs.lease_s
    try:
        with LeaseKeeper(store, job_id, token, lease_s) as keeper:
            ctx = JobContext(job, token, settings, store, stopping, keeper.lost)
            try:
                result = runner(ctx)
            except JobCancelledError:
                store.finish(job_id, token, "cancelled", message="cancelled on request")
                log.info("job cancelled", extra={"job": job_id})
                return "done"
            except WorkerStoppingError:
                store.requeue(job_id, token, f"{worker} stopped; waiting for another worker")
                log.info("job handed back: worker stopping", extra={"job": job_id})
                return "requeue"
            except LeaseLostError:
                log.warning("job taken over by another worker; stopped here", extra={"job": job_id})
                return "lost"
            except JobInputError as exc:
                store.finish(job_id, token, "failed", error=str(exc), message="bad input")
                log.warning("job failed: bad input", extra={"job": job_id, "error": str(exc)})
                return "done"
            except Exception as exc:
                log.exception("job failed", extra={"job": job_id})
                error = f"{type(exc).__name__}: {exc}"
                store.finish(job_id, token, "failed", error=error, message="failed")
                return "done"
            took = round(time.monotonic() - started, 3)
            result = result.model_copy(update={"summary": {**result.summary, "wall_s": took}})
            store.finish(job_id, token, "succeeded", result=result, message="done")
            log.info("job succeeded", extra={"job": job_id, "wall_s": took})
            return "done"
    except LeaseLostError:
        log.warning("job taken over by another worker before it ended here", extra={"job": job_id})
        return "lost"
