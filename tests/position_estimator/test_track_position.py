"""The position core with hand-made detections and the example facility's calibration."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from schemas.estimates import BoundingBox, Detection, PositionEstimate
from schemas.facility import FacilityConfig, load_facility, place_on_tracks
from schemas.frames import FrameRef
from schemas.geometry import apply_homography
from services.position_estimator.estimator import PositionEstimator
from services.position_estimator.track_position import (
    floor_contact_pixel,
    observe,
)
from services.runtime.frames import DecodedFrame, Image, Rejected

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def facility() -> FacilityConfig:
    return load_facility(ROOT / "facility.yaml")


def end_box(facility: FacilityConfig, camera_id: str, floor: tuple[float, float]) -> BoundingBox:
    """A 60 x 40 px box whose bottom-centre pixel shows ``floor``."""
    cam = facility.camera(camera_id)
    u, v = apply_homography(cam.floor_to_pixel, [floor])[0]
    return BoundingBox(x1=u - 30, y1=v - 40, x2=u + 30, y2=v)


def frame_ref(camera_id: str, width: int = 1280, height: int = 720, seq: int = 1) -> FrameRef:
    return FrameRef(
        camera_id=camera_id,
        seq=seq,
        captured_at=NOW,
        bucket="frames",
        key=f"{camera_id}/{seq}.jpg",
        width=width,
        height=height,
        size=1000,
        sha256="0" * 64,
    )


def test_floor_contact_pixel_is_bottom_centre() -> None:
    assert floor_contact_pixel(BoundingBox(x1=10, y1=20, x2=30, y2=60)) == (20.0, 60.0)


@pytest.mark.parametrize(
    ("camera_id", "floor", "track", "position"),
    [
        ("cam-s1", (8.0, 4.0), "T1", 8.0),  # near track of a south camera
        ("cam-s1", (6.0, 9.0), "T2", 6.0),  # middle track, far side of the image
        ("cam-s2", (20.5, 4.6), "T1", 20.5),  # off the centre line but within tolerance
        ("cam-n1", (5.0, 14.0), "T3", 5.0),  # north camera, mirrored calibration
        ("cam-n4", (44.0, 9.0), "T2", 44.0),
    ],
)
def test_end_on_track(
    facility: FacilityConfig,
    camera_id: str,
    floor: tuple[float, float],
    track: str,
    position: float,
) -> None:
    det = Detection(cls="head", bbox=end_box(facility, camera_id, floor), confidence=0.9)
    obs = observe(det, facility.camera(camera_id), facility.tracks)
    assert obs is not None
    assert obs.track_id == track
    assert obs.position_m == pytest.approx(position, abs=0.01)
    assert obs.floor_x_m == pytest.approx(floor[0], abs=0.01)
    assert obs.floor_y_m == pytest.approx(floor[1], abs=0.01)
    assert obs.kind == "head"
    assert obs.confidence == 0.9


def test_between_tracks_is_off_track(facility: FacilityConfig) -> None:
    # y = 6.5 is 2.5 m from T1 and T2, beyond their 2 m tolerance.
    det = Detection(cls="tail", bbox=end_box(facility, "cam-s1", (5.0, 6.5)), confidence=0.8)
    obs = observe(det, facility.camera("cam-s1"), facility.tracks)
    assert obs is not None
    assert obs.track_id is None
    assert obs.position_m is None
    assert obs.distance_to_track_m == pytest.approx(2.5, abs=0.01)


def test_nearest_of_two_tracks_wins(facility: FacilityConfig) -> None:
    track, position, distance = place_on_tracks((10.0, 7.0), facility.tracks)
    assert track is not None
    assert track.id == "T2"
    assert position == pytest.approx(10.0)
    assert distance == pytest.approx(2.0)


def estimator(
    facility: FacilityConfig, detections: dict[str, list[Detection]]
) -> PositionEstimator:
    class ByCamera:
        """Returns the detections planted for each camera; the image's marker pixel says which."""

        def __init__(self) -> None:
            self.batches: list[int] = []

        def detect(self, images: Sequence[Image]) -> list[list[Detection]]:
            self.batches.append(len(images))
            cams = [facility.cameras[int(img[0, 0, 0])].id for img in images]
            return [detections.get(c, []) for c in cams]

    return PositionEstimator(
        facility=lambda: facility,
        detector=ByCamera(),
        flow="dev",
        estimator="position-estimator/test",
        model_version="m1",
        clock=lambda: NOW,
    )


def decoded(facility: FacilityConfig, ref: FrameRef) -> DecodedFrame:
    img = np.zeros((ref.height, ref.width, 3), np.uint8)
    ids = [c.id for c in facility.cameras]
    img[0, 0, 0] = ids.index(ref.camera_id) if ref.camera_id in ids else 255
    return DecodedFrame(ref=ref, image=img)


