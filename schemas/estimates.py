"""Per-camera estimates: ``positions.<flow>.v1`` and ``identities.<flow>.v1``."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from schemas.base import FlowName, Identifier, Message, UtcDatetime, WireModel
from schemas.frames import FrameRef

DetectionClass = Literal["head", "tail", "plate"]
"""What the detector finds: the cab (head) end, the coupler (tail) end, the number plate."""


MAX_PIXEL = 65536.0
"""Box corners beyond this many pixels from the origin are corrupt (frames are at most 16384
pixels a side; a detector's box may reach a little outside its image)."""


class BoundingBox(WireModel):
    """Axis-aligned box in image pixels, (x1, y1) top-left, (x2, y2) bottom-right."""

    x1: float = Field(ge=-MAX_PIXEL, le=MAX_PIXEL, allow_inf_nan=False, description="Left edge.")
    y1: float = Field(ge=-MAX_PIXEL, le=MAX_PIXEL, allow_inf_nan=False, description="Top edge.")
    x2: float = Field(ge=-MAX_PIXEL, le=MAX_PIXEL, allow_inf_nan=False, description="Right edge.")
    y2: float = Field(ge=-MAX_PIXEL, le=MAX_PIXEL, allow_inf_nan=False, description="Bottom edge.")

    @model_validator(mode="after")
    def _ordered(self) -> BoundingBox:
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise ValueError("box corners are swapped: need x1 <= x2 and y1 <= y2")
        return self


class Detection(WireModel):
    """One detector output."""

    cls: DetectionClass = Field(description="Detected class.")
    bbox: BoundingBox = Field(description="Box in image pixels.")
    confidence: float = Field(ge=0.0, le=1.0, description="Detector confidence.")


class TrackObservation(WireModel):
    """A locomotive end (or plate) placed on the facility floor and, if close enough, on a track."""

    kind: DetectionClass = Field(description="Which part of the locomotive was placed.")
    floor_x_m: float = Field(description="Facility x of the floor contact point, metres.")
    floor_y_m: float = Field(description="Facility y of the floor contact point, metres.")
    track_id: Identifier | None = Field(
        default=None, description="Nearest track within tolerance, or null when off track."
    )
    position_m: float | None = Field(
        default=None, description="Arc length along the track polyline, metres; null off track."
    )
    distance_to_track_m: float | None = Field(
        default=None, ge=0.0, description="Distance from the floor point to the track line."
    )
    confidence: float = Field(ge=0.0, le=1.0, description="Confidence of the detection behind it.")

    @model_validator(mode="after")
    def _track_and_position_together(self) -> TrackObservation:
        if (self.track_id is None) != (self.position_m is None):
            raise ValueError("track_id and position_m must both be set or both be null")
        return self


class PositionEstimate(Message):
    """Head/tail detections of one frame and where they stand on the tracks."""

    TOPIC: ClassVar[str] = "positions.{flow}.v1"
    KEY_FIELD: ClassVar[str] = "camera_id"

    flow: FlowName = Field(description="Flow that produced the estimate (prod, dev, ...).")
    camera_id: Identifier = Field(description="Camera of the frame (the Kafka key).")
    frame: FrameRef = Field(description="The frame this estimate is about.")
    estimator: str = Field(description="Estimator name and version, e.g. position-estimator/0.1.")
    model_version: str = Field(description="Version of the detector weights.")
    estimated_at: UtcDatetime = Field(description="When the estimate was made (UTC).")
    detections: list[Detection] = Field(default_factory=list, description="Raw detections.")
    observations: list[TrackObservation] = Field(
        default_factory=list, description="Head/tail detections mapped onto the floor and tracks."
    )

    def event_time(self) -> datetime:
        """The capture time of the frame it is about."""
        return self.frame.captured_at


class IdentityEstimate(Message):
    """Plate text and locomotive model read from one frame; unreadable says why, never guesses."""

    TOPIC: ClassVar[str] = "identities.{flow}.v1"
    KEY_FIELD: ClassVar[str] = "camera_id"

    flow: FlowName = Field(description="Flow that produced the estimate.")
    camera_id: Identifier = Field(description="Camera of the frame (the Kafka key).")
    frame: FrameRef = Field(description="The frame this estimate is about.")
    estimator: str = Field(description="Estimator name and version.")
    estimated_at: UtcDatetime = Field(description="When the estimate was made (UTC).")
    plate_text: str | None = Field(
        default=None, description="Normalised plate text, e.g. 2TE116-1234; null if unreadable."
    )
    plate_confidence: float = Field(default=0.0, ge=0.0, le=1.0, description="OCR confidence.")
    unreadable_reason: str | None = Field(
        default=None, description="Why no plate text is given (no plate, blurred, no pattern)."
    )
    locomotive_model: str | None = Field(default=None, description="Recognised model, e.g. TEM2.")
    model_confidence: float = Field(default=0.0, ge=0.0, le=1.0, description="Model confidence.")
    plate_box: Detection | None = Field(default=None, description="The plate detection used.")
    observation: TrackObservation | None = Field(
        default=None, description="Where the plate stands on the floor/track, when placed."
    )

    @model_validator(mode="after")
    def _text_or_reason(self) -> IdentityEstimate:
        if self.plate_text is None and not self.unreadable_reason:
            raise ValueError("an estimate without plate_text must give unreadable_reason")
        return self

    def event_time(self) -> datetime:
        """The capture time of the frame it is about."""
        return self.frame.captured_at
