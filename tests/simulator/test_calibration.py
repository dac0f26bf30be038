"""Calibration derived from a simulated camera's pose agrees with the pose."""

from __future__ import annotations

import pytest

from schemas.facility import ConfigError, FacilityConfig, parse_facility
from services.simulator.calibration import calibration_from_pose


def test_derived_calibration_reproduces_the_config(facility: FacilityConfig) -> None:
    for cam in facility.cameras:
        derived = calibration_from_pose(cam)
        assert [p["floor"] for p in derived] == [list(p.floor) for p in cam.calibration]
        for got, want in zip(derived, cam.calibration, strict=True):
            assert got["pixel"] == pytest.approx(list(want.pixel), abs=0.2)


def test_moved_camera_gets_a_calibration_the_config_check_accepts(
    facility: FacilityConfig,
) -> None:
    data = facility.model_dump(mode="json")
    cam = data["cameras"][0]
    cam["pose"] = {"position": [20.0, -4.0, 12.0], "look_at": [22.0, 8.0, 0.0], "hfov_deg": 70.0}
    with pytest.raises(ConfigError, match="re-derive the calibration"):
        parse_facility(data)  # the old calibration no longer matches the pose
    moved = facility.cameras[0].model_copy(
        update={"pose": facility.cameras[0].pose.model_copy(update=cam["pose"])}  # type: ignore[union-attr]
    )
    cam["calibration"] = calibration_from_pose(moved)
    assert parse_facility(data).cameras[0].pose is not None
