"""Frame selection of the estimator loop: live keeps the newest frame per camera."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import pytest

from schemas.frames import FrameRef
from services.runtime.frame_stream import frame_refs, select_frames
from services.runtime.frames import FrameDecodeError, decode_frame
from services.runtime.kafka import Received

AT = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def ref(camera_id: str, seq: int, data: bytes = b"x") -> FrameRef:
    return FrameRef(
        camera_id=camera_id,
        seq=seq,
        captured_at=AT + timedelta(seconds=seq),
        bucket="frames",
        key=f"{camera_id}/{seq}.jpg",
        width=64,
        height=48,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def received(camera_id: str, seq: int, offset: int) -> Received[FrameRef]:
    return Received(
        message=ref(camera_id, seq),
        topic="frames.v1",
        partition=0,
        offset=offset,
        key=camera_id.encode(),
        timestamp_ms=0,
        raw=cast(Any, None),
    )


def test_replay_keeps_every_frame_in_order() -> None:
    batch = [received("a", 1, 10), received("a", 2, 11), received("b", 1, 12)]
    selection = select_frames(batch, "replay", frame_refs().ref)
    assert selection.keep == batch
    assert selection.skipped == []


def test_live_keeps_the_newest_frame_of_each_camera() -> None:
    batch = [
        received("a", 1, 10),
        received("b", 7, 11),
        received("a", 3, 12),
        received("a", 2, 13),  # older frame arriving later (another capture restart): skipped
        received("c", 1, 14),
    ]
    selection = select_frames(batch, "live", frame_refs().ref)
    assert [(r.message.camera_id, r.message.seq) for r in selection.keep] == [
        ("b", 7),
        ("a", 3),
        ("c", 1),
    ]
    assert sorted(r.offset for r in selection.skipped) == [10, 13]


def test_decode_frame_checks_size_hash_and_image() -> None:
    import cv2

    ok, jpeg = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))
    assert ok
    data = jpeg.tobytes()
    frame = decode_frame(ref("a", 1, data), data)
    assert frame.image.shape == (48, 64, 3)
    with pytest.raises(FrameDecodeError, match="bytes, the reference says"):
        decode_frame(ref("a", 1, data), data[:-1])
    with pytest.raises(FrameDecodeError, match="does not match its sha256"):
        decode_frame(ref("a", 1, data), data[:-1] + b"\0")
    junk = b"\0" * 100
    with pytest.raises(FrameDecodeError, match="not a decodable image"):
        decode_frame(ref("a", 1, junk), junk)


def test_live_read_ahead_supersedes_older_frames_of_the_same_camera() -> None:
    from concurrent.futures import Future

    from services.runtime.frame_stream import FrameStream, _Polled

    current_refs = [received("a", 1, 10), received("b", 1, 11)]
    futures: list[Future[Any]] = [Future(), Future()]
    current = _Polled(current_refs, list(current_refs), [], list(futures))
    ahead_refs = [received("a", 2, 12)]
    ahead = _Polled(ahead_refs, list(ahead_refs), [], [Future()])
    FrameStream._skip_superseded(current, ahead, frame_refs().ref)
    assert [r.message.camera_id for r in current.keep] == ["b"]
    assert [r.offset for r in current.skipped] == [10]
    assert futures[0].cancelled()
    assert current.futures == [futures[1]]


@pytest.mark.parametrize(
    ("width", "height", "needed", "reduction"),
    [
        (1280, 720, None, 1),  # OCR wants every pixel
        (1280, 720, 640, 2),
        (1280, 720, 352, 2),  # 1280 / 4 = 320 < 352
        (1280, 720, 320, 4),
        (1280, 720, 1280, 1),
        (640, 480, 640, 1),
    ],
)
def test_decode_reduction_keeps_what_the_detector_needs(
    width: int, height: int, needed: int | None, reduction: int
) -> None:
    from services.runtime.frames import decode_reduction

    assert decode_reduction(width, height, needed) == reduction


def test_reduced_decode_reports_its_scale() -> None:
    import cv2

    ok, jpeg = cv2.imencode(".jpg", np.zeros((720, 1280, 3), np.uint8))
    assert ok
    data = jpeg.tobytes()
    frame = decode_frame(
        ref("a", 1, data).model_copy(update={"width": 1280, "height": 720}), data, reduction=2
    )
    assert frame.image.shape == (360, 640, 3)
    assert frame.scale == (2.0, 2.0)


def test_a_service_that_loses_its_broker_exits_with_one_line_and_status_3(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Field failure: estimators crashed with tracebacks on a broker outage."""
    from types import SimpleNamespace

    from services.runtime.frame_stream import BROKER_UNREACHABLE_EXIT, serve_frame_stream
    from services.runtime.kafka import ProduceError
    from services.runtime.settings import KafkaSettings, Settings
    from services.runtime.shutdown import ShutdownSignal

    def run(shutdown: ShutdownSignal) -> None:
        raise ProduceError("4 estimates not acknowledged within 30s")

    stream = SimpleNamespace(
        run=run,
        config=SimpleNamespace(flow="prod", stall_after_s=60.0, dependency_grace_s=60.0),
        consumer=SimpleNamespace(group_id="depotwatch.test.prod"),
        store=SimpleNamespace(ping=lambda: (True, "bucket present")),
        health=lambda: (True, "ok"),
        processed=0,
        skipped=0,
        rejected=0,
    )
    # A broker that does not exist: the lag monitor only logs that it cannot reach it.
    settings = Settings().model_copy(
        update={"kafka": KafkaSettings(bootstrap_servers="127.0.0.1:1"), "http_port": 0}
    )
    with pytest.raises(SystemExit) as exited:
        serve_frame_stream(cast(Any, stream), settings, ShutdownSignal())
    assert exited.value.code == BROKER_UNREACHABLE_EXIT
    assert "broker unreachable; exiting" in caplog.text


