"""Which stretch of each track a camera can see, derived from its calibration.

The fusion core needs this to tell "this camera shows nothing here" (evidence that a
locomotive end left) from "this camera cannot see here" (no evidence at all).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from schemas.facility import Camera, FacilityConfig, Track
from schemas.geometry import FloatArray, point_at_position, stretches

Interval = tuple[float, float]

SAMPLE_STEP_M = 0.2
"""Resolution of the coverage intervals along a track."""


def project_track(
    camera: Camera, track: Track, positions: FloatArray
) -> tuple[FloatArray, FloatArray, NDArray[np.bool_]]:
    """(u, v, in_front) of the track's centre line at ``positions`` in ``camera``'s image."""
    floor = np.array([point_at_position(track.polyline, float(p))[0] for p in positions])
    h = camera.floor_to_pixel
    hom = (h @ np.c_[floor, np.ones(len(floor))].T).T
    # The homography's overall sign is arbitrary: points in front of the camera share the sign
    # of w at the calibration points, which the camera certainly sees.
    calib = np.array([p.floor for p in camera.calibration], dtype=np.float64)
    w_ref = (h @ np.c_[calib, np.ones(len(calib))].T).T[:, 2]
    sign = 1.0 if float(np.median(w_ref)) > 0 else -1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        u = hom[:, 0] / hom[:, 2]
        v = hom[:, 1] / hom[:, 2]
    return u, v, hom[:, 2] * sign > 1e-9


def track_coverage(camera: Camera, track: Track, step_m: float = SAMPLE_STEP_M) -> list[Interval]:
    """Intervals of ``position_m`` on ``track`` whose floor point lies inside ``camera``'s image."""
    positions = np.arange(0.0, track.length_m + step_m / 2, step_m)
    u, v, front = project_track(camera, track, positions)
    visible = front & (u >= 0) & (u <= camera.width) & (v >= 0) & (v <= camera.height)
    return [(lo, hi) for lo, hi in stretches(positions, visible, step_m) if hi > lo]


def facility_coverage(cfg: FacilityConfig) -> dict[str, dict[str, list[Interval]]]:
    """camera_id -> track_id -> visible intervals, for every calibrated camera and track of
    the facility (a camera without calibration sees nothing the fusion can use)."""
    return {
        cam.id: {t.id: cov for t in cfg.tracks if (cov := track_coverage(cam, t))}
        for cam in cfg.cameras
        if cam.calibrated
    }


def in_view(
    intervals: list[Interval], position_m: float, edge_margin_m: float, length_m: float
) -> bool:
    """Whether a position lies in a camera's view of a track (``intervals``), at least
    ``edge_margin_m`` from an image edge (where an end is cut off and often missed).

    The track's own ends are no image edge: an interval reaching a track end (within one
    coverage sample) keeps its full extent there.
    """
    for lo, hi in intervals:
        lo_edge = lo + (edge_margin_m if lo > 1e-6 else 0.0)
        hi_edge = hi - (edge_margin_m if hi < length_m - 0.25 else 0.0)
        if lo_edge <= position_m <= hi_edge:
            return True
    return False


@dataclass(frozen=True)
class TrackInImage:
    """Where a track's centre line lies in one camera's image, sampled along the track.

    ``u`` (column) and ``v`` (row) of the floor point at each ``position_m``; samples behind
    the camera are left out. From the calibration alone, no camera pose needed.
    """

    positions: tuple[float, ...]
    u: tuple[float, ...]
    v: tuple[float, ...]

    @cached_property
    def _by_position(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        return np.asarray(self.positions), np.asarray(self.u), np.asarray(self.v)

    @cached_property
    def _by_column(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        pos, u, v = self._by_position
        order = np.argsort(u)
        return u[order], pos[order], v[order]

    def pixel(self, position_m: float) -> tuple[float, float] | None:
        """(u, v) of a position, interpolated; None outside the sampled stretch."""
        pos, u, v = self._by_position
        if len(pos) == 0 or not pos[0] <= position_m <= pos[-1]:
            return None
        return float(np.interp(position_m, pos, u)), float(np.interp(position_m, pos, v))

    def position_at_column(self, u: float) -> tuple[float, float] | None:
        """(position_m, v) of the point on this track that appears in image column ``u``."""
        cols, pos, rows = self._by_column
        if len(cols) < 2 or not cols[0] <= u <= cols[-1]:
            return None
        return float(np.interp(u, cols, pos)), float(np.interp(u, cols, rows))


def track_in_image(
    camera: Camera, track: Track, reach_m: float = 30.0, step_m: float = SAMPLE_STEP_M
) -> TrackInImage:
    """Image columns and rows of ``track``'s centre line, ``reach_m`` beyond both ends too
    (a locomotive partly outside the depot still hides what stands behind it)."""
    positions = np.arange(-reach_m, track.length_m + reach_m + step_m / 2, step_m)
    u, v, front = project_track(camera, track, positions)
    # Keep a wide band around the image: a locomotive just outside the frame does not matter,
    # but points far behind the camera's horizon would wrap around.
    keep = front & (np.abs(u - camera.width / 2) <= 2 * camera.width)
    keep &= np.abs(v - camera.height / 2) <= 2 * camera.height
    return TrackInImage(
        positions=tuple(float(p) for p in positions[keep]),
        u=tuple(float(x) for x in u[keep]),
        v=tuple(float(y) for y in v[keep]),
    )


def facility_sightlines(cfg: FacilityConfig) -> dict[str, dict[str, TrackInImage]]:
    """camera_id -> track_id -> where that track lies in the camera's image (calibrated
    cameras only)."""
    return {
        cam.id: {t.id: track_in_image(cam, t) for t in cfg.tracks}
        for cam in cfg.cameras
        if cam.calibrated
    }


def hidden_behind(
    sightlines: dict[str, TrackInImage],
    track_id: str,
    position_m: float,
    occluders: list[tuple[str, float, float]],
    margin_m: float = 0.3,
) -> bool:
    """Whether a locomotive end at ``position_m`` on ``track_id`` is hidden in this camera's
    image by one of ``occluders`` ((track_id, low_m, high_m) of locomotives on other tracks).

    A locomotive is a tall box standing on its track: it hides what stands on a farther track
    in the image columns it covers. Farther means higher up in the image (smaller row) in
    that column. ``margin_m`` widens each occluder (negative: narrows it).
    """
    return any(hiders(sightlines, track_id, position_m, occluders, margin_m))


def hiders(
    sightlines: dict[str, TrackInImage],
    track_id: str,
    position_m: float,
    occluders: list[tuple[str, float, float]],
    margin_m: float = 0.3,
) -> Iterator[tuple[str, float, float]]:
    """The ``occluders`` that hide a locomotive end at ``position_m`` on ``track_id`` in this
    camera's image, one by one (see :func:`hidden_behind`); none when it is in plain sight."""
    line = sightlines.get(track_id)
    at = line.pixel(position_m) if line is not None else None
    if at is None:
        return
    u, v = at
    for occluder in occluders:
        other_track, lo, hi = occluder
        if other_track == track_id:
            continue
        other = sightlines.get(other_track)
        crossing = other.position_at_column(u) if other is not None else None
        if crossing is None:
            continue
        position, row = crossing
        if row > v and lo - margin_m <= position <= hi + margin_m:
            yield occluder
