"""The job store on a real Redis: jobs, leases (claim, busy, take-over, fencing), workers."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from schemas.jobs import JobResult, ReplayJob, TrainJob, VideoJob, WorkerInfo
from services.jobs.store import JobNotFoundError, JobStore, LeaseLostError

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def _store(url: str, published: list | None = None, keep_days: float = 30.0) -> JobStore:
    sink = published.append if published is not None else None
    return JobStore(redis.Redis.from_url(url), keep_days=keep_days, publish=sink, clock=Clock())


def _video() -> VideoJob:
    return VideoJob(videos={"cam-n1": "file:///videos/n1.mp4"})


def _wait_until(check, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_create_get_list_and_publish(redis_url: str) -> None:
    published: list = []
    store = _store(redis_url, published)
    a = store.create(_video())
    b = store.create(TrainJob(data="file:///data/data.yaml"))
    assert a.state == "queued"
    assert a.queue == "video"
    assert b.queue == "train.gpu"  # train jobs default to a GPU
    assert store.get(a.id) == a
    listed = store.jobs()
    assert [j.id for j in listed.jobs] == [b.id, a.id]  # newest first
    assert listed.total == 2
    assert [j.id for j in store.jobs(kind="video").jobs] == [a.id]
    assert store.jobs(state="running").total == 0
    assert [j.id for j in published] == [a.id, b.id]
    with pytest.raises(JobNotFoundError):
        store.get("0" * 32)


def test_claim_runs_once_and_a_second_delivery_is_busy(redis_url: str) -> None:
    store = _store(redis_url)
    job = store.create(_video())
    first = store.claim(job.id, "w1", lease_s=30)
    assert first.outcome == "run"
    assert first.job is not None
    assert first.job.state == "running"
    assert first.job.attempts == 1
    assert first.job.worker == "w1"
    again = store.claim(job.id, "w2", lease_s=30)
    assert again.outcome == "busy"
    assert store.get(job.id).worker == "w1"
    assert first.token is not None
    done = store.finish(job.id, first.token, "succeeded", result=JobResult(summary={"x": 1}))
    assert done.state == "succeeded"
    assert done.progress_pct == 100
    assert done.finished_at is not None
    assert store.claim(job.id, "w2", lease_s=30).outcome == "finished"


def test_a_dead_workers_job_is_taken_over_and_the_old_owner_is_fenced(redis_url: str) -> None:
    store = _store(redis_url)
    job = store.create(_video())
    old = store.claim(job.id, "w1", lease_s=0.3)
    assert old.token is not None
    store.progress(job.id, old.token, 40, "halfway", checkpoint={"ticks_done": 20})
    # w1 dies: nobody renews its lease.
    _wait_until(lambda: store.claim(job.id, "w2", lease_s=30).outcome == "run")
    taken = store.get(job.id)
    assert taken.worker == "w2"
    assert taken.attempts == 2
    assert taken.checkpoint == {"ticks_done": 20}  # the new attempt resumes there
    assert "resumed" in taken.message
    with pytest.raises(LeaseLostError):
        store.progress(job.id, old.token, 50, "w1 woke up")
    with pytest.raises(LeaseLostError):
        store.finish(job.id, old.token, "succeeded")
    assert store.get(job.id).worker == "w2"
    assert not store.renew(job.id, old.token, 30)


def test_renew_keeps_the_lease(redis_url: str) -> None:
    store = _store(redis_url)
    job = store.create(_video())
    claim = store.claim(job.id, "w1", lease_s=0.5)
    assert claim.token is not None
    for _ in range(4):
        time.sleep(0.2)
        assert store.renew(job.id, claim.token, 0.5)
    assert store.claim(job.id, "w2", lease_s=0.5).outcome == "busy"


def test_cancel_queued_running_and_finished(redis_url: str) -> None:
    store = _store(redis_url)
    queued = store.create(_video())
    assert store.request_cancel(queued.id).state == "cancelled"
    assert store.claim(queued.id, "w1", 30).outcome == "finished"

    running = store.create(_video())
    claim = store.claim(running.id, "w1", 30)
    assert claim.token is not None
    asked = store.request_cancel(running.id)
    assert asked.state == "running"
    assert asked.cancel_requested
    # The worker sees it at its next progress step.
    assert store.progress(running.id, claim.token, 10, "working").cancel_requested

    done = store.finish(running.id, claim.token, "cancelled")
    assert store.request_cancel(running.id) == done  # finished: unchanged


def test_requeue_hands_the_job_back_with_its_checkpoint(redis_url: str) -> None:
    store = _store(redis_url)
    job = store.create(_video())
    claim = store.claim(job.id, "w1", 30)
    assert claim.token is not None
    store.progress(job.id, claim.token, 25, "a quarter", checkpoint={"ticks_done": 5})
    back = store.requeue(job.id, claim.token, "w1 stopped")
    assert back.state == "queued"
    assert back.worker is None
    again = store.claim(job.id, "w2", 30)  # no lease left to wait for
    assert again.outcome == "run"
    assert again.job is not None
    assert again.job.checkpoint == {"ticks_done": 5}
    assert again.job.attempts == 2


def test_a_job_that_could_not_be_sent_is_failed_not_left_waiting(redis_url: str) -> None:
    store = _store(redis_url)
    job = store.create(_video())
    failed = store.fail_unqueued(job.id, "could not be queued: Redis went away")
    assert failed.state == "failed"
    assert failed.error == "could not be queued: Redis went away"
    assert store.claim(job.id, "w1", 30).outcome == "finished"
    assert store.fail_unqueued(job.id, "again") == failed  # finished: unchanged


def test_finished_jobs_expire_and_leave_the_list(redis_url: str) -> None:
    store = _store(redis_url, keep_days=1 / 86400)  # one second
    job = store.create(ReplayJob(flow="prod", start=T0, end=T0 + timedelta(minutes=5)))
    claim = store.claim(job.id, "w1", 30)
    assert claim.token is not None
    store.finish(job.id, claim.token, "failed", error="boom")
    _wait_until(lambda: store.jobs().total == 0)
    with pytest.raises(JobNotFoundError):
        store.get(job.id)


def test_workers_are_listed_while_their_heartbeat_lives(redis_url: str) -> None:
    store = _store(redis_url)
    info = WorkerInfo(
        name="w1@host",
        host="host",
        pid=1,
        cpu_cores=2,
        memory_gb=24,
        slots=2,
        running=["a" * 32],
        kinds=["video", "score"],
        queues=["video", "score"],
        started_at=T0,
        heartbeat_at=T0,
    )
    store.heartbeat(info, ttl_s=0.3)
    store.heartbeat(info.model_copy(update={"name": "w2@host", "running": []}), ttl_s=30)
    assert [w.name for w in store.workers()] == ["w1@host", "w2@host"]
    assert store.workers()[0].free_slots == 1
    _wait_until(lambda: [w.name for w in store.workers()] == ["w2@host"])
    store.forget_worker("w2@host")
    assert store.workers() == []
