"""The glass-latency stamp of ``bench webrtc``: a frame number drawn on the canvas camera comes
back from the stored JPEG after scaling and lossy coding, and pairs with the box set drawn."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest

from services.aggregator.ingest import frame_key
from services.benchmarks.webrtc import (
    STAMP_BITS,
    glass_latency,
    key_time_seq,
    read_stamp,
    stamp,
)

T0 = datetime(2026, 12, 4, 6, 0, tzinfo=UTC)


def scene(seed: int = 0) -> np.ndarray:
    """A busy 1280x720 image: the stamp must win over what is under it."""
    return np.random.default_rng(seed).integers(0, 256, (720, 1280, 3), dtype=np.uint8)


@pytest.mark.parametrize("n", [0, 1, 2, 1234, 2**STAMP_BITS - 1])
def test_a_stamped_number_survives_scaling_and_jpeg(n: int) -> None:
    image = cv2.resize(stamp(scene(n), n), (640, 360), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 60])
    assert ok
    decoded = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    assert read_stamp(cv2.resize(decoded, (1280, 720))) == n


def test_an_unstamped_frame_reads_as_none() -> None:
    assert read_stamp(np.full((720, 1280, 3), 255, np.uint8)) is None  # guards not white/black
    assert read_stamp(np.zeros((720, 1280, 3), np.uint8)) is None


def test_the_capture_time_and_seq_come_back_from_the_object_key() -> None:
    at = T0 + timedelta(milliseconds=1234)
    assert key_time_seq(frame_key("frames", "cam-phone", at, 77)) == (at, 77)
    assert key_time_seq("frames/cam-phone/notes.txt") is None


def test_each_box_set_pairs_with_the_moment_its_frame_was_drawn() -> None:
    base_ms = T0.timestamp() * 1000
    stamped = [base_ms + 66.7 * i for i in range(20)]  # the canvas drew frame i here
    frames = {
        # seq 1 shows frame 3, arrived 80 ms after it was drawn; seq 2 shows frame 10.
        1: (T0 + timedelta(milliseconds=200 + 80), stamp(scene(1), 3)),
        2: (T0 + timedelta(milliseconds=667 + 50), stamp(scene(2), 10)),
        3: (T0, scene(3)),  # no stamp: not counted, counted as unread
    }
    drawn = [(1, base_ms + 200 + 80 + 400), (2, base_ms + 667 + 50 + 300), (3, base_ms), (9, 0.0)]
    glass = glass_latency(drawn, stamped, frames)
    assert glass.unread == 2  # seq 3 unstamped, seq 9 not stored
    assert glass.to_arrival == pytest.approx([0.0799, 0.05], abs=2e-3)
    assert glass.to_drawn == pytest.approx([0.4, 0.3], abs=1e-3)
    assert glass.total == pytest.approx([0.48, 0.35], abs=2e-3)
