"""The plate reader core on rendered frames, with the real OCR engine.

The plate boxes come in position estimates, as the position estimator publishes them; here they
are the simulator's true boxes (the trained detector is evaluated separately by
``depotwatch eval estimators``), so these tests pin down cropping, OCR, normalisation, the
livery check and the unreadable reasons.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
from estimator_rig import LabelDetector, RenderedCase, render_cases

from schemas.estimates import BoundingBox, Detection, IdentityEstimate, PositionEstimate
from schemas.facility import FacilityConfig, load_facility
from schemas.frames import FrameRef
from services.plate_ocr.identity import IdentityEstimator, PlateWork, decide, needs_frame
from services.plate_ocr.livery import livery_model, nearest_livery
from services.plate_ocr.ocr_engine import RapidTextRecogniser
from services.plate_ocr.plate_position import centre_from_homography, plate_observation
from services.plate_ocr.plate_text import PlateReading
from services.runtime.frames import REDUCED_DECODE, DecodedFrame, Image, Rejected
from services.simulator.render import PLATE_CENTRE_A_M
from services.simulator.world import Simulation, load_scenario

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def facility() -> FacilityConfig:
    return load_facility(ROOT / "facility.yaml")


@pytest.fixture(scope="module")
def recogniser() -> RapidTextRecogniser:
    return RapidTextRecogniser()


@pytest.fixture(scope="module")
def cases(facility: FacilityConfig) -> list[RenderedCase]:
    # Demo ticks with plates near and far, lit and dimmed (tick 1190: light level ~0.57).
    cams = [c.id for c in facility.cameras]
    return render_cases(facility, [0, 100, 300, 1190], cams)


def decoded(case: RenderedCase, seq: int, reduction: int = 1) -> DecodedFrame:
    image = cv2.imdecode(np.frombuffer(case.jpeg, np.uint8), REDUCED_DECODE[reduction])
    ref = FrameRef(
        camera_id=case.camera_id,
        seq=seq,
        captured_at=NOW,
        bucket="frames",
        key=f"{case.camera_id}/{seq}.jpg",
        width=image.shape[1] * reduction,
        height=image.shape[0] * reduction,
        size=len(case.jpeg),
        sha256="0" * 64,
    )
    return DecodedFrame(ref=ref, image=image)


def position(ref: FrameRef, detections: list[Detection]) -> PositionEstimate:
    """A position estimate of the frame, as the position estimator publishes it."""
    return PositionEstimate(
        flow="prod",
        camera_id=ref.camera_id,
        frame=ref,
        estimator="position-estimator/test",
        model_version="test",
        estimated_at=NOW,
        detections=detections,
    )


def positions_of(cases: Sequence[RenderedCase], reduction: int = 1) -> list[PlateWork]:
    """Each case's position estimate (its true boxes, in the frame's full-size pixels) with the
    frame decoded at 1/``reduction`` size; seq is the case's index."""
    boxes = LabelDetector(cases)
    out: list[PlateWork] = []
    for seq, case in enumerate(cases):
        (detections,) = boxes.detect([decoded(case, seq).image])
        frame = decoded(case, seq, reduction)
        out.append((position(frame.ref, detections), frame))
    return out


def reader(
    facility: FacilityConfig, recogniser: object, min_conf: float = 0.6
) -> IdentityEstimator:
    return IdentityEstimator(
        facility=lambda: facility,
        recogniser=recogniser,  # type: ignore[arg-type]
        flow="prod",
        estimator="plate-ocr/test",
        min_plate_confidence=min_conf,
        clock=lambda: NOW,
    )


def estimates_of(outcomes: Sequence[object]) -> list[IdentityEstimate]:
    out = []
    for o in outcomes:
        assert not isinstance(o, Rejected)
        out += list(o)  # type: ignore[call-overload]
    return out


def test_fully_visible_plates_are_read_exactly(
    facility: FacilityConfig, cases: list[RenderedCase], recogniser: RapidTextRecogniser
) -> None:
    handle = reader(facility, recogniser)
    truth = {
        (c.camera_id, i): [lb for lb in c.labels if lb.cls == "plate"] for i, c in enumerate(cases)
    }
    checked = 0
    for est in estimates_of(handle(positions_of(cases))):
        labels = truth[(est.camera_id, est.frame.seq)]
        if est.plate_box is None:
            assert not labels
            assert est.unreadable_reason == "no plate in view"
            continue
        box = est.plate_box.bbox
        (label,) = [lb for lb in labels if abs(lb.box[0] - box.x1) < 0.01]
        # Every plate gets a model: from its text, or from the livery when it is unreadable.
        assert est.locomotive_model == label.model
        if label.visible_fraction >= 0.95:
            assert est.plate_text == label.plate, est.unreadable_reason
            assert est.plate_confidence >= 0.6
            checked += 1
        elif est.plate_text is not None:
            assert est.plate_text == label.plate
        else:
            assert est.unreadable_reason
    assert checked >= 10


