"""Helpers for estimator service tests: rendered frames in S3, refs on a test-owned topic,
services run on a thread, outputs collected from the flow's topic.

Each test uses a flow and a frames topic of its own, so the session's shared topics (which
other tests write to) never reach its service, and its outputs are its own.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from schemas.base import Message
from schemas.deadletter import DeadLetter
from schemas.estimates import BoundingBox, Detection
from schemas.facility import FacilityConfig, load_facility
from schemas.frames import FrameRef
from schemas.topics import TopicSpec, topics_for
from services.runtime.frame_stream import FrameStream
from services.runtime.frames import REDUCED_DECODE
from services.runtime.kafka import MessageConsumer, MessageProducer, Received, TopicAdmin
from services.runtime.settings import Settings
from services.runtime.shutdown import ShutdownSignal
from services.runtime.storage import ObjectStore
from services.simulator.render import ObjectLabel, Renderer
from services.simulator.world import Simulation, load_scenario

ROOT = Path(__file__).resolve().parents[1]
AT = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class RenderedCase:
    """A rendered camera frame as stored by the aggregator, with its true labels."""

    camera_id: str
    jpeg: bytes
    labels: tuple[ObjectLabel, ...]


def render_cases(
    facility: FacilityConfig, ticks: Sequence[int], cameras: Sequence[str], seed: int = 1
) -> list[RenderedCase]:
    """Frames of the demo scenario, JPEG-encoded at each camera's quality."""
    sim = Simulation(facility, load_scenario("depot-day"), seed=seed)
    renderer = Renderer(facility, list(cameras))
    out = []
    for tick in ticks:
        state = sim.state(tick)
        for cid in cameras:
            frame = renderer.render(state, cid)
            quality = facility.camera(cid).jpeg_quality
            ok, buf = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            assert ok
            out.append(RenderedCase(cid, buf.tobytes(), frame.labels))
    return out


def image_key(image: np.ndarray) -> str:
    """Identity of a decoded image (JPEG decoding is deterministic)."""
    return hashlib.sha256(image.tobytes()).hexdigest()


class LabelDetector:
    """Answers with the simulator's true boxes of each known image: the detector stand-in for
    tests of service mechanics and geometry (the trained model is tested where it exists)."""

    def __init__(self, cases: Sequence[RenderedCase]) -> None:
        self.known: dict[str, list[Detection]] = {}
        for case in cases:
            # The service may decode at reduced size (REDUCED_DECODE); know every size, with
            # boxes in that image's pixels as a real detector would give them.
            for reduction, flag in REDUCED_DECODE.items():
                img = cv2.imdecode(np.frombuffer(case.jpeg, np.uint8), flag)
                self.known[image_key(img)] = [
                    Detection(
                        cls=label.cls,
                        bbox=BoundingBox(
                            x1=label.box[0] / reduction,
                            y1=label.box[1] / reduction,
                            x2=label.box[2] / reduction,
                            y2=label.box[3] / reduction,
                        ),
                        confidence=0.99,
                    )
                    for label in case.labels
                ]
        self.calls = 0

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        self.calls += 1
        return [self.known.get(image_key(img), []) for img in images]


def flow_facility(tmp_path: Path, flow: str, weights: Path | None = None) -> Path:
    """facility.yaml with one more flow (a copy of prod named ``flow``); returns its path."""
    data = yaml.safe_load((ROOT / "facility.yaml").read_text())
    data["flows"][flow] = dict(data["flows"]["prod"])
    if weights is not None:
        data["flows"][flow]["position_estimator"] = {
            **data["flows"]["prod"]["position_estimator"],
            "weights": str(weights),
        }
    path = tmp_path / "facility.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_facility(path)  # fail here, not in the service, if the copy is invalid
    return path


def create_topics(settings: Settings, flow: str, frames_topic: str, partitions: int = 3) -> None:
    """The flow's output topics and a frames topic of the test's own."""
    specs = [s for s in topics_for([flow]) if flow in s.name]
    specs.append(TopicSpec(frames_topic, FrameRef, partitions, {"cleanup.policy": "delete"}))
    TopicAdmin(settings.kafka).ensure(specs)


def store_frames(
    settings: Settings,
    producer: MessageProducer,
    frames_topic: str,
    cases: Sequence[RenderedCase],
    prefix: str,
    first_seq: int = 0,
) -> list[FrameRef]:
    """Put each case's JPEG in S3 and publish its FrameRef (acknowledged) on ``frames_topic``."""
    store = ObjectStore(settings.s3)
    store.ensure_bucket()
    refs = []
    for i, case in enumerate(cases):
        seq = first_seq + i
        key = f"{prefix}/{case.camera_id}/{seq:08d}.jpg"
        stored = store.put(key, case.jpeg, "image/jpeg")
        ref = FrameRef(
            camera_id=case.camera_id,
            seq=seq,
            captured_at=AT + timedelta(seconds=seq),
            bucket=stored.bucket,
            key=key,
            width=1280,
            height=720,
            size=stored.size,
            sha256=stored.sha256,
        )
        producer.publish_and_wait(ref, topic=frames_topic)
        refs.append(ref)
    return refs


@contextmanager
def running(stream: FrameStream) -> Iterator[ShutdownSignal]:
    """Run a frame stream on a thread; stop it (and check it stopped) on exit."""
    shutdown = ShutdownSignal()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            stream.run(shutdown)
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=target, name="frame-stream", daemon=True)
    thread.start()
    try:
        yield shutdown
    finally:
        shutdown.request()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the service did not stop within 60 s of shutdown"
    if errors:
        raise errors[0]


def output_consumer(
    settings: Settings, producer: MessageProducer, topic: str, model: type[Message], group: str
) -> MessageConsumer:
    """A consumer of one output topic from the beginning."""
    return MessageConsumer(
        settings.kafka,
        group_id=group,
        topics={topic: model},
        service="test-reader",
        dead_letters=producer,
    )


def collect(
    consumer: MessageConsumer,
    until: Callable[[list[Received[Any]]], bool],
    timeout: float = 60.0,
) -> list[Received[Any]]:
    """Poll until ``until(received)`` holds; fails with what arrived after ``timeout``."""
    out: list[Received[Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until(out):
            return out
        got = consumer.poll(0.5)
        if got is not None:
            out.append(got)
    assert until(out), f"condition not met within {timeout:.0f}s; received {len(out)} messages"
    return out


def dead_letters_of(received: Sequence[Received[Any]], frames_topic: str) -> list[DeadLetter]:
    """Dead letters whose source is the test's frames topic."""
    return [r.message for r in received if r.message.source_topic == frames_topic]


@pytest.fixture(scope="session")
def dev_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Detector weights for service-mechanics tests: the trained model if it is there, else an
    untrained YOLOv8n with the head/tail/plate classes (its detections are noise, its speed and
    file format are real). Import it into a conftest.py to use it."""
    trained = ROOT / "models" / "depot-yolo.pt"
    if trained.is_file():
        return trained
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml", task="detect")
    model.model.names = {0: "head", 1: "tail", 2: "plate"}  # type: ignore[union-attr]
    path = tmp_path_factory.mktemp("weights") / "untrained-yolov8n.pt"
    model.save(str(path))
    return path
