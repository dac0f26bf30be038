"""``depotwatch replay`` against the real broker and S3, with a stand-in estimator core.

The detector needs trained weights, so the flow's handlers are replaced by a stub that places
one locomotive end per camera; everything else (frames.v1 by timestamp, images from S3,
publishing to the flow's topics, --score against ground-truth.v1) is the real command.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from schemas.estimates import PositionEstimate, TrackObservation
from schemas.frames import FrameRef
from schemas.ground_truth import GroundTruth, TrueLocomotive
from schemas.topics import topics_for
from services.evaluation.compare import read_range
from services.flows import replay
from services.runtime.frames import DecodedFrame, FrameOutcome
from services.runtime.kafka import MessageProducer, TopicAdmin
from services.runtime.settings import Settings
from services.runtime.storage import ObjectStore

REPO = Path(__file__).resolve().parents[2]
RAW_ENDS = {"cam-s1": ("head", 2.3), "cam-s2": ("tail", 18.67)}  # a TEM2 at 2.0 .. 18.97


def stub_handlers(flow: str) -> list[replay.Handler]:
    def place(frames: Sequence[DecodedFrame]) -> list[FrameOutcome]:
        out: list[FrameOutcome] = []
        for f in frames:
            kind, pos = RAW_ENDS[f.ref.camera_id]
            obs = TrackObservation(
                kind=kind,  # type: ignore[arg-type]
                floor_x_m=pos,
                floor_y_m=4.0,
                track_id="T1",
                position_m=pos,
                distance_to_track_m=0.0,
                confidence=0.9,
            )
            estimate = PositionEstimate(
                flow=flow,
                camera_id=f.ref.camera_id,
                frame=f.ref,
                estimator="stub/0",
                model_version="stub",
                estimated_at=f.ref.captured_at,
                observations=[obs],
            )
            out.append([estimate])
        return out

    return [place]


def test_replay_reruns_a_flow_over_stored_frames_and_scores_it(
    stack_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = f"r{uuid.uuid4().hex[:8]}"
    data = yaml.safe_load((REPO / "facility.yaml").read_text())
    data["flows"] = {
        flow: {
            "position_estimator": {"weights": "none.pt", "model_version": "stub"},
            "state_estimator": {},
        }
    }
    config = tmp_path / "facility.yaml"
    config.write_text(yaml.safe_dump(data))
    TopicAdmin(stack_settings.kafka).ensure(topics_for([flow]))
    store = ObjectStore(stack_settings.s3)
    producer = MessageProducer(stack_settings.kafka, client_id="test-replay")
    start = datetime.now(UTC) - timedelta(seconds=1)
    frames = 0
    try:
        for seq in range(3):
            # Frames 0.6 s apart in event time, as a camera at about 2 fps would send them: the
            # state estimator starts a locomotive once its ends have been seen for 1 s.
            at = start + timedelta(seconds=1 + 0.6 * seq)
            for camera in RAW_ENDS:
                image = np.full((72, 128, 3), 40 * seq, dtype=np.uint8)
                jpeg = cv2.imencode(".jpg", image)[1].tobytes()
                key = f"replay-test/{flow}/{camera}/{seq}.jpg"
                store.put(key, jpeg, "image/jpeg")
                ref = FrameRef(
                    camera_id=camera,
                    seq=seq,
                    captured_at=at,
                    bucket=store.bucket,
                    key=key,
                    width=128,
                    height=72,
                    size=len(jpeg),
                    sha256=hashlib.sha256(jpeg).hexdigest(),
                )
                producer.publish_and_wait(ref)
                frames += 1
            truth = GroundTruth(
                facility_id=data["facility_id"],
                scenario="replay-test",
                seed=0,
                tick=seq,
                at=at - timedelta(milliseconds=10),
                locomotives=[
                    TrueLocomotive(
                        locomotive_id="x",
                        track_id="T1",
                        head_m=2.0,
                        tail_m=18.97,
                        model="TEM2",
                        plate="TEM2-0001",
                    )
                ],
            )
            producer.publish_and_wait(truth)
    finally:
        producer.close(10)
    end = max(datetime.now(UTC), start + timedelta(seconds=3)) + timedelta(seconds=1)

    monkeypatch.setenv(
        "DEPOTWATCH_KAFKA__BOOTSTRAP_SERVERS", stack_settings.kafka.bootstrap_servers
    )
    monkeypatch.setenv("DEPOTWATCH_S3__ENDPOINT", stack_settings.s3.endpoint)
    monkeypatch.setenv("DEPOTWATCH_LOG_FORMAT", "console")
    monkeypatch.setattr(replay, "build_handlers", lambda path, f, settings: stub_handlers(f))
    result = CliRunner().invoke(
        replay.replay_command,
        [
            "--flow",
            flow,
            "--config",
            str(config),
            "--from",
            start.isoformat(),
            "--to",
            end.isoformat(),
            "--score",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"frames replayed:   {frames}" in result.output
    # The fused state, scored against the truth: the TEM2 is placed exactly.
    assert "head/tail difference median: 0.00 m, p95 0.00 m (" in result.output, result.output
    published = read_range(
        stack_settings.kafka,
        PositionEstimate.topic_name(flow),
        PositionEstimate,
        start,
        datetime.now(UTC) + timedelta(seconds=1),  # published now, not at capture time
    )
    assert sorted((p.camera_id, p.frame.seq) for p in published) == sorted(
        (c, s) for s in range(3) for c in RAW_ENDS
    )
