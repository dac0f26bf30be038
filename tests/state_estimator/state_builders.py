"""Hand-built estimates for state-estimator tests (plain values, no detector)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schemas.estimates import IdentityEstimate, PositionEstimate, TrackObservation
from schemas.frames import FrameRef

FACILITY = Path(__file__).resolve().parents[2] / "facility.yaml"
T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
OFFSET = 0.3  # the detector's inward label offset the fusion corrects for


def frame(camera: str, seq: int, at_s: float) -> FrameRef:
    """A FrameRef of ``camera`` captured ``at_s`` seconds after T0."""
    key = f"{camera}/{seq:08d}.jpg"
    return FrameRef(
        camera_id=camera,
        seq=seq,
        captured_at=T0 + timedelta(seconds=at_s),
        bucket="depotwatch-frames",
        key=key,
        width=1280,
        height=720,
        size=1000,
        sha256=hashlib.sha256(key.encode()).hexdigest(),
    )


def end(kind: str, track: str, position_m: float, confidence: float = 0.9) -> TrackObservation:
    """A head or tail observation placed on a track."""
    return TrackObservation(
        kind=kind,  # type: ignore[arg-type]
        floor_x_m=position_m,
        floor_y_m=0.0,
        track_id=track,
        position_m=position_m,
        distance_to_track_m=0.1,
        confidence=confidence,
    )


def position(
    camera: str, seq: int, at_s: float, *observations: TrackObservation, flow: str = "prod"
) -> PositionEstimate:
    """A position estimate of one frame."""
    f = frame(camera, seq, at_s)
    return PositionEstimate(
        flow=flow,
        camera_id=camera,
        frame=f,
        estimator="test/0",
        model_version="test",
        estimated_at=f.captured_at,
        observations=list(observations),
    )


def identity(
    camera: str,
    seq: int,
    at_s: float,
    track: str,
    position_m: float,
    plate: str,
    model: str | None = None,
    flow: str = "prod",
) -> IdentityEstimate:
    """A plate reading placed on a track."""
    f = frame(camera, seq, at_s)
    return IdentityEstimate(
        flow=flow,
        camera_id=camera,
        frame=f,
        estimator="test/0",
        estimated_at=f.captured_at,
        plate_text=plate,
        plate_confidence=0.95,
        locomotive_model=model,
        model_confidence=0.9 if model else 0.0,
        observation=TrackObservation(
            kind="plate",
            floor_x_m=position_m,
            floor_y_m=0.0,
            track_id=track,
            position_m=position_m,
            distance_to_track_m=0.1,
            confidence=0.9,
        ),
    )
