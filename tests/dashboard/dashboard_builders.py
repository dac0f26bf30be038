"""Hand-built messages for dashboard tests (plain values)."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schemas.estimates import BoundingBox, Detection, PositionEstimate
from schemas.facility import FacilityConfig, load_facility
from schemas.facility_state import CameraHealth, FacilityState, LocomotiveState, TrackState
from schemas.frames import FrameRef
from schemas.ground_truth import GroundTruth, TrueLocomotive
from services.runtime.settings import Settings

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def facility() -> FacilityConfig:
    """The example depot of the repository."""
    return load_facility(REPO / "facility.yaml")


def loco(
    lid: str, head: float, tail: float, plate: str | None = "TEM2-0001", model: str | None = "TEM2"
) -> LocomotiveState:
    """A locomotive state seen by one camera."""
    return LocomotiveState(
        locomotive_id=lid,
        head_m=head,
        tail_m=tail,
        model=model,
        plate=plate,
        confidence=0.9,
        cameras=["cam-s1"],
        last_seen=T0,
    )


def state(
    flow: str, at_s: float = 0.0, facility_id: str = "depot-north", **tracks: list[LocomotiveState]
) -> FacilityState:
    """A facility state of depot-north with the given locomotives per track."""
    return FacilityState(
        facility_id=facility_id,
        flow=flow,
        as_of=T0 + timedelta(seconds=at_s),
        tracks=[TrackState(track_id=t, locomotives=locos) for t, locos in tracks.items()],
        cameras=[
            CameraHealth(camera_id="cam-s1", status="ok", last_frame_at=T0),
            CameraHealth(camera_id="cam-n4", status="stale", last_frame_at=T0),
        ],
    )


def truth(*locos: TrueLocomotive, tick: int = 1, facility_id: str = "depot-north") -> GroundTruth:
    """Ground truth of depot-north."""
    return GroundTruth(
        facility_id=facility_id,
        scenario="test",
        seed=1,
        tick=tick,
        at=T0,
        locomotives=list(locos),
    )


def true_loco(
    lid: str, track: str, head: float, tail: float, plate: str, model: str
) -> TrueLocomotive:
    """A locomotive as the simulator placed it."""
    return TrueLocomotive(
        locomotive_id=lid, track_id=track, head_m=head, tail_m=tail, model=model, plate=plate
    )


def frame(camera: str, seq: int, at_s: float = 0.0, size: int = 1000) -> FrameRef:
    """A stored frame reference."""
    key = f"{camera}/{seq:08d}.jpg"
    return FrameRef(
        camera_id=camera,
        seq=seq,
        captured_at=T0 + timedelta(seconds=at_s),
        bucket="depotwatch-frames",
        key=key,
        width=1280,
        height=720,
        size=size,
        sha256=hashlib.sha256(key.encode()).hexdigest(),
    )


def positions(camera: str, seq: int, flow: str = "prod", at_s: float = 0.0) -> PositionEstimate:
    """A position estimate with one head box."""
    f = frame(camera, seq, at_s)
    return PositionEstimate(
        flow=flow,
        camera_id=camera,
        frame=f,
        estimator="test/0",
        model_version="test",
        estimated_at=f.captured_at,
        detections=[
            Detection(cls="head", bbox=BoundingBox(x1=100, y1=200, x2=300, y2=400), confidence=0.8)
        ],
    )


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment that points a depotwatch subprocess at ``settings``' Kafka and S3."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPOTWATCH_")}
    env.update(
        {
            "DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "DEPOTWATCH_S3__ENDPOINT": settings.s3.endpoint,
            "DEPOTWATCH_S3__ACCESS_KEY": settings.s3.access_key.get_secret_value(),
            "DEPOTWATCH_S3__SECRET_KEY": settings.s3.secret_key.get_secret_value(),
            "DEPOTWATCH_S3__BUCKET": settings.s3.bucket,
            "DEPOTWATCH_LOG_FORMAT": "json",
        }
    )
    env.update(extra)
    return env