def test_live_skips_a_superseded_frame_only_once_it_is_late() -> None:
    """Field figure: at 8 cameras x 2 fps the estimators skipped 2-4% of the frames, each
    superseded by a frame of its camera 0.5 s newer that was already waiting, while the state
    stayed well inside its 1 s latency goal. A frame younger than ``skip_after_s`` is estimated
    beside the newer one; an older one is still skipped."""
    batch = [received("a", 1, 10), received("a", 2, 11), received("a", 3, 12)]
    now = AT + timedelta(seconds=3.5)
    selection = select_frames(batch, "live", frame_refs().ref, now, skip_after_s=2.0)
    assert [r.message.seq for r in selection.keep] == [2, 3]
    assert [r.message.seq for r in selection.skipped] == [1]
    everything = select_frames(batch, "live", frame_refs().ref, now, skip_after_s=0.0)
    assert [r.message.seq for r in everything.keep] == [3]


def test_live_read_ahead_supersedes_only_late_frames() -> None:
    from concurrent.futures import Future

    from services.runtime.frame_stream import FrameStream, _Polled

    current_refs = [received("a", 1, 10), received("b", 2, 11)]
    futures: list[Future[Any]] = [Future(), Future()]
    current = _Polled(current_refs, list(current_refs), [], list(futures))
    ahead_refs = [received("a", 3, 12), received("b", 3, 13)]
    ahead = _Polled(ahead_refs, list(ahead_refs), [], [Future(), Future()])
    now = AT + timedelta(seconds=3.5)
    FrameStream._skip_superseded(current, ahead, frame_refs().ref, now, skip_after_s=2.0)
    assert [r.message.camera_id for r in current.keep] == ["b"]  # 1.5 s old: still estimated
    assert [r.offset for r in current.skipped] == [10]  # 2.5 s old
    assert futures[0].cancelled()
    assert not futures[1].cancelled()
