"""``facility-state.<flow>.v1``: the live answer dashboards consume (compacted topic)."""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from schemas.base import FlowName, Identifier, Message, UtcDatetime, WireModel


class LocomotiveState(WireModel):
    """One locomotive standing on a track."""

    locomotive_id: str = Field(description="Stable id the state estimator keeps for it.")
    head_m: float = Field(description="Position of the cab (head) end along the track, metres.")
    tail_m: float = Field(description="Position of the coupler (tail) end along the track, metres.")
    model: str | None = Field(default=None, description="Locomotive model, null if not known yet.")
    plate: str | None = Field(default=None, description="Number plate, null if not read yet.")
    confidence: float = Field(ge=0.0, le=1.0, description="Confidence in this locomotive's state.")
    cameras: list[Identifier] = Field(default_factory=list, description="Cameras that saw it.")
    last_seen: UtcDatetime = Field(description="Event time of the latest estimate about it.")
    stale: bool = Field(default=False, description="True when the cameras that saw it are silent.")


class TrackState(WireModel):
    """The locomotives on one track, ordered by position."""

    track_id: Identifier = Field(description="Track id from the facility config.")
    locomotives: list[LocomotiveState] = Field(default_factory=list, description="On this track.")


CameraStatus = Literal["ok", "stale", "disabled"]


class CameraHealth(WireModel):
    """Whether a camera is still contributing."""

    camera_id: Identifier = Field(description="Camera id.")
    status: CameraStatus = Field(description="ok, stale (silent), or disabled in config.")
    last_frame_at: UtcDatetime | None = Field(default=None, description="Latest frame event time.")
    calibrated: bool = Field(
        default=True,
        description="False for a browser camera without calibration: its detections are "
        "shown in the web app but not placed on tracks, so it adds nothing to this state.",
    )


class UpdateTimes(WireModel):
    """When the estimate behind one "change" update passed each stage: that update's latency,
    broken down. The record's Kafka timestamp is when the update was published."""

    kind: Literal["position", "identity"] = Field(description="Which estimate caused it.")
    camera_id: Identifier = Field(description="Camera of the frame.")
    captured_at: UtcDatetime = Field(description="Capture of the frame.")
    stored_at: UtcDatetime | None = Field(
        default=None, description="The aggregator had the frame stored (null if not known)."
    )
    estimated_at: UtcDatetime = Field(description="The estimator made its estimate.")
    routed_at: UtcDatetime | None = Field(
        default=None, description="The state estimator took it in (forwarded to fusion)."
    )
    fused_at: UtcDatetime = Field(description="Fusion applied it and rendered this state.")

    def stages(self, published_at: datetime | None = None, clamp: bool = True) -> dict[str, float]:
        """Seconds spent in each stage, in pipeline order (a stage whose ends are not both
        known is left out; clocks of different hosts may disagree, so a stage is at least 0
        unless ``clamp`` is false: then a negative stage shows by how much they disagree):
        ``ingest`` capture -> stored (capture, ZeroMQ, aggregator, S3 put), ``estimate`` stored
        -> estimated (frames.v1, estimator queue, fetch, inference; for an identity also the
        position estimator and its topic), ``deliver`` estimated -> taken in by the state
        estimator (the estimator's publish, the broker, the consumer), ``fuse`` -> fused (mostly
        the state estimator's internal topic; fusion itself is about a millisecond),
        ``publish`` fused -> appended to the output topic by this process's producer."""
        points = [
            ("captured", self.captured_at),
            ("ingest", self.stored_at),
            ("estimate", self.estimated_at),
            ("deliver", self.routed_at),
            ("fuse", self.fused_at),
            ("publish", published_at),
        ]
        out: dict[str, float] = {}
        for (_, start), (name, end) in pairwise(points):
            if start is not None and end is not None:
                seconds = (end - start).total_seconds()
                out[name] = max(0.0, seconds) if clamp else seconds
        return out


class FacilityState(Message):
    """Which locomotives are where, per track, as one flow sees it."""

    TOPIC: ClassVar[str] = "facility-state.{flow}.v1"
    KEY_FIELD: ClassVar[str] = "facility_id"
    SCHEMA_VERSION: ClassVar[int] = 3
    """2: ``latency`` (when a change's estimate passed each stage) added; 3: cameras'
    ``calibrated`` added."""

    facility_id: Identifier = Field(description="Facility id (the Kafka key; topic is compacted).")
    flow: FlowName = Field(description="Flow that produced this state.")
    as_of: UtcDatetime = Field(description="Event time this state describes.")
    tracks: list[TrackState] = Field(default_factory=list, description="Every configured track.")
    cameras: list[CameraHealth] = Field(default_factory=list, description="Camera health.")
    latency: UpdateTimes | None = Field(
        default=None,
        description="On a change: when its estimate passed each stage (null on heartbeats).",
    )

    @model_validator(mode="after")
    def _unique_tracks(self) -> FacilityState:
        ids = [t.track_id for t in self.tracks]
        if len(ids) != len(set(ids)):
            raise ValueError("a track appears twice in tracks")
        return self

    @property
    def locomotive_count(self) -> int:
        """Number of locomotives in the facility."""
        return sum(len(t.locomotives) for t in self.tracks)
