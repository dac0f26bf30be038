"""Checks of a job request against the facility and the inputs it names, before it is queued.

The API answers a bad request with a 422 listing these problems (``field: problem; fix``) and
queues nothing; the worker runs the same checks again (the facility may have changed since).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from schemas.facility import FacilityConfig
from schemas.jobs import ReplayJob, ScoreJob, TrainJob, VideoJob

Request = VideoJob | ReplayJob | ScoreJob | TrainJob
Exists = Callable[[str, str], bool]
"""(bucket, key) -> whether that S3 object exists."""


def _flow_problem(field: str, flow: str, facility: FacilityConfig) -> list[str]:
    if flow in facility.flows:
        return []
    return [f"{field}: no flow {flow!r} in the facility; use one of {', '.join(facility.flows)}"]


def source_problem(field: str, source: str, exists: Exists) -> str | None:
    """Why ``source`` (file:///path or s3://bucket/key) cannot be read, or None."""
    if source.startswith("file://"):
        path = Path(source.removeprefix("file://"))
        if not path.is_absolute():
            return f"{field}: {source} is not an absolute path; write file:///abs/path"
        if not path.is_file():
            return (
                f"{field}: {path} does not exist here; give a path the workers can read or "
                "upload the file (PUT /api/v1/videos/{name})"
            )
        return None
    bucket, _, key = source.removeprefix("s3://").partition("/")
    if not key:
        return f"{field}: {source} names no object; write s3://bucket/key"
    if not exists(bucket, key):
        return f"{field}: {source} does not exist; upload it first (PUT /api/v1/videos/{{name}})"
    return None


def request_problems(request: Request, facility: FacilityConfig, exists: Exists) -> list[str]:
    """Every problem of ``request``; empty when it can be queued."""
    problems: list[str] = []
    if isinstance(request, VideoJob):
        problems += _flow_problem("flow", request.flow, facility)
        known = {c.id for c in facility.cameras}
        for camera_id, source in request.videos.items():
            field = f"videos.{camera_id}"
            if camera_id not in known:
                problems.append(
                    f"{field}: no camera {camera_id!r} in the facility (known: "
                    f"{', '.join(sorted(known))}); add it first (POST /api/v1/cameras)"
                )
                continue
            problem = source_problem(field, source, exists)
            if problem:
                problems.append(problem)
    elif isinstance(request, ReplayJob):
        problems += _flow_problem("flow", request.flow, facility)
        stages = facility.flows.get(request.flow)
        if stages is not None and stages.position_estimator is None:
            problems.append(
                f"flow: flow {request.flow!r} runs no position estimator; nothing to replay"
            )
    elif isinstance(request, ScoreJob):
        problems += _flow_problem("flow", request.flow, facility)
        if request.against != "ground-truth":
            problems += _flow_problem("against", request.against, facility)
    else:
        problem = source_problem("data", request.data, exists)
        if problem:
            problems.append(problem)
    return problems
