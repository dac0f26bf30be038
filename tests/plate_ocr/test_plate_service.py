"""The plate reader service against the real embedded broker and S3."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from estimator_rig import (
    ROOT,
    LabelDetector,
    collect,
    create_topics,
    flow_facility,
    output_consumer,
    render_cases,
    running,
    store_frames,
)

from schemas.estimates import IdentityEstimate, PositionEstimate
from schemas.facility import FacilityConfig, load_facility
from services.plate_ocr.config import plate_ocr_config
from services.plate_ocr.ocr_engine import RapidTextRecogniser
from services.plate_ocr.service import plate_stream
from services.runtime.estimator_service import EstimatorConfigError
from services.runtime.facility_watch import FacilityWatch
from services.runtime.kafka import MessageProducer
from services.runtime.settings import Settings


@pytest.fixture
def producer(stack_settings: Settings) -> Iterator[MessageProducer]:
    prod = MessageProducer(stack_settings.kafka, client_id="test-frames")
    yield prod
    prod.close(timeout=10)


def test_plates_of_the_position_estimates_are_read_and_published(
    stack_settings: Settings,
    producer: MessageProducer,
    tmp_path: Path,
    unique_name: Callable[[str], str],
) -> None:
    """The reader consumes the flow's position estimates, fetches a frame only where one has a
    plate box, reads it and publishes identities, one per plate box (one "no plate" otherwise)."""
    flow = "t" + unique_name("f").rsplit("-", 1)[-1]
    facility = load_facility(ROOT / "facility.yaml")
    # cam-s1 at tick 100 shows TEM2 L2's plate on T2; some camera at tick 0 shows no plate.
    idle = render_cases(facility, [0], [c.id for c in facility.cameras])
    no_plate = next(c for c in idle if all(lb.cls != "plate" for lb in c.labels))
    cases = [*render_cases(facility, [100], ["cam-s1"]), no_plate]
    plates = [lb for lb in cases[0].labels if lb.cls == "plate" and lb.visible_fraction > 0.95]
    assert plates, "the demo scenario must show a whole plate to cam-s1 at tick 100"
    frames_topic = unique_name("frames")
    path = flow_facility(tmp_path, flow)
    create_topics(stack_settings, flow, frames_topic)
    refs = store_frames(stack_settings, producer, frames_topic, cases[:1], prefix=flow)
    # The frame without a plate box is not in the store: fetching it would dead-letter it.
    refs.append(refs[0].model_copy(update={"seq": 1, "key": f"{flow}/never-stored.jpg"}))
    boxes = LabelDetector(cases)
    for ref, case in zip(refs, cases, strict=True):
        (detections,) = boxes.detect([cv2.imdecode(np.frombuffer(case.jpeg, np.uint8), 1)])
        estimate = PositionEstimate(
            flow=flow,
            camera_id=case.camera_id,
            frame=ref.model_copy(update={"camera_id": case.camera_id}),
            estimator="position-estimator/test",
            model_version="test",
            estimated_at=ref.captured_at,
            detections=detections,
        )
        producer.publish_and_wait(estimate, flow)
    watch = FacilityWatch(path)
    config = plate_ocr_config(watch.config, path, flow, "replay")
    assert config.positions_topic == PositionEstimate.topic_name(flow)
    stream = plate_stream(stack_settings, config, watch, RapidTextRecogniser())
    expected = sum(1 for lb in cases[0].labels if lb.cls == "plate") + 1
    reader = output_consumer(
        stack_settings,
        producer,
        IdentityEstimate.topic_name(flow),
        IdentityEstimate,
        unique_name("reader"),
    )
    try:
        with running(stream):
            got = collect(reader, lambda out: len(out) >= expected)
    finally:
        reader.close()
    assert stream.rejected == 0
    by_seq: dict[int, list[IdentityEstimate]] = {}
    for r in got:
        assert r.key == r.message.camera_id.encode()
        by_seq.setdefault(r.message.frame.seq, []).append(r.message)
    assert sorted(by_seq) == [r.seq for r in refs]
    read = {e.plate_text: e for e in by_seq[refs[0].seq] if e.plate_text}
    for plate in plates:
        assert plate.plate in read
        assert read[plate.plate].locomotive_model == plate.model
        assert read[plate.plate].flow == flow
    (empty,) = by_seq[refs[1].seq]
    assert empty.plate_text is None
    assert empty.unreadable_reason == "no plate in view"


def dev_flow(tmp_path: Path, drop: str, **set_: str) -> tuple[FacilityConfig, Path]:
    """The shipped facility with flows.dev's ``drop`` stage removed and ``set_`` fields set."""
    import yaml

    data = yaml.safe_load((ROOT / "facility.yaml").read_text())
    data["flows"]["dev"].pop(drop)
    data["flows"]["dev"].update(set_)
    path = tmp_path / "facility.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_facility(path), path


def test_flow_without_plate_reader_is_a_one_line_error(tmp_path: Path) -> None:
    facility, path = dev_flow(tmp_path, "plate_ocr")
    with pytest.raises(EstimatorConfigError, match=r"flows.dev.plate_ocr is not set; add it"):
        plate_ocr_config(facility, path, "dev")


def test_flow_without_position_estimator_is_a_one_line_error(tmp_path: Path) -> None:
    facility, path = dev_flow(tmp_path, "position_estimator")
    with pytest.raises(EstimatorConfigError, match=r"flows.dev.position_estimator is not set"):
        plate_ocr_config(facility, path, "dev")


def test_a_flow_reading_another_flows_positions_reads_their_plate_boxes(tmp_path: Path) -> None:
    facility, path = dev_flow(tmp_path, "position_estimator", positions_from="prod")
    config = plate_ocr_config(facility, path, "dev")
    assert config.positions_topic == "positions.prod.v1"
    assert config.source().topic == "positions.prod.v1"
