"""run_job with kinds that succeed, fail, get cancelled, lose their lease or see the worker stop."""

from __future__ import annotations

import threading

import pytest
import redis

from schemas.jobs import JobResult, VideoJob
from services.jobs.runner import JobContext, JobInputError, KindRunner, run_job
from services.jobs.store import JobStore
from services.runtime.settings import JobsSettings, Settings


def _settings(lease_s: float = 30.0) -> Settings:
    return Settings(jobs=JobsSettings(lease_s=lease_s))


def _run(
    url: str, kind: KindRunner, stopping: threading.Event | None = None, lease_s: float = 30.0
) -> tuple[JobStore, str, str]:
    store = JobStore(redis.Redis.from_url(url))
    job = store.create(VideoJob(videos={"cam-n1": "file:///v.mp4"}))
    running: set[str] = set()
    outcome = run_job(
        job.id,
        store,
        _settings(lease_s),
        "w1",
        {"video": kind},
        stopping or threading.Event(),
        running,
    )
    assert running == set()
    return store, job.id, outcome


def test_success_records_the_result(redis_url: str) -> None:
    def kind(ctx: JobContext) -> JobResult:
        ctx.progress(50, "half", checkpoint={"n": 1})
        return JobResult(summary={"frames": 3}, artifacts={"timeline": "s3://b/k"})

    store, job_id, outcome = _run(redis_url, kind)
    job = store.get(job_id)
    assert outcome == "done"
    assert job.state == "succeeded"
    assert job.result is not None
    assert job.result.summary["frames"] == 3
    assert "wall_s" in job.result.summary
    assert job.checkpoint == {"n": 1}


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            JobInputError("camera cam-n1: x.mp4 is not a video"),
            "camera cam-n1: x.mp4 is not a video",
        ),
        (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero"),
    ],
)
def test_a_failing_kind_fails_the_job_with_its_reason(
    redis_url: str, error: Exception, expected: str
) -> None:
    def kind(ctx: JobContext) -> JobResult:
        raise error

    store, job_id, outcome = _run(redis_url, kind)
    job = store.get(job_id)
    assert outcome == "done"
    assert job.state == "failed"
    assert job.error == expected


def test_cancel_stops_the_job_at_its_next_progress_step(redis_url: str) -> None:
    steps = []

    def kind(ctx: JobContext) -> JobResult:
        ctx.store.request_cancel(ctx.job.id)  # the API, meanwhile
        for i in range(5):
            steps.append(i)
            ctx.progress(i * 10, "working", checkpoint={"i": i})
        return JobResult()

    store, job_id, _ = _run(redis_url, kind)
    assert store.get(job_id).state == "cancelled"
    assert steps == [0]


def test_a_stopping_worker_hands_the_job_back(redis_url: str) -> None:
    stopping = threading.Event()

    def kind(ctx: JobContext) -> JobResult:
        ctx.progress(30, "working", checkpoint={"ticks_done": 6})
        stopping.set()  # SIGTERM arrives
        ctx.progress(40, "working")
        return JobResult()

    store, job_id, outcome = _run(redis_url, kind, stopping)
    job = store.get(job_id)
    assert outcome == "requeue"
    assert job.state == "queued"
    assert job.checkpoint == {"ticks_done": 6}
    assert store.claim(job_id, "w2", 30).outcome == "run"  # the lease was released


def test_a_job_taken_over_stops_without_writing(redis_url: str) -> None:
    def kind(ctx: JobContext) -> JobResult:
        # Another worker took the job over (this one's lease expired while it was stuck).
        ctx.store.redis.delete(f"depotwatch:lease:{ctx.job.id}")
        assert ctx.store.claim(ctx.job.id, "w2", 30).outcome == "run"
        ctx.progress(99, "w1 still thinks it runs", checkpoint={"x": 1})
        return JobResult()

    store, job_id, outcome = _run(redis_url, kind)
    job = store.get(job_id)
    assert outcome == "lost"
    assert job.worker == "w2"
    assert job.state == "running"
    assert job.checkpoint is None