def test_batch_handler_places_heads_and_tails_not_plates(facility: FacilityConfig) -> None:
    head = Detection(cls="head", bbox=end_box(facility, "cam-s1", (8.0, 4.0)), confidence=0.9)
    plate = Detection(cls="plate", bbox=BoundingBox(x1=5, y1=5, x2=50, y2=20), confidence=0.7)
    tail = Detection(cls="tail", bbox=end_box(facility, "cam-n2", (14.0, 14.0)), confidence=0.6)
    handle = estimator(facility, {"cam-s1": [head, plate], "cam-n2": [tail]})
    refs = [frame_ref("cam-s1"), frame_ref("cam-n2"), frame_ref("cam-s3")]
    outcomes = handle([decoded(facility, r) for r in refs])
    assert len(outcomes) == 3
    s1, n2, s3 = (o for o in outcomes if not isinstance(o, Rejected))
    est = s1[0]
    assert isinstance(est, PositionEstimate)
    assert est.flow == "dev"
    assert est.model_version == "m1"
    assert est.camera_id == "cam-s1"
    assert est.topic_name(est.flow) == "positions.dev.v1"
    assert [d.cls for d in est.detections] == ["head", "plate"]
    assert [(o.kind, o.track_id) for o in est.observations] == [("head", "T1")]
    assert isinstance(n2[0], PositionEstimate)
    assert isinstance(s3[0], PositionEstimate)
    assert [(o.kind, o.track_id, o.position_m) for o in n2[0].observations] == [
        ("tail", "T3", pytest.approx(14.0, abs=0.01))
    ]
    assert s3[0].detections == []
    assert handle.detector.batches == [3]  # type: ignore[attr-defined]


def test_frame_at_another_resolution_is_scaled_to_the_calibration(facility: FacilityConfig) -> None:
    full = end_box(facility, "cam-s1", (8.0, 4.0))
    half = BoundingBox(x1=full.x1 / 2, y1=full.y1 / 2, x2=full.x2 / 2, y2=full.y2 / 2)
    handle = estimator(facility, {"cam-s1": [Detection(cls="head", bbox=half, confidence=0.9)]})
    (outcome,) = handle([decoded(facility, frame_ref("cam-s1", 640, 360))])
    assert not isinstance(outcome, Rejected)
    (obs,) = outcome[0].observations  # type: ignore[attr-defined]
    assert obs.position_m == pytest.approx(8.0, abs=0.02)
    assert outcome[0].detections[0].bbox == half  # type: ignore[attr-defined]


def test_a_camera_without_calibration_keeps_its_detections_but_places_none(
    uncalibrated_facility: FacilityConfig,
) -> None:
    # cam-s1 is a browser camera with no calibration; cam-s2 is calibrated as ever.
    head = Detection(cls="head", bbox=BoundingBox(x1=600, y1=500, x2=660, y2=540), confidence=0.9)
    handle = estimator(uncalibrated_facility, {"cam-s1": [head], "cam-s2": [head]})
    s1, s2 = handle([decoded(uncalibrated_facility, frame_ref(c)) for c in ("cam-s1", "cam-s2")])
    assert isinstance(s1, list)
    assert isinstance(s2, list)
    assert s1[0].detections == [head]  # type: ignore[union-attr]
    assert s1[0].observations == []  # type: ignore[union-attr]
    assert len(s2[0].observations) == 1  # type: ignore[union-attr]


def test_unknown_camera_is_rejected_with_the_fix(facility: FacilityConfig) -> None:
    handle = estimator(facility, {})
    (outcome,) = handle([decoded(facility, frame_ref("cam-x9"))])
    assert isinstance(outcome, Rejected)
    assert "cam-x9" in outcome.reason
    assert "facility config" in outcome.reason


def test_frame_decoded_at_half_size_is_published_in_full_size_pixels(
    facility: FacilityConfig,
) -> None:
    full = end_box(facility, "cam-s1", (8.0, 4.0))
    half = BoundingBox(x1=full.x1 / 2, y1=full.y1 / 2, x2=full.x2 / 2, y2=full.y2 / 2)
    handle = estimator(facility, {"cam-s1": [Detection(cls="head", bbox=half, confidence=0.9)]})
    ref = frame_ref("cam-s1")  # stored at 1280 x 720, decoded at 640 x 360
    image = np.zeros((360, 640, 3), np.uint8)
    image[0, 0, 0] = 0  # cam-s1 is camera 0
    (outcome,) = handle([DecodedFrame(ref=ref, image=image)])
    assert not isinstance(outcome, Rejected)
    est = outcome[0]
    assert isinstance(est, PositionEstimate)
    assert est.detections[0].bbox.x2 == pytest.approx(full.x2)
    assert est.observations[0].position_m == pytest.approx(8.0, abs=0.02)