def test_unreadable_plate_gets_a_reason_and_the_livery_model(
    facility: FacilityConfig, cases: list[RenderedCase]
) -> None:
    class Smudged:
        def recognise(self, crops: Sequence[Image]) -> list[tuple[str, float]]:
            return [("#?~", 0.31) for _ in crops]

    case = next(c for c in cases if any(lb.cls == "plate" for lb in c.labels))
    plate = next(lb for lb in case.labels if lb.cls == "plate")
    handle = reader(facility, Smudged())
    est = next(e for e in estimates_of(handle(positions_of([case]))) if e.plate_box is not None)
    assert est.plate_text is None
    assert est.unreadable_reason is not None
    assert "matches no plate pattern" in est.unreadable_reason
    assert est.locomotive_model == plate.model
    assert est.model_confidence > 0.3


def test_low_confidence_reading_is_unreadable(facility: FacilityConfig) -> None:
    livery = nearest_livery((40, 120, 60), facility.locomotive_models)
    decision = decide("TEM2-5948", 0.4, PlateReading("TEM2-5948", "TEM2", 0), livery, 0.6)
    assert decision.plate_text is None
    assert "below min_plate_confidence 0.60" in (decision.unreadable_reason or "")
    assert decision.locomotive_model == "TEM2"  # from the livery
    confident = decide("TEM2-5948", 0.97, PlateReading("TEM2-5948", "TEM2", 1), livery, 0.6)
    assert confident.plate_text == "TEM2-5948"
    assert confident.plate_confidence == pytest.approx(0.97 * 0.9)
    other = nearest_livery((200, 60, 40), facility.locomotive_models)
    disputed = decide("TEM2-5948", 0.97, PlateReading("TEM2-5948", "TEM2", 0), other, 0.6)
    assert disputed.locomotive_model == "TEM2"
    assert disputed.model_confidence < confident.model_confidence


def test_tiny_plate_is_not_sent_to_ocr(facility: FacilityConfig) -> None:
    class NeverCalled:
        def recognise(self, crops: Sequence[Image]) -> list[tuple[str, float]]:
            raise AssertionError("tiny plates must not reach the OCR engine")

    frame = DecodedFrame(
        ref=FrameRef(
            camera_id="cam-s1",
            seq=1,
            captured_at=NOW,
            bucket="frames",
            key="k.jpg",
            width=1280,
            height=720,
            size=1,
            sha256="0" * 64,
        ),
        image=np.full((720, 1280, 3), 120, np.uint8),
    )
    tiny = Detection(cls="plate", bbox=BoundingBox(x1=600, y1=300, x2=640, y2=308), confidence=0.8)
    (est,) = estimates_of(reader(facility, NeverCalled())([(position(frame.ref, [tiny]), frame)]))
    assert est.plate_text is None
    assert est.unreadable_reason == "plate too small to read (8 px high, need 12)"
    assert est.locomotive_model is None  # grey surroundings: no livery to judge
    # A box outside the frame (a bad estimate) is not cropped to nothing and read: it says so.
    outside = tiny.model_copy(update={"bbox": BoundingBox(x1=5000, y1=300, x2=5100, y2=330)})
    (est,) = estimates_of(
        reader(facility, NeverCalled())([(position(frame.ref, [outside]), frame)])
    )
    assert est.unreadable_reason == "plate box lies outside the frame (a bad position estimate)"


def test_plate_is_placed_on_its_locomotive_along_the_track(
    facility: FacilityConfig, recogniser: RapidTextRecogniser
) -> None:
    sim = Simulation(facility, load_scenario("depot-day"), seed=1)
    placed = 0
    for tick in (0, 100, 300):
        where = {p.locomotive_id: p for p in sim.state(tick).placements}
        cases = render_cases(facility, [tick], [c.id for c in facility.cameras])
        outcomes = reader(facility, recogniser)(positions_of(cases))
        for case, outcome in zip(cases, outcomes, strict=True):
            for est in estimates_of([outcome]):
                if est.plate_box is None:
                    continue
                box = est.plate_box.bbox
                (label,) = [
                    lb for lb in case.labels if lb.cls == "plate" and abs(lb.box[0] - box.x1) < 0.01
                ]
                loco = where[label.locomotive_id]
                # Plates are centred 2.2 m from the head end, on the cab side.
                along = 1.0 if loco.tail_m > loco.head_m else -1.0
                expected = loco.head_m + along * PLATE_CENTRE_A_M
                obs = est.observation
                assert obs is not None
                assert obs.kind == "plate"
                assert obs.track_id == label.track_id
                assert obs.position_m == pytest.approx(expected, abs=0.5)
                placed += 1
    assert placed >= 10


