"""Where a number plate stands along a track (pure geometry).

A plate hangs above the floor, so the floor homography alone misplaces it: the floor point
behind its bottom edge lies farther from the camera than the plate. Knowing the camera centre
C (from its pose, or recovered from the calibration homography) and the plate's height z, the
point of the viewing ray at height z is P + (C - P) * z / C_z, where P is the floor point the
homography gives. Its floor projection is then placed on the nearest track.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from schemas.estimates import Detection, TrackObservation
from schemas.facility import Camera, Track, place_on_tracks
from schemas.geometry import FloatArray, apply_homography

PLATE_BOTTOM_HEIGHT_M = 2.2
"""Height of a plate's lower edge above rail level (cab-side plates of the fleet)."""


def camera_centre(camera: Camera) -> FloatArray | None:
    """The camera's (x, y, z) in facility metres: its pose, or recovered from the calibration.

    Recovery assumes an ideal pinhole camera (square pixels, principal point at the image
    centre) and solves the focal length from the floor homography; None if that fails.
    """
    if camera.pose is not None:
        return np.asarray(camera.pose.position, dtype=np.float64)
    return centre_from_homography(camera.floor_to_pixel, camera.width, camera.height)


def centre_from_homography(h: FloatArray, width: int, height: int) -> FloatArray | None:
    """Camera centre from a floor (z=0) -> pixel homography of an ideal pinhole camera."""
    k0_inv = np.array([[1.0, 0, -width / 2.0], [0, 1.0, -height / 2.0], [0, 0, 1.0]])
    a = k0_inv @ h
    a1, a2 = a[:, 0], a[:, 1]
    # Two constraints on f: r1 . r2 = 0 and |r1| = |r2|; use the better-conditioned one.
    candidates = []
    den_orth = a1[2] * a2[2]
    if abs(den_orth) > 1e-12:
        candidates.append((abs(den_orth), -(a1[0] * a2[0] + a1[1] * a2[1]) / den_orth))
    den_norm = a2[2] ** 2 - a1[2] ** 2
    if abs(den_norm) > 1e-12:
        num = (a1[0] ** 2 + a1[1] ** 2) - (a2[0] ** 2 + a2[1] ** 2)
        candidates.append((abs(den_norm), num / den_norm))
    usable = [(w, f2) for w, f2 in candidates if f2 > 0]
    if not usable:
        return None
    f = float(np.sqrt(max(usable)[1]))
    m = np.diag([1.0 / f, 1.0 / f, 1.0]) @ a
    scale = 2.0 / (np.linalg.norm(m[:, 0]) + np.linalg.norm(m[:, 1]))
    for sign in (1.0, -1.0):
        r1, r2, t = (sign * scale * m[:, i] for i in range(3))
        r = np.column_stack([r1, r2, np.cross(r1, r2)])
        centre = -r.T @ t
        if centre[2] > 0:
            return np.asarray(centre)
    return None


def plate_floor_point(
    det: Detection, camera: Camera, scale: tuple[float, float] = (1.0, 1.0)
) -> tuple[float, float] | None:
    """Floor (x, y) under the plate's lower edge, corrected for its height when possible;
    None for a camera without calibration."""
    if not camera.calibrated:
        return None
    pixel = ((det.bbox.x1 + det.bbox.x2) / 2.0 * scale[0], det.bbox.y2 * scale[1])
    floor = apply_homography(camera.pixel_to_floor, [pixel])[0]
    if not np.all(np.isfinite(floor)):
        return None
    centre = camera_centre(camera)
    if centre is None or centre[2] <= PLATE_BOTTOM_HEIGHT_M:
        return float(floor[0]), float(floor[1])
    point = floor + (centre[:2] - floor) * (PLATE_BOTTOM_HEIGHT_M / centre[2])
    return float(point[0]), float(point[1])


def plate_observation(
    det: Detection,
    camera: Camera,
    tracks: Sequence[Track],
    scale: tuple[float, float] = (1.0, 1.0),
) -> TrackObservation | None:
    """The plate placed on the floor and, if close enough, on a track (kind ``plate``)."""
    point = plate_floor_point(det, camera, scale)
    if point is None:
        return None
    track, position, distance = place_on_tracks(point, tracks)
    return TrackObservation(
        kind="plate",
        floor_x_m=round(point[0], 3),
        floor_y_m=round(point[1], 3),
        track_id=track.id if track is not None else None,
        position_m=round(position, 3) if position is not None else None,
        distance_to_track_m=round(distance, 3) if distance is not None else None,
        confidence=det.confidence,
    )
