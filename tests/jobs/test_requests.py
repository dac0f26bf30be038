"""Job requests checked against the facility and their inputs (the API's 422s), and tracks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from schemas.estimates import BoundingBox, Detection
from schemas.facility import load_facility
from schemas.jobs import (
    JobRequest,
    ReplayJob,
    ScoreJob,
    TrainJob,
    VideoJob,
    queue_of,
    queues_for,
)
from services.jobs.requests import request_problems
from services.jobs.tracks import CameraTracker

FACILITY = load_facility(Path(__file__).resolve().parents[2] / "facility.yaml")
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _nothing_in_s3(bucket: str, key: str) -> bool:
    return False


def test_a_good_video_job_has_no_problems(tmp_path: Path) -> None:
    video = tmp_path / "n1.mp4"
    video.write_bytes(b"x")
    request = VideoJob(videos={"cam-n1": f"file://{video}"})
    assert request_problems(request, FACILITY, _nothing_in_s3) == []


def test_video_job_problems_name_the_field_and_the_fix(tmp_path: Path) -> None:
    request = VideoJob(
        flow="nightly",
        videos={
            "cam-x9": f"file://{tmp_path}/x.mp4",
            "cam-n1": f"file://{tmp_path}/missing.mp4",
            "cam-n2": "s3://depotwatch-jobs/uploads/none.mp4",
        },
    )
    problems = request_problems(request, FACILITY, _nothing_in_s3)
    assert problems[0].startswith("flow: no flow 'nightly' in the facility; use one of prod")
    assert problems[1].startswith("videos.cam-x9: no camera 'cam-x9' in the facility")
    assert "POST /api/v1/cameras" in problems[1]
    assert problems[2].startswith(f"videos.cam-n1: {tmp_path}/missing.mp4 does not exist here")
    assert problems[3].startswith("videos.cam-n2: s3://depotwatch-jobs/uploads/none.mp4 does not")
    assert len(problems) == 4


def test_replay_score_and_train_problems() -> None:
    replay = ReplayJob(flow="qa", start=T0, end=T0 + timedelta(minutes=1))
    assert request_problems(replay, FACILITY, _nothing_in_s3)[0].startswith("flow: no flow 'qa'")
    score = ScoreJob(flow="prod", against="qa", start=T0, end=T0 + timedelta(minutes=1))
    assert request_problems(score, FACILITY, _nothing_in_s3)[0].startswith("against: no flow 'qa'")
    train = TrainJob(data="s3://datasets/depot/data.yaml")
    assert request_problems(train, FACILITY, _nothing_in_s3)[0].startswith(
        "data: s3://datasets/depot/data.yaml does not exist"
    )
    assert (
        request_problems(train, FACILITY, lambda b, k: (b, k) == ("datasets", "depot/data.yaml"))
        == []
    )


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"kind": "video", "videos": {}}, "videos"),
        ({"kind": "video", "videos": {"cam-n1": "http://x/y.mp4"}}, "videos"),
        ({"kind": "video", "videos": {"cam-n1": "file:///v.mp4"}, "fps": 0}, "fps"),
        (
            {
                "kind": "replay",
                "flow": "prod",
                "start": "2026-12-03T12:00:00Z",
                "end": "2026-12-03T11:00:00Z",
            },
            "end must be after start",
        ),
        (
            {
                "kind": "score",
                "flow": "prod",
                "against": "prod",
                "start": "2026-12-03T12:00:00Z",
                "end": "2026-12-03T13:00:00Z",
            },
            "against names the flow itself",
        ),
        ({"kind": "sweep"}, "kind"),
    ],
)
def test_malformed_requests_are_refused(body: dict, where: str) -> None:
    with pytest.raises(ValidationError, match=where):
        TypeAdapter(JobRequest).validate_python(body)


def test_jobs_go_to_their_kinds_queue_and_gpu_training_to_a_gpu_queue() -> None:
    assert queue_of(TrainJob(data="file:///d.yaml")) == "train.gpu"
    assert queue_of(TrainJob(data="file:///d.yaml", device="cpu")) == "train"
    assert queue_of(VideoJob(videos={"cam-n1": "file:///v.mp4"})) == "video"
    # A worker takes only the kinds it accepts, GPU jobs only with a GPU.
    assert queues_for(["video", "train"], gpu=False) == ["video", "train"]
    assert queues_for(["train"], gpu=True) == ["train", "train.gpu"]


def _box(x: float, cls: str = "head", conf: float = 0.9) -> Detection:
    return Detection(cls=cls, bbox=BoundingBox(x1=x, y1=100, x2=x + 60, y2=180), confidence=conf)


def test_a_moving_box_keeps_its_track_id_and_two_boxes_get_two() -> None:
    tracker = CameraTracker("cam-n1")
    for seq in range(8):
        tracker.update(seq, T0 + timedelta(seconds=seq), [_box(100 + 8 * seq), _box(600, "tail")])
    tracks = sorted(tracker.tracks.values(), key=lambda t: t.cls)
    assert [t.cls for t in tracks] == ["head", "tail"]
    head = tracks[0]
    assert len(head.frames) >= 6
    assert head.frames[-1]["bbox"][0] == pytest.approx(156, abs=3)
    doc = head.as_dict()
    assert doc["camera_id"] == "cam-n1"
    assert set(doc["frames"][0]) == {"seq", "at", "bbox", "confidence"}
