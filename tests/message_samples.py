"""One valid instance of every message model, for adapter tests that need real messages."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from schemas import (
    BoundingBox,
    CameraHealth,
    DeadLetter,
    Detection,
    FacilityState,
    FrameRef,
    GroundTruth,
    IdentityEstimate,
    LocomotiveState,
    Message,
    PositionEstimate,
    TrackObservation,
    TrackState,
    TrueLocomotive,
)
from schemas.jobs import JobResult, JobStatus

AT = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def frame_ref(seq: int = 1, camera_id: str = "cam-s1") -> FrameRef:
    """A FrameRef whose sha256 is that of its key (the bytes are never fetched here)."""
    key = f"{camera_id}/{seq:08d}.jpg"
    return FrameRef(
        camera_id=camera_id,
        seq=seq,
        captured_at=AT + timedelta(seconds=seq),
        bucket="depotwatch-frames",
        key=key,
        width=1280,
        height=720,
        size=1000 + seq,
        sha256=hashlib.sha256(key.encode()).hexdigest(),
    )


def every_message(flow: str = "prod") -> list[Message]:
    """One instance of each message model in :data:`schemas.topics.MESSAGE_MODELS`."""
    frame = frame_ref()
    head = Detection(cls="head", bbox=BoundingBox(x1=10, y1=20, x2=110, y2=220), confidence=0.9)
    plate = Detection(cls="plate", bbox=BoundingBox(x1=40, y1=50, x2=90, y2=70), confidence=0.8)
    on_track = TrackObservation(
        kind="head",
        floor_x_m=12.5,
        floor_y_m=4.1,
        track_id="T1",
        position_m=12.5,
        distance_to_track_m=0.1,
        confidence=0.9,
    )
    return [
        frame,
        PositionEstimate(
            flow=flow,
            camera_id=frame.camera_id,
            frame=frame,
            estimator="position-estimator/0.1",
            model_version="test",
            estimated_at=AT,
            detections=[head],
            observations=[on_track],
        ),
        IdentityEstimate(
            flow=flow,
            camera_id=frame.camera_id,
            frame=frame,
            estimator="plate-ocr/0.1",
            estimated_at=AT,
            plate_text="2TE116-1234",
            plate_confidence=0.97,
            locomotive_model="2TE116",
            model_confidence=0.8,
            plate_box=plate,
            observation=on_track,
        ),
        FacilityState(
            facility_id="depot-1",
            flow=flow,
            as_of=AT,
            tracks=[
                TrackState(
                    track_id="T1",
                    locomotives=[
                        LocomotiveState(
                            locomotive_id="loco-1",
                            head_m=12.5,
                            tail_m=33.4,
                            model="2TE116",
                            plate="2TE116-1234",
                            confidence=0.9,
                            cameras=["cam-s1", "cam-s2"],
                            last_seen=AT,
                        )
                    ],
                )
            ],
            cameras=[CameraHealth(camera_id="cam-s1", status="ok", last_frame_at=AT)],
        ),
        GroundTruth(
            facility_id="depot-1",
            scenario="arrivals",
            seed=7,
            tick=3,
            at=AT,
            locomotives=[
                TrueLocomotive(
                    locomotive_id="loco-1",
                    track_id="T1",
                    head_m=12.5,
                    tail_m=33.4,
                    model="2TE116",
                    plate="2TE116-1234",
                )
            ],
        ),
        DeadLetter(
            source_topic="frames.v1",
            source_partition=0,
            source_offset=17,
            source_key_b64=DeadLetter.b64(b"cam-s1"),
            payload_b64=DeadLetter.b64(b"{not json") or "",
            reason="Invalid JSON",
            service="test",
            dead_lettered_at=AT,
        ),
        JobStatus(
            id="0123456789abcdef0123456789abcdef",
            kind="video",
            request={"kind": "video", "flow": flow, "videos": {"cam-s1": "s3://jobs/in.mp4"}},
            queue="video",
            state="succeeded",
            progress_pct=100.0,
            created_at=AT,
            updated_at=AT,
            attempts=1,
            worker="worker@host",
            result=JobResult(
                summary={"frames": 10}, artifacts={"timeline": "s3://jobs/x/timeline.jsonl"}
            ),
        ),
    ]
