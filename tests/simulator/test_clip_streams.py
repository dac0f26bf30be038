"""Cameras served over RTSP from pre-encoded clips: read once, paced, looped, only packetised."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from services.simulator.clips import ClipPlayer, ClipStreams, EncodedClip, read_clip, write_h264
from tests.fakes import Clock
from tests.simulator.test_rtsp import needs_gst

W, H = 160, 96


def bar_frames(n: int) -> list[np.ndarray]:
    """Frame i has a white bar 4 * (i + 1) pixels wide: which frame a picture is can be read
    back from a decoded image, even after lossy encoding."""
    frames = []
    for i in range(n):
        image = np.zeros((H, W, 3), np.uint8)
        image[:, : 4 * (i + 1)] = 255
        frames.append(image)
    return frames


def bar_index(image: np.ndarray, row: int = H // 2) -> int:
    """The frame number a decoded bar picture shows (read along one pixel row)."""
    return round(int((image[row, :, 1] > 128).sum()) / 4) - 1


def clip(units: int, fps: float) -> EncodedClip:
    return EncodedClip(Path("x.mp4"), fps, W, H, tuple(bytes([i]) for i in range(units)), (0,))


def test_the_player_paces_each_clip_at_its_frame_rate_and_loops() -> None:
    clock = Clock()
    pushed: list[tuple[float, str, int]] = []
    player = ClipPlayer(
        lambda cam, unit: pushed.append((round(clock.now - 1000.0, 3), cam, unit[0])),
        {"a": clip(3, 10.0), "b": clip(2, 4.0)},
        clock=clock,
        sleep=clock.advance,
    )
    assert player.run(lambda: False, max_units=10) == 10
    a = [(t, u) for t, cam, u in pushed if cam == "a"]
    b = [(t, u) for t, cam, u in pushed if cam == "b"]
    assert a == [(0.0, 0), (0.1, 1), (0.2, 2), (0.3, 0), (0.4, 1), (0.5, 2), (0.6, 0)]
    assert b == [(0.0, 0), (0.25, 1), (0.5, 0)]
    assert [t for t, _, _ in pushed] == sorted(t for t, _, _ in pushed)


def test_a_player_that_fell_behind_carries_on_without_a_burst() -> None:
    clock = Clock()
    times: list[float] = []

    def push(cam: str, unit: bytes) -> None:
        times.append(clock.now)
        if len(times) == 3:
            clock.now += 5.0  # the process was stopped for 5 s

    player = ClipPlayer(push, {"a": clip(50, 10.0)}, clock=clock, sleep=clock.advance)
    player.run(lambda: False, max_units=8)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert gaps == [0.1, 0.1, 5.0, 0.1, 0.1, 0.1, 0.1]  # no catch-up burst after the stall
    assert player.resyncs == 1


def test_the_player_reports_which_unit_of_the_clip_went_out() -> None:
    clock = Clock()
    seen: list[tuple[str, int]] = []
    player = ClipPlayer(
        lambda cam, unit: None,
        {"a": clip(2, 1.0)},
        on_unit=lambda cam, i: seen.append((cam, i)),
        clock=clock,
        sleep=clock.advance,
    )
    player.run(lambda: False, max_units=5)
    assert seen == [("a", 0), ("a", 1), ("a", 0), ("a", 1), ("a", 0)]


def test_a_clip_is_read_as_annex_b_units_starting_with_a_keyframe(tmp_path: Path) -> None:
    path = tmp_path / "c.mp4"
    write_h264(bar_frames(25), path, fps=10)
    encoded = read_clip(path)
    assert (encoded.fps, encoded.width, encoded.height) == (10.0, W, H)
    assert len(encoded.units) == 25
    assert encoded.keyframes == (0, 20)
    assert encoded.seconds == 2.5
    for i in encoded.keyframes:  # SPS (type 7) and PPS (8) come with every keyframe
        nal_types = {b & 0x1F for b in _nal_headers(encoded.units[i])}
        assert {7, 8, 5} <= nal_types
    assert all(
        u.startswith(b"\x00\x00\x00\x01") or u.startswith(b"\x00\x00\x01") for u in encoded.units
    )


def _nal_headers(unit: bytes) -> list[int]:
    out, i = [], 0
    while (i := unit.find(b"\x00\x00\x01", i)) >= 0:
        i += 3
        if i < len(unit):
            out.append(unit[i])
    return out


def test_files_that_are_not_camera_clips_are_refused_with_the_fix(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError, match="cannot read clip"):
        read_clip(garbage)
    mpeg4 = tmp_path / "mpeg4.mp4"
    writer = cv2.VideoWriter(str(mpeg4), cv2.VideoWriter.fourcc(*"mp4v"), 10, (W, H))
    for f in bar_frames(5):
        writer.write(f)
    writer.release()
    with pytest.raises(ValueError, match=r"not H\.264"):
        read_clip(mpeg4)
    bframes = tmp_path / "bframes.mp4"
    with av.open(str(bframes), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"bf": "3"}
        for f in bar_frames(20):
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with pytest.raises(ValueError, match=r"B-frames.*sim clip"):
        read_clip(bframes)


@pytest.mark.integration
@needs_gst
def test_opencv_reads_a_clip_served_over_rtsp_in_order_and_looping(tmp_path: Path) -> None:
    path = tmp_path / "bars.mp4"
    write_h264(bar_frames(30), path, fps=15, keyframe_every_s=1.0)
    with ClipStreams({"cam-a": path, "cam-b": path}) as streams:
        cap = cv2.VideoCapture(streams.url("cam-a"), cv2.CAP_FFMPEG)
        assert cap.isOpened(), f"OpenCV could not open {streams.url('cam-a')}"
        shown: list[int] = []
        deadline = time.monotonic() + 30
        while len(shown) < 40 and time.monotonic() < deadline:
            ok, image = cap.read()
            if ok:
                assert image.shape == (H, W, 3)
                shown.append(bar_index(image))
        cap.release()
        assert streams.alive
        pushed = streams.player.pushed if streams.player else 0
    assert len(shown) == 40, shown
    # Frame after frame as encoded, wrapping from the last (29) to the first (0).
    steps = {(b - a) % 30 for a, b in itertools.pairwise(shown)}
    assert steps == {1}, shown
    assert 29 in shown
    assert 0 in shown[shown.index(29) :]
    assert pushed >= 2 * 40  # both streams were fed (nobody watched cam-b: drained anyway)
    assert not streams.alive


@pytest.mark.integration
@needs_gst
def test_pictures_coded_as_several_slices_arrive_whole(tmp_path: Path) -> None:
    """Field failure (session 37): clips whose pictures are two slices (as x264 and many
    cameras code 720p) decoded with the top half frozen, hiding the far track, because the
    payloader put SPS/PPS before each slice and the client took each slice for a picture."""
    path = tmp_path / "bars.mp4"
    write_h264(bar_frames(30), path, fps=15, keyframe_every_s=1.0, slices=2)
    keyframe = read_clip(path).units[0]
    assert [b & 0x1F for b in _nal_headers(keyframe)].count(5) == 2  # two IDR slices
    with ClipStreams({"cam-a": path}) as streams:
        cap = cv2.VideoCapture(streams.url("cam-a"), cv2.CAP_FFMPEG)
        assert cap.isOpened(), f"OpenCV could not open {streams.url('cam-a')}"
        top: list[int] = []
        bottom: list[int] = []
        deadline = time.monotonic() + 30
        while len(top) < 40 and time.monotonic() < deadline:
            ok, image = cap.read()
            if ok:
                top.append(bar_index(image, row=4))
                bottom.append(bar_index(image, row=H - 4))
        cap.release()
    assert len(top) == 40, top
    # From the first keyframe on, both slices of every picture show the same frame.
    first = next((i for i, b in enumerate(bottom) if b in (0, 15)), None)
    assert first is not None, f"no keyframe's picture among {bottom}"
    assert top[first:] == bottom[first:], list(zip(top, bottom, strict=True))
    assert {(b - a) % 30 for a, b in itertools.pairwise(bottom[first:])} == {1}, bottom


@pytest.mark.integration
@needs_gst
def test_a_failing_truth_callback_ends_the_streams_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "bars.mp4"
    write_h264(bar_frames(10), path, fps=15)

    def on_unit(cam: str, index: int) -> None:
        if index == 3:
            raise ValueError("broker said no")

    streams = ClipStreams({"cam-a": path}, on_unit=on_unit)
    with streams:
        deadline = time.monotonic() + 10
        while streams.alive and time.monotonic() < deadline:
            time.sleep(0.05)  # the player thread ends on its own: nothing to wait on but it
        assert not streams.alive
        assert isinstance(streams.error, ValueError)
        assert streams.player is not None
        assert streams.player.pushed == 3  # the 4th went out, its callback failed
