"""The plate reader's loop over position estimates, with in-memory fakes of the broker and the
object store: which frames are fetched, and a message the reader fails on."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fakes import FakeConsumer, FakePublisher, FakeStore

from schemas.estimates import BoundingBox, Detection, IdentityEstimate, PositionEstimate
from schemas.facility import load_facility
from schemas.frames import FrameRef
from services.plate_ocr.config import PlateOcrConfig
from services.plate_ocr.identity import IdentityEstimator
from services.runtime.frame_stream import FrameStream
from services.runtime.frames import Image

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
JPEG = bytes(cv2.imencode(".jpg", np.full((720, 1280, 3), 90, np.uint8))[1])
PLATE = {"x1": 100.0, "y1": 100.0, "x2": 200.0, "y2": 130.0}


class Reads:
    """Reads every crop as one plate; ``fail_on_wide`` raises on crops wider than 500 px."""

    def __init__(self, fail_on_wide: bool = False) -> None:
        self.fail_on_wide = fail_on_wide
        self.crops = 0

    def recognise(self, crops: Sequence[Image]) -> list[tuple[str, float]]:
        if self.fail_on_wide and any(c.shape[1] > 500 for c in crops):
            raise RuntimeError("the OCR engine cannot take this crop")
        self.crops += len(crops)
        return [("TEM2-0001", 0.95) for _ in crops]


def estimate(seq: int, *boxes: dict[str, float], camera: str = "cam-s1") -> PositionEstimate:
    ref = FrameRef(
        camera_id=camera,
        seq=seq,
        captured_at=AT + timedelta(seconds=seq),
        bucket="frames",
        key=f"{camera}/{seq}.jpg",
        width=1280,
        height=720,
        size=len(JPEG),
        sha256=hashlib.sha256(JPEG).hexdigest(),
    )
    return PositionEstimate(
        flow="prod",
        camera_id=camera,
        frame=ref,
        estimator="position-estimator/test",
        model_version="test",
        estimated_at=AT,
        detections=[Detection(cls="plate", bbox=BoundingBox(**b), confidence=0.9) for b in boxes],
    )


def rig(
    messages: list[PositionEstimate], stored: list[PositionEstimate], reader: Reads
) -> tuple[FrameStream[PositionEstimate], FakeConsumer, FakePublisher, FakeStore]:
    config = PlateOcrConfig(
        flow="prod",
        min_plate_confidence=0.6,
        max_batch=8,
        max_wait_ms=10,
        mode="replay",
        positions_topic="positions.prod.v1",
    )
    facility = load_facility(ROOT / "facility.yaml")
    store = FakeStore()
    for m in stored:
        store.objects[(m.frame.bucket, m.frame.key)] = JPEG
    consumer = FakeConsumer(messages, topic=config.positions_topic)
    publisher = FakePublisher()
    handler = IdentityEstimator(lambda: facility, reader, "prod", "plate-ocr/test", 0.6)
    stream = FrameStream(config.stream(), config.source(), consumer, publisher, store, handler)
    return stream, consumer, publisher, store


def published(publisher: FakePublisher) -> list[Any]:
    return [m for _, m in publisher.published if isinstance(m, IdentityEstimate)]


def test_only_frames_with_a_plate_box_are_fetched_and_a_missing_one_is_dead_lettered() -> None:
    no_plate, plate, gone = estimate(0), estimate(1, PLATE), estimate(2, PLATE)
    stream, consumer, publisher, store = rig([no_plate, plate, gone], [plate], Reads())
    assert stream.run_once() == 2
    stream.flush()
    assert sorted(store.gets) == [plate.frame.key, gone.frame.key]
    assert [e.plate_text for e in published(publisher)] == [None, "TEM2-0001"]
    ((offset, reason),) = consumer.dead
    assert offset == 2
    assert "frame object missing" in reason
    assert sorted(consumer.done_offsets) == [0, 1, 2]


def test_a_message_the_reader_fails_on_is_dead_lettered_and_the_rest_are_read() -> None:
    wide = {"x1": 100.0, "y1": 100.0, "x2": 900.0, "y2": 130.0}
    good, bad, after = estimate(0, PLATE), estimate(1, wide), estimate(2, PLATE)
    stream, consumer, publisher, _ = rig([good, bad, after], [good, bad, after], Reads(True))
    assert stream.run_once() == 2
    stream.flush()
    assert [e.frame.seq for e in published(publisher)] == [0, 2]
    ((offset, reason),) = consumer.dead
    assert offset == 1
    assert "the estimator failed on this message" in reason
    assert "cannot take this crop" in reason
    assert sorted(consumer.done_offsets) == [0, 1, 2]


@pytest.mark.parametrize("corner", ["1e400", "NaN", "1e308"])
def test_an_absurd_plate_box_is_refused_at_decode(corner: str) -> None:
    from schemas.base import MessageDecodeError, decode

    raw = estimate(0, PLATE).model_dump_json().replace('"x2":200.0', f'"x2":{corner}')
    with pytest.raises(MessageDecodeError, match="x2"):
        decode(PositionEstimate, raw.encode())


def test_a_reader_that_fails_on_everything_stops_the_service_instead_of_dead_lettering_all() -> (
    None
):
    """Bad input is rare; a broken estimator (an OCR engine that cannot run) fails on every
    message: after a few in a row the service exits, to be restarted, and loses nothing more."""
    wide = {"x1": 100.0, "y1": 100.0, "x2": 900.0, "y2": 130.0}
    messages = [estimate(seq, wide) for seq in range(6)]
    stream, consumer, *_ = rig(messages, messages, Reads(fail_on_wide=True))
    with pytest.raises(RuntimeError, match="cannot take this crop"):
        stream.run_once()
    assert len(consumer.dead) == 0  # nothing of the failed batch is marked done or dead
    assert consumer.done_offsets == []
