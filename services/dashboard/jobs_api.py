"""``/api/v1/jobs``, ``/api/v1/workers`` and ``/api/v1/videos``: launch work, follow it, see who
runs it.

A job is checked (:func:`services.jobs.requests.request_problems`: flows, cameras, inputs),
stored in the job store and sent to the job engine; ``202`` answers with its id. Its status
(state, progress, checkpoint, result or error) is read back from the job store, so any API
replica answers for any job and an API restart loses nothing. Videos are uploaded with
``PUT /api/v1/videos/{name}`` (checked to be decodable, stored in the jobs bucket) and then
named in a ``video`` job as ``s3://...``.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import redis
from fastapi import APIRouter, Body, Query, Request
from kombu.exceptions import OperationalError as KombuOperationalError
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from schemas.api import ApiError
from schemas.facility import FacilityConfig
from schemas.jobs import (
    JobKind,
    JobList,
    JobRequest,
    JobState,
    JobStatus,
    VideoUpload,
    WorkerInfo,
)
from services.dashboard.api import COMMON_ERRORS, error_response, rejected_response
from services.jobs.engine import StatusPublisher
from services.jobs.requests import request_problems
from services.jobs.store import JobNotFoundError, JobStore
from services.runtime.settings import Settings
from services.runtime.storage import ObjectStore, StorageError

UPLOAD_MAX_BYTES = 4 * 2**30
"""Largest video one upload may carry."""
_UPLOAD_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$"
_RESPONSES: dict[int | str, dict[str, Any]] = {
    **COMMON_ERRORS,
    503: {"model": ApiError, "description": "The job engine (Redis) or S3 is unreachable."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ApiError}}
ENGINE_ERRORS = (redis.RedisError, KombuOperationalError, OSError)
"""What an unreachable Redis raises (the job store, or Celery sending a job)."""
T = TypeVar("T")


@dataclass
class JobsBackend:
    """What the jobs routes talk to: the job store, the engine, and S3 for inputs/results."""

    store: JobStore
    submit: Callable[[JobStatus], None]
    settings: Settings
    publisher: StatusPublisher | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> JobsBackend:
        """The backend of ``settings`` (connects lazily: a missing Redis is a 503 per call)."""
        from services.jobs.engine import celery_app, submit

        engine = celery_app(settings.jobs)
        publisher = StatusPublisher(settings, "depotwatch-api")
        store = JobStore.from_url(
            settings.jobs.redis_url.get_secret_value(),
            keep_days=settings.jobs.keep_days,
            publish=publisher,
        )
        return cls(store, lambda job: submit(engine, job), settings, publisher)

    def close(self) -> None:
        """Deliver the job statuses still queued for ``jobs.v1`` (bounded) and disconnect."""
        if self.publisher is not None:
            self.publisher.close(timeout=5.0)
        self.store.redis.close()

    def objects(self, bucket: str | None = None) -> ObjectStore:
        """An S3 client on ``bucket`` (default: the jobs bucket)."""
        name = bucket or self.settings.jobs.results_bucket
        return ObjectStore(self.settings.s3.model_copy(update={"bucket": name}), timeout_s=30.0)

    def exists(self, bucket: str, key: str) -> bool:
        """Whether an S3 object exists."""
        return self.objects(bucket).exists(key)


def _unavailable(exc: Exception) -> JSONResponse:
    return error_response(
        503,
        f"the job engine is unreachable ({type(exc).__name__}: {exc}); start Redis with "
        "`depotwatch infra up` or check DEPOTWATCH_JOBS__REDIS_URL",
    )


def jobs_router(jobs: JobsBackend | None, facility: Callable[[], FacilityConfig]) -> APIRouter:
    """The jobs, workers and video upload routes (503 each when ``jobs`` is None)."""
    router = APIRouter(prefix="/api/v1", responses=_RESPONSES)

    def backend() -> JobsBackend | JSONResponse:
        if jobs is None:
            return error_response(503, "this server runs without the job engine")
        return jobs

    async def engine_call(work: Callable[[JobsBackend], T]) -> T | JSONResponse:
        """``work(backend)`` on a thread; 404 for an unknown job, 503 when the job engine is
        missing or unreachable."""
        b = backend()
        if isinstance(b, JSONResponse):
            return b
        try:
            return await run_in_threadpool(work, b)
        except JobNotFoundError as exc:
            return error_response(404, f"no job {exc.args[0]!r}; GET /api/v1/jobs lists them")
        except ENGINE_ERRORS as exc:
            return _unavailable(exc)

    @router.post(
        "/jobs",
        status_code=202,
        response_model=JobStatus,
        responses={403: {"model": ApiError}},
        tags=["jobs"],
    )
    async def create_job(
        request: Annotated[JobRequest, Body(description="The job: one of the kinds.")],
    ) -> JobStatus | Response:
        """Queue a job (video, replay, score, train); 202 with its id. Checked first: a bad
        flow, camera or input is a 422 and nothing is queued."""
        b = backend()
        if isinstance(b, Response):
            return b
        try:
            problems = await run_in_threadpool(request_problems, request, facility(), b.exists)
        except StorageError as exc:
            return error_response(503, f"cannot check the job's inputs: {exc}")
        if problems:
            return rejected_response(problems, "the job cannot run; nothing was queued")

        def queue(b: JobsBackend) -> JobStatus:
            job = b.store.create(request)
            try:
                b.submit(job)
            except ENGINE_ERRORS as exc:
                # Stored but not sent: not left listed as waiting forever.
                with contextlib.suppress(*ENGINE_ERRORS):
                    b.store.fail_unqueued(job.id, f"could not be queued: {exc}")
                raise
            return job

        job = await engine_call(queue)
        if isinstance(job, JSONResponse):
            return job
        return JSONResponse(
            job.model_dump(mode="json"),
            status_code=202,
            headers={"Location": f"/api/v1/jobs/{job.id}"},
        )

    @router.get("/jobs", response_model=JobList, tags=["jobs"])
    async def list_jobs(
        state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
        kind: Annotated[JobKind | None, Query(description="Only jobs of this kind.")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> JobList | Response:
        """Jobs, newest first."""
        return await engine_call(lambda b: b.store.jobs(state, kind, limit, offset))

    @router.get("/jobs/{job_id}", response_model=JobStatus, responses=_NOT_FOUND, tags=["jobs"])
    async def get_job(job_id: str) -> JobStatus | Response:
        """A job: state, progress %, timings, checkpoint, result (S3 references) or error."""
        return await engine_call(lambda b: b.store.get(job_id))

    @router.post(
        "/jobs/{job_id}/cancel",
        status_code=202,
        response_model=JobStatus,
        responses={**_NOT_FOUND, 403: {"model": ApiError}},
        tags=["jobs"],
    )
    async def cancel_job(job_id: str) -> JobStatus | Response:
        """Cancel a job: a queued one at once, a running one at its next progress step."""
        job = await engine_call(lambda b: b.store.request_cancel(job_id))
        if isinstance(job, JSONResponse):
            return job
        return JSONResponse(job.model_dump(mode="json"), status_code=202)

    @router.get("/workers", response_model=list[WorkerInfo], tags=["jobs"])
    async def workers() -> list[WorkerInfo] | Response:
        """Workers alive now (heartbeat within 3 intervals): capacity, GPU, running jobs."""
        return await engine_call(lambda b: b.store.workers())

    @router.put(
        "/videos/{name}",
        status_code=201,
        response_model=VideoUpload,
        responses={403: {"model": ApiError}, 413: {"model": ApiError}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
        tags=["jobs"],
    )
    async def upload_video(name: str, request: Request) -> VideoUpload | Response:
        """Upload a recorded video (MP4, MKV, AVI) for video jobs; answers its s3:// source."""
        import re

        b = backend()
        if isinstance(b, Response):
            return b
        if not re.match(_UPLOAD_NAME, name):
            return rejected_response(
                [f"name: {name!r} is not a file name; use letters, digits, '.', '_', '-'"],
                "the upload is not valid; nothing was stored",
            )
        with tempfile.NamedTemporaryFile(suffix=Path(name).suffix or ".mp4") as tmp:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > UPLOAD_MAX_BYTES:
                    return error_response(
                        413, f"the video is larger than {UPLOAD_MAX_BYTES // 2**30} GiB; split it"
                    )
                tmp.write(chunk)
            tmp.flush()
            if size == 0:
                return rejected_response(
                    ["body: is empty; send the video file as the request body"],
                    "the upload is not valid; nothing was stored",
                )
            problem = await run_in_threadpool(video_problem, Path(tmp.name))
            if problem:
                return rejected_response(
                    [f"body: {problem}"], "the upload is not valid; nothing was stored"
                )
            key = f"uploads/{name}"
            try:
                store = b.objects()
                await run_in_threadpool(store.ensure_bucket)
                stored = await run_in_threadpool(store.put_file, key, Path(tmp.name), "video/mp4")
            except StorageError as exc:
                return error_response(503, f"the video was not stored: {exc}")
        return VideoUpload(source=f"s3://{stored.bucket}/{stored.key}", size=size)

    return router


def video_problem(path: Path) -> str | None:
    """Why the file is not a video OpenCV can decode (None: it decodes a first frame)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return "is not a video this server can decode; send MP4/MKV/AVI (H.264, MPEG-4, MJPEG)"
        ok, _ = capture.read()
        if not ok:
            return "has no decodable frame; check the file is complete"
    finally:
        capture.release()
    return None