def test_camera_centre_is_recovered_from_the_calibration(facility: FacilityConfig) -> None:
    for cam in facility.cameras:
        assert cam.pose is not None
        centre = centre_from_homography(cam.floor_to_pixel, cam.width, cam.height)
        assert centre is not None
        assert centre == pytest.approx(cam.pose.position, abs=0.05)


def test_livery_check_on_rendered_plates(
    facility: FacilityConfig, cases: list[RenderedCase]
) -> None:
    n = 0
    for case in cases:
        image = cv2.imdecode(np.frombuffer(case.jpeg, np.uint8), cv2.IMREAD_COLOR)
        for lb in case.labels:
            if lb.cls != "plate":
                continue
            box = BoundingBox(x1=lb.box[0], y1=lb.box[1], x2=lb.box[2], y2=lb.box[3])
            match = livery_model(image, box, facility.locomotive_models)
            assert match is not None
            assert match.model == lb.model
            n += 1
    assert n >= 10


def test_a_frame_without_a_plate_box_is_answered_without_its_pixels(
    facility: FacilityConfig, cases: list[RenderedCase]
) -> None:
    class NeverCalled:
        def recognise(self, crops: Sequence[Image]) -> list[tuple[str, float]]:
            raise AssertionError("no plate box: nothing to read")

    empty = next(c for c in cases if all(lb.cls != "plate" for lb in c.labels))
    ((estimate, frame),) = positions_of([empty])
    assert not needs_frame(estimate)
    (outcome,) = reader(facility, NeverCalled())([(estimate, None)])
    (est,) = estimates_of([outcome])
    assert est.unreadable_reason == "no plate in view"
    assert est.frame == frame.ref
    # A plate box whose frame did not come is not answered as if no plate were there.
    with_plate = next(c for c in cases if any(lb.cls == "plate" for lb in c.labels))
    ((estimate, _),) = positions_of([with_plate])
    assert needs_frame(estimate)
    (rejected,) = reader(facility, NeverCalled())([(estimate, None)])
    assert isinstance(rejected, Rejected)


def test_plate_boxes_are_read_on_a_frame_decoded_at_any_size(
    facility: FacilityConfig, cases: list[RenderedCase], recogniser: RapidTextRecogniser
) -> None:
    """Boxes come in the frame's full-size pixels; a frame decoded at half size is cropped at
    the matching place, and what is published (box, place on the track) does not change."""
    with_plates = [c for c in cases if any(lb.cls == "plate" for lb in c.labels)][:6]
    full = estimates_of(reader(facility, recogniser)(positions_of(with_plates)))
    half = estimates_of(reader(facility, recogniser)(positions_of(with_plates, reduction=2)))
    assert len(full) == len(half) >= 6
    for a, b in zip(full, half, strict=True):
        assert a.plate_box == b.plate_box
        assert a.observation == b.observation
        assert b.locomotive_model == a.locomotive_model  # the livery is judged at the box


def test_the_self_test_passes_on_the_real_engine_and_fails_on_a_broken_one(
    facility: FacilityConfig, recogniser: RapidTextRecogniser
) -> None:
    reader(facility, recogniser).self_test()

    class Broken:
        def recognise(self, crops: Sequence[Image]) -> list[tuple[str, float]]:
            raise RuntimeError("session gone")

    with pytest.raises(RuntimeError, match="session gone"):
        reader(facility, Broken()).self_test()


def test_a_plate_seen_by_a_camera_without_calibration_is_not_placed(
    uncalibrated_facility: FacilityConfig,
) -> None:
    box = Detection(cls="plate", bbox=BoundingBox(x1=600, y1=300, x2=700, y2=330), confidence=0.9)
    tracks = uncalibrated_facility.tracks
    assert plate_observation(box, uncalibrated_facility.camera("cam-s1"), tracks) is None
    assert plate_observation(box, uncalibrated_facility.camera("cam-s2"), tracks) is not None
