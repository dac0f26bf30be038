"""The pure aggregator core: key naming, dedupe, camera activity, refs, sharding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.aggregator.ingest import (
    CameraActivity,
    DedupeWindow,
    frame_key,
    frame_ref,
    shard_of,
)
from services.runtime.frame_wire import FrameHeader

T0 = datetime(2026, 11, 21, 9, 5, 7, 89000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("captured_at", "expected"),
    [
        (T0, "frames/cam-s1/20261121/090507.089-42.jpg"),
        # A local timestamp is named by its UTC time.
        (
            T0.astimezone(timezone(timedelta(hours=-5))),
            "frames/cam-s1/20261121/090507.089-42.jpg",
        ),
        (
            datetime(2026, 1, 2, 23, 59, 59, 999999, tzinfo=UTC),
            "frames/cam-s1/20260102/235959.999-42.jpg",
        ),
    ],
)
def test_frame_key_names_camera_day_time_and_seq(captured_at: datetime, expected: str) -> None:
    assert frame_key("frames", "cam-s1", captured_at, 42) == expected


def test_frame_keys_sort_by_camera_then_capture_time() -> None:
    frames = [
        ("cam-b", T0 + timedelta(milliseconds=ms), seq)
        for seq, ms in enumerate([0, 1, 999, 1000, 86_400_000])
    ] + [("cam-a", T0 + timedelta(days=3), 99)]
    keys = [frame_key("frames", c, t, s) for c, t, s in frames]
    expected = sorted(frames, key=lambda f: (f[0], f[1]))
    assert sorted(keys) == [frame_key("frames", c, t, s) for c, t, s in expected]


def test_dedupe_window_stores_a_camera_seq_once() -> None:
    window = DedupeWindow(size=4)
    assert window.first_time("a", 1)
    assert not window.first_time("a", 1)
    assert window.first_time("b", 1)  # another camera's seq 1 is another frame


def test_dedupe_window_forgets_the_oldest_per_camera() -> None:
    window = DedupeWindow(size=3)
    for seq in range(4):
        assert window.first_time("a", seq)
    for seq in range(100):
        window.first_time("busy", seq)
    assert window.first_time("a", 0)  # fell out of a's window
    assert not window.first_time("a", 3)  # still remembered: busy did not push it out


def test_camera_activity_expected_cameras_are_silent_until_they_deliver() -> None:
    activity = CameraActivity(started=0.0, expected=["cam-1"])
    assert activity.silent(now=5.0, period_s=10.0) == []
    silent = activity.silent(now=11.0, period_s=10.0)
    assert [(s.camera_id, s.ever_seen) for s in silent] == [("cam-1", False)]
    assert activity.record("cam-1", 11.0) is True  # its first frame
    assert activity.silent(now=12.0, period_s=10.0) == []


def test_camera_activity_accepts_new_cameras_and_watches_them() -> None:
    activity = CameraActivity(started=0.0)
    assert activity.record("new-cam", 1.0) is True
    assert activity.record("new-cam", 2.0) is False
    assert activity.cameras() == ["new-cam"]
    assert activity.silent(now=11.0, period_s=10.0) == []
    (silence,) = activity.silent(now=12.5, period_s=10.0)
    assert silence.camera_id == "new-cam"
    assert silence.silent_s == pytest.approx(10.5)


def test_cameras_taken_out_of_the_config_are_forgotten() -> None:
    activity = CameraActivity(started=0.0, expected=["old", "kept"])
    activity.record("old", 1.0)
    activity.record("kept", 1.0)
    activity.set_expected(["kept", "added"])
    assert activity.cameras() == ["added", "kept"]
    silent = activity.silent(now=20.0, period_s=10.0)
    assert [s.camera_id for s in silent] == ["added", "kept"]


def test_frame_ref_carries_header_and_stored_object_fields() -> None:
    h = FrameHeader(camera_id="cam-s1", seq=5, captured_at=T0, width=1280, height=720, reconnects=2)
    stored = T0 + timedelta(seconds=0.2)
    ref = frame_ref(h, "depotwatch-frames", "frames/k.jpg", 1234, "ab" * 32, stored)
    assert ref.model_dump(exclude={"schema_version", "content_type"}) == {
        "camera_id": "cam-s1",
        "seq": 5,
        "captured_at": T0,
        "bucket": "depotwatch-frames",
        "key": "frames/k.jpg",
        "width": 1280,
        "height": 720,
        "size": 1234,
        "sha256": "ab" * 32,
        "stored_at": stored,
        "reconnects": 2,  # the capture reopened its stream twice: the API shows it
    }
    assert ref.kafka_key() == b"cam-s1"


def test_shard_of_is_stable_and_spreads_cameras() -> None:
    cams = [f"cam-{i}" for i in range(64)]
    shards = [shard_of(c, 4) for c in cams]
    assert shards == [shard_of(c, 4) for c in cams]
    assert set(shards) == {0, 1, 2, 3}
