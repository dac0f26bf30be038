"""Which stretch of each track a camera can see, derived from its calibration.

The fusion core needs this to tell "this camera shows nothing here" (evidence that a
locomotive end left) from "this camera cannot see here" (no evidence at all).
"""

from __future__ import annotations

import numpy as np

from schemas.facility import Camera, FacilityConfig, Track
from schemas.geometry import point_at_position

Interval = tuple[float, float]

SAMPLE_STEP_M = 0.2
"""Resolution of the coverage intervals along a track."""


def track_coverage(camera: Camera, track: Track, step_m: float = SAMPLE_STEP_M) -> list[Interval]:
    """Intervals of ``position_m`` on ``track`` whose floor point lies inside ``camera``'s image."""
    length = track.length_m
    positions = np.arange(0.0, length + step_m / 2, step_m)
    floor = np.array([point_at_position(track.polyline, float(p))[0] for p in positions])
    h = camera.floor_to_pixel
    hom = (h @ np.c_[floor, np.ones(len(floor))].T).T
    # The homography's overall sign is arbitrary: points in front of the camera share the sign
    # of w at the calibration points, which the camera certainly sees.
    calib = np.array([p.floor for p in camera.calibration], dtype=np.float64)
    w_ref = (h @ np.c_[calib, np.ones(len(calib))].T).T[:, 2]
    sign = 1.0 if float(np.median(w_ref)) > 0 else -1.0
    w = hom[:, 2] * sign
    with np.errstate(divide="ignore", invalid="ignore"):
        u = hom[:, 0] / hom[:, 2]
        v = hom[:, 1] / hom[:, 2]
    visible = (w > 1e-9) & (u >= 0) & (u <= camera.width) & (v >= 0) & (v <= camera.height)
    intervals: list[Interval] = []
    start: float | None = None
    for pos, vis in zip(positions, visible, strict=True):
        if vis and start is None:
            start = float(pos)
        elif not vis and start is not None:
            intervals.append((start, float(pos) - step_m))
            start = None
    if start is not None:
        intervals.append((start, float(positions[-1])))
    return [(lo, hi) for lo, hi in intervals if hi > lo]


def facility_coverage(cfg: FacilityConfig) -> dict[str, dict[str, list[Interval]]]:
    """camera_id -> track_id -> visible intervals, for every camera and track of the facility."""
    return {
        cam.id: {t.id: cov for t in cfg.tracks if (cov := track_coverage(cam, t))}
        for cam in cfg.cameras
    }


def covers(intervals: list[Interval], position_m: float, margin_m: float = 0.0) -> bool:
    """Whether ``position_m`` lies inside one of ``intervals`` shrunk by ``margin_m`` each side."""
    return any(lo + margin_m <= position_m <= hi - margin_m for lo, hi in intervals)
