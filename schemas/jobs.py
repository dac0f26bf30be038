"""Jobs: work launched through ``POST /api/v1/jobs`` and run by ``depotwatch worker`` processes.

A job request is one of the kinds below (``kind`` tells which). The job engine (Celery on
Redis) delivers it to a worker that has a free slot and serves the job's queue (``gpu`` jobs
only reach workers with a GPU). Every change of a job's status is kept in the job store (any API
replica answers for any job) and published on the compacted ``jobs.v1`` topic (key: job id):
results themselves (timelines, tracks, weights) are S3 objects that the status references.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from schemas.base import FlowName, Identifier, Message, StrictModel, UtcDatetime, WireModel

JobKind = Literal["video", "replay", "score", "train"]
JOB_KINDS: tuple[JobKind, ...] = ("video", "replay", "score", "train")
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
Queue = Annotated[str, Field(pattern=r"^(video|replay|score|train)(\.gpu)?$")]
"""Engine queue: the job kind (any worker accepting that kind), ``<kind>.gpu`` for a job
that needs a GPU (only workers with a GPU consume those)."""

VIDEO_SOURCE_PATTERN = r"^(file:///|s3://)[^\s]+$"
"""Where a job's video is: ``file:///abs/path.mp4`` (a path the workers can read) or
``s3://bucket/key`` (e.g. what ``PUT /api/v1/videos/{name}`` returned)."""


class VideoJob(StrictModel):
    """Recorded video of one or more cameras, processed like live frames through a flow."""

    kind: Literal["video"] = "video"
    flow: FlowName = Field(default="prod", description="Flow whose estimators and fusion run.")
    videos: dict[Identifier, Annotated[str, Field(pattern=VIDEO_SOURCE_PATTERN)]] = Field(
        min_length=1,
        description="Per camera id of the facility: file:///path.mp4 or s3://bucket/key.",
    )
    fps: float = Field(
        default=2.0, gt=0, le=30, description="Frames per second taken from each video."
    )
    start_at: UtcDatetime | None = Field(
        default=None,
        description="Wall-clock time of the videos' first frame (default: when the job starts); "
        "frames and states are stamped from it.",
    )
    max_seconds: float | None = Field(
        default=None, gt=0, description="Process only this many seconds of video."
    )


class ReplayJob(StrictModel):
    """``depotwatch replay``: re-run a flow's estimators over stored frames of a time range."""

    kind: Literal["replay"] = "replay"
    flow: FlowName = Field(description="Flow whose estimators to re-run.")
    start: UtcDatetime = Field(description="First frame time.")
    end: UtcDatetime = Field(description="Last frame time.")
    publish: bool = Field(default=True, description="Write the estimates to the flow's topics.")

    @model_validator(mode="after")
    def _ordered(self) -> ReplayJob:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class ScoreJob(StrictModel):
    """A flow's published states scored against ground truth or another flow over a range."""

    kind: Literal["score"] = "score"
    flow: FlowName = Field(description="Flow to score.")
    against: str = Field(
        default="ground-truth",
        pattern=r"^(ground-truth|[a-z][a-z0-9-]{0,30})$",
        description="`ground-truth` (ground-truth.v1) or another flow's name.",
    )
    start: UtcDatetime
    end: UtcDatetime

    @model_validator(mode="after")
    def _ordered(self) -> ScoreJob:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if self.against == self.flow:
            raise ValueError("against names the flow itself; pick ground-truth or another flow")
        return self


class TrainJob(StrictModel):
    """Train the detector on a dataset (``depotwatch sim dataset`` output)."""

    kind: Literal["train"] = "train"
    data: str = Field(
        pattern=r"^(file:///|s3://)[^\s]+$",
        description="data.yaml of the dataset: file:///path (readable by the workers) or "
        "s3://bucket/prefix/data.yaml (the dataset folder under that prefix).",
    )
    device: Literal["gpu", "cpu"] = Field(
        default="gpu",
        description="gpu: waits for a worker with a GPU; cpu: any worker (slow).",
    )
    epochs: int = Field(default=30, ge=1, le=1000)
    imgsz: int = Field(default=640, ge=64, le=2048)
    batch: int = Field(default=16, ge=1, le=512)


