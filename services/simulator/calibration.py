"""Calibration points (pixel <-> floor) of a simulated camera, derived from its pose.

The simulator renders from the pose; the estimators map pixels to the floor with the
calibration homography. Deriving one from the other keeps them in agreement (the facility
config check rejects a calibration more than 3 px off its pose).
"""

from __future__ import annotations

import numpy as np

from schemas.facility import Camera
from schemas.geometry import apply_homography, pinhole_floor_homography


def calibration_from_pose(camera: Camera) -> list[dict[str, list[float]]]:
    """Four ``{pixel, floor}`` pairs consistent with ``camera.pose``.

    Reuses the floor points of the current calibration when all of them are in view, so a
    re-derived calibration changes only pixels; otherwise uses floor points seen near the
    image corners (10 % / 90 % across, 25 % / 80 % down), rounded to 5 cm.
    """
    if camera.pose is None:
        raise ValueError(f"camera {camera.id} has no pose to derive a calibration from")
    h = pinhole_floor_homography(
        camera.pose.position, camera.pose.look_at, camera.pose.hfov_deg, camera.width, camera.height
    )
    floor = np.asarray([p.floor for p in camera.calibration], dtype=np.float64)
    pixels = apply_homography(h, floor)
    inside = np.all(np.isfinite(pixels)) and bool(
        np.all((pixels[:, 0] >= 0) & (pixels[:, 0] <= camera.width))
        and np.all((pixels[:, 1] >= 0) & (pixels[:, 1] <= camera.height))
    )
    if not inside:
        w, hgt = camera.width, camera.height
        corners = [(0.1 * w, 0.8 * hgt), (0.9 * w, 0.8 * hgt), (0.1 * w, 0.25 * hgt),
                   (0.9 * w, 0.25 * hgt)]  # fmt: skip
        inverse = np.asarray(np.linalg.inv(h), dtype=np.float64)
        floor = np.asarray(np.round(apply_homography(inverse, corners) / 0.05) * 0.05, np.float64)
        pixels = apply_homography(h, floor)
    return [
        {
            "pixel": [round(float(u), 1), round(float(v), 1)],
            "floor": [round(float(x), 2), round(float(y), 2)],
        }
        for (u, v), (x, y) in zip(pixels, floor, strict=True)
    ]
