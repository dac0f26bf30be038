"""The plate reader's loop over position estimates, with in-memory fakes of the broker and the
object store: which frames are fetched, and a message the reader fails on."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fakes import FakeConsumer, FakePublisher, FakeStore
from message_samples import AT, frame_ref

from schemas.estimates import BoundingBox, Detection, IdentityEstimate, PositionEstimate
from schemas.facility import load_facility
from services.plate_ocr.config import PlateOcrConfig
from services.plate_ocr.identity import IdentityEstimator
from services.runtime.frame_stream import FrameStream
from services.runtime.frames import Image, Rejected

ROOT = Path(__file__).resolve().parents[2]
JPEG = bytes(cv2.imencode(".jpg", np.full((720, 1280, 3), 90, np.uint8))[1])
PLATE = {"x1": 100.0, "y1": 100.0, "x2": 200.0, "y2": 130.0}


class Reads:
    """Reads every crop as one plate; ``fail_on_wide`` raises on crops wider than 500 px,
    ``broken`` on every crop (the self-test's too)."""

    def __init__(self, fail_on_wide: bool = False, broken: bool = False) -> None:
        self.fail_on_wide = fail_on_wide
        self.broken = broken
        self.crops = 0

    def recognise(self, crops: Sequence[Image]) -> list[tuple[str, float]]:
        if self.broken:
            raise RuntimeError("the OCR engine's session is gone")
        if self.fail_on_wide and any(c.shape[1] > 500 for c in crops):
            raise RuntimeError("the OCR engine cannot take this crop")
        self.crops += len(crops)
        return [("TEM2-0001", 0.95) for _ in crops]


def estimate(seq: int, *boxes: dict[str, float], camera: str = "cam-s1") -> PositionEstimate:
    ref = frame_ref(seq, camera).model_copy(
        update={"size": len(JPEG), "sha256": hashlib.sha256(JPEG).hexdigest()}
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
    messages: list[PositionEstimate],
    stored: list[PositionEstimate],
    reader: Reads,
    self_test: bool = True,
    reread_after_s: float = 0.0,
    **stream: Any,
) -> tuple[FrameStream[PositionEstimate], FakeConsumer, FakePublisher, FakeStore]:
    config = PlateOcrConfig(
        flow="prod",
        min_plate_confidence=0.6,
        reread_after_s=reread_after_s,
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
    handler = IdentityEstimator(
        lambda: facility, reader, "prod", "plate-ocr/test", 0.6, reread_after_s=reread_after_s
    )
    loop = replace(config.stream(), **stream)
    test = handler.self_test if self_test else None
    source = config.source(handler.needs_frame)
    stream_ = FrameStream(loop, source, consumer, publisher, store, handler, test)
    return stream_, consumer, publisher, store


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


def test_a_standing_plate_is_read_again_only_every_reread_after_s_and_not_fetched_between() -> None:
    """Field figure: the plate reader used ~40% of a core at 8 cameras x 2 fps reading the same
    standing plates every frame. Frames are 1 s apart here: the plate read at 0 s is reused
    up to 5 s and read again at 6 s. Frame 1 is fetched all the same: it was read ahead (fetched
    while frame 0 was read), but its plate is not read again."""
    moved = {"x1": 160.0, "y1": 100.0, "x2": 260.0, "y2": 130.0}  # IoU 0.25 with PLATE
    messages = [estimate(seq, PLATE) for seq in range(7)] + [estimate(7, moved)]
    messages.insert(3, estimate(100, PLATE, camera="cam-s2"))  # another camera reads its own
    reader = Reads()
    stream, consumer, publisher, store = rig(
        messages, messages, reader, reread_after_s=5.0, max_batch=1
    )
    while stream.run_once():
        pass
    stream.flush()
    fetched = sorted(store.gets)
    assert fetched == sorted(m.frame.key for m in messages if m.frame.seq in (0, 1, 6, 7, 100))
    assert reader.crops == 4
    out = published(publisher)
    assert len(out) == len(messages)
    assert {e.plate_text for e in out} == {"TEM2-0001"}
    assert all(e.plate_box is not None for e in out)
    assert sorted(consumer.done_offsets) == list(range(len(messages)))


def test_a_frame_not_fetched_keeps_the_reading_it_was_promised() -> None:
    """Review finding: whether a frame is fetched is decided at fetch time (read ahead, in
    another thread), and the memory may move on before the frame is handled. Here the plate
    read at 0 s is recalled for the frame at 9 s (not fetched); then a frame at 11 s, a little
    further along, is read and replaces that reading. The 9 s frame must still be read as
    promised, not rejected as a plate box without its frame."""
    from services.runtime.frames import decode_frame

    facility = load_facility(ROOT / "facility.yaml")
    reader = Reads()
    handler = IdentityEstimator(
        lambda: facility, reader, "prod", "plate-ocr/test", 0.6, reread_after_s=10.0
    )
    nudged = {"x1": 112.0, "y1": 100.0, "x2": 212.0, "y2": 130.0}  # IoU 0.79 with PLATE
    further = {"x1": 124.0, "y1": 100.0, "x2": 224.0, "y2": 130.0}  # IoU 0.62 with nudged
    first, promised, later = estimate(0, PLATE), estimate(9, nudged), estimate(11, further)

    def frame(e: PositionEstimate) -> Any:
        return decode_frame(e.frame, JPEG)

    handler([(first, frame(first))])
    assert not handler.needs_frame(promised)
    handler([(later, frame(later))])
    (outcome,) = handler([(promised, None)])
    assert not isinstance(outcome, Rejected), outcome
    assert [e.plate_text for e in outcome] == ["TEM2-0001"]
    assert reader.crops == 2


def test_without_the_memory_every_plate_frame_is_read() -> None:
    messages = [estimate(seq, PLATE) for seq in range(4)]
    reader = Reads()
    stream, _, publisher, store = rig(messages, messages, reader, max_batch=1)
    while stream.run_once():
        pass
    stream.flush()
    assert len(store.gets) == 4
    assert reader.crops == 4
    assert len(published(publisher)) == 4


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


def test_a_broken_reader_stops_the_service_instead_of_dead_lettering_every_plate() -> None:
    """Bad input is rare; a broken estimator (an OCR engine that cannot run) fails on every
    plate, while frames without one still pass. Its self-test fails too: the service exits, to
    be restarted, and nothing of the batch is dead-lettered or marked done."""
    messages = [estimate(0, PLATE), estimate(1), estimate(2), estimate(3, PLATE), estimate(4)]
    stream, consumer, *_ = rig(messages, messages, Reads(broken=True))
    with pytest.raises(RuntimeError, match="session is gone"):
        stream.run_once()
    assert consumer.dead == []
    assert consumer.done_offsets == []


def test_without_a_self_test_too_many_failures_a_minute_stop_the_service() -> None:
    wide = {"x1": 100.0, "y1": 100.0, "x2": 900.0, "y2": 130.0}
    messages = [estimate(seq, wide) for seq in range(3)]
    reader = Reads(fail_on_wide=True)
    stream, *_ = rig(messages, messages, reader, self_test=False, max_failures_per_minute=2)
    with pytest.raises(RuntimeError, match="cannot take this crop"):
        stream.run_once()


def test_remembering_an_older_reading_keeps_the_newer_ones() -> None:
    """Review finding: a frame redelivered late (an upstream restart) is read and remembered;
    that must not drop what the camera read since."""
    from datetime import timedelta

    from services.plate_ocr.identity import PlateDecision, ReadingMemory

    memory = ReadingMemory(reread_after_s=10.0)
    read = PlateDecision("TEM2-0001", 0.9, None, "TEM2", 0.9)
    plate = Detection(cls="plate", bbox=BoundingBox(**PLATE), confidence=0.9)
    elsewhere = Detection(
        cls="plate", bbox=BoundingBox(x1=600, y1=100, x2=700, y2=130), confidence=0.9
    )
    memory.remember("cam-s1", plate, read, AT + timedelta(seconds=20))
    memory.remember("cam-s1", elsewhere, read, AT + timedelta(seconds=5))
    assert memory.recall("cam-s1", plate, AT + timedelta(seconds=21)) == read
    assert memory.recall("cam-s1", plate, AT + timedelta(seconds=31)) is None  # too old