JobRequest = Annotated[VideoJob | ReplayJob | ScoreJob | TrainJob, Field(discriminator="kind")]


def queue_of(request: VideoJob | ReplayJob | ScoreJob | TrainJob) -> str:
    """The engine queue a request goes to: its kind, so a worker takes only kinds it accepts;
    ``<kind>.gpu`` when it needs a GPU, so it waits for a worker that has one."""
    if isinstance(request, TrainJob) and request.device == "gpu":
        return f"{request.kind}.gpu"
    return request.kind


def queues_for(kinds: Sequence[str], gpu: bool) -> list[str]:
    """The queues a worker accepting ``kinds`` consumes (with a GPU: their GPU queues too)."""
    return [*kinds, *(f"{k}.gpu" for k in kinds if gpu)]


class JobResult(WireModel):
    """What a finished job produced: a summary and references to its S3 objects."""

    summary: dict[str, Any] = Field(default_factory=dict, description="Figures of the run.")
    artifacts: dict[str, str] = Field(
        default_factory=dict, description="Name -> s3://bucket/key of each result object."
    )


class JobStatus(Message):
    """A job as the job store and ``jobs.v1`` (compacted, key: job id) hold it."""

    TOPIC: ClassVar[str] = "jobs.v1"
    KEY_FIELD: ClassVar[str] = "id"

    id: str = Field(pattern=r"^[0-9a-f]{32}$", description="Job id.")
    kind: JobKind
    request: dict[str, Any] = Field(description="The request as accepted (see the job kinds).")
    queue: Queue = Field(
        description="Engine queue: the kind, or <kind>.gpu (waits for a worker with a GPU)."
    )
    state: JobState = "queued"
    progress_pct: float = Field(default=0.0, ge=0, le=100)
    message: str = Field(default="", description="What the job is doing now, in words.")
    created_at: UtcDatetime
    started_at: UtcDatetime | None = None
    finished_at: UtcDatetime | None = None
    updated_at: UtcDatetime
    attempts: int = Field(default=0, ge=0, description="Times a worker started it.")
    worker: str | None = Field(default=None, description="Worker running (or that ran) it.")
    checkpoint: dict[str, Any] | None = Field(
        default=None, description="Where a new attempt resumes (kind-specific)."
    )
    cancel_requested: bool = False
    result: JobResult | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        """succeeded, failed or cancelled."""
        return self.state in FINISHED_STATES

    def event_time(self) -> datetime | None:
        """Not an event in the depot."""
        return None


class GpuInfo(StrictModel):
    """A worker's GPU."""

    name: str
    memory_gb: float = Field(ge=0)


class WorkerInfo(StrictModel):
    """A ``depotwatch worker`` process as its last heartbeat described it."""

    name: str = Field(description="Celery node name, e.g. worker@host.")
    host: str
    pid: int
    cpu_cores: int = Field(ge=1)
    memory_gb: float = Field(ge=0)
    gpu: GpuInfo | None = None
    slots: int = Field(ge=1, description="Jobs it runs at once.")
    running: list[str] = Field(default_factory=list, description="Ids of the jobs it runs now.")
    kinds: list[JobKind] = Field(description="Job kinds it accepts.")
    queues: list[Queue]
    started_at: UtcDatetime
    heartbeat_at: UtcDatetime

    @property
    def free_slots(self) -> int:
        """Slots not running a job."""
        return max(0, self.slots - len(self.running))


class JobList(StrictModel):
    """A page of jobs, newest first."""

    jobs: list[JobStatus]
    total: int = Field(ge=0)


class VideoUpload(StrictModel):
    """A video stored by ``PUT /api/v1/videos/{name}``, ready to name in a video job."""

    source: str = Field(description="s3://bucket/key to put in a video job's `videos`.")
    size: int = Field(ge=1)
