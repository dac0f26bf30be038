"""Plane geometry shared by config validation, the simulator and the estimators.

Pure numpy: homographies between image pixels and the facility floor (metres), and
positions along track polylines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Point = tuple[float, float]
FloatArray = NDArray[np.float64]


class DegenerateHomographyError(ValueError):
    """The point pairs do not determine a usable homography."""


def _normalising_transform(pts: FloatArray) -> FloatArray:
    centre = pts.mean(axis=0)
    spread = np.sqrt(((pts - centre) ** 2).sum(axis=1)).mean()
    if spread < 1e-9:
        raise DegenerateHomographyError("all points coincide")
    s = np.sqrt(2.0) / spread
    return np.array([[s, 0, -s * centre[0]], [0, s, -s * centre[1]], [0, 0, 1.0]])


def _collinear(pts: FloatArray, tolerance: float) -> bool:
    centred = pts - pts.mean(axis=0)
    singular = np.linalg.svd(centred, compute_uv=False)
    return bool(singular[-1] <= tolerance * max(singular[0], 1e-12))


def fit_homography(
    src: Sequence[Point] | FloatArray, dst: Sequence[Point] | FloatArray
) -> FloatArray:
    """Homography H with ``dst ~ H @ src`` from >= 4 point pairs (normalised DLT, least squares).

    Raises :class:`DegenerateHomographyError` when the points are too few, collinear, or the
    solution is singular.
    """
    a = np.asarray(src, dtype=np.float64)
    b = np.asarray(dst, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 2:
        raise DegenerateHomographyError("source and destination must be N x 2 with the same N")
    if len(a) < 4:
        raise DegenerateHomographyError(f"need at least 4 point pairs, got {len(a)}")
    for name, pts in (("pixel", a), ("floor", b)):
        if _collinear(pts, 1e-3):
            raise DegenerateHomographyError(f"the {name} points lie on one line")
    ta, tb = _normalising_transform(a), _normalising_transform(b)
    an = (ta @ np.c_[a, np.ones(len(a))].T).T
    bn = (tb @ np.c_[b, np.ones(len(b))].T).T
    rows = []
    for (x, y, _), (u, v, _) in zip(an, bn, strict=True):
        rows.append([-x, -y, -1, 0, 0, 0, u * x, u * y, u])
        rows.append([0, 0, 0, -x, -y, -1, v * x, v * y, v])
    _, _, vt = np.linalg.svd(np.asarray(rows))
    hn = vt[-1].reshape(3, 3)
    h = np.linalg.inv(tb) @ hn @ ta
    if abs(h[2, 2]) < 1e-12 or abs(np.linalg.det(h)) < 1e-12:
        raise DegenerateHomographyError("the homography is singular")
    h = h / h[2, 2]
    if np.linalg.cond(h) > 1e12:
        raise DegenerateHomographyError("the homography is numerically singular")
    return h


def apply_homography(h: FloatArray, points: Sequence[Point] | FloatArray) -> FloatArray:
    """Map N x 2 points through H. Points mapped to infinity come back as inf."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    hom = (h @ np.c_[pts, np.ones(len(pts))].T).T
    w = hom[:, 2:3]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = hom[:, :2] / w
    out[np.abs(w[:, 0]) < 1e-12] = np.inf
    return out


def reprojection_errors(
    h: FloatArray, src: Sequence[Point] | FloatArray, dst: Sequence[Point] | FloatArray
) -> FloatArray:
    """Distance between H(src) and dst for each pair."""
    mapped = apply_homography(h, src)
    return np.asarray(np.linalg.norm(mapped - np.asarray(dst, dtype=np.float64), axis=1))


def least_consistent_point(
    src: Sequence[Point] | FloatArray, dst: Sequence[Point] | FloatArray
) -> tuple[int, float]:
    """The pair that agrees least with the others (the one to re-measure) and how far off it is.

    Returns its index and its distance (in ``dst`` units) from where the homography fitted to
    the other pairs maps its source point.

    The largest residual of a least-squares fit often points at an innocent pair, because one
    bad pair drags the whole fit towards itself. Instead each pair is left out in turn: the
    culprit is the pair whose removal makes the others agree best (and, on ties, which the
    others predict worst). With 4 pairs every fit is exact, so it falls back to the residual.
    """
    a = np.asarray(src, dtype=np.float64)
    b = np.asarray(dst, dtype=np.float64)
    errors = reprojection_errors(fit_homography(a, b), a, b)
    worst = int(np.argmax(errors))
    if len(a) < 5:
        return worst, float(errors[worst])
    scores: list[tuple[float, float]] = []
    for i in range(len(a)):
        keep = np.arange(len(a)) != i
        try:
            hi = fit_homography(a[keep], b[keep])
        except DegenerateHomographyError:
            scores.append((np.inf, 0.0))
            continue
        rest = float(reprojection_errors(hi, a[keep], b[keep]).max())
        held_out = float(reprojection_errors(hi, a[~keep], b[~keep])[0])
        scores.append((rest, -held_out))
    culprit = min(range(len(a)), key=lambda i: scores[i])
    if not np.isfinite(scores[culprit][0]):
        return worst, float(errors[worst])  # no pair can be left out without degeneracy
    return culprit, -scores[culprit][1]


@dataclass(frozen=True)
class TrackPoint:
    """Nearest point on a polyline: arc length from its start and distance to it."""

    position_m: float
    distance_m: float


def polyline_length(polyline: Sequence[Point]) -> float:
    """Total length of a polyline in its units."""
    pts = np.asarray(polyline, dtype=np.float64)
    return float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())


def locate_on_polyline(polyline: Sequence[Point], point: Point) -> TrackPoint:
    """Project ``point`` onto the polyline: arc length of the nearest point and the distance."""
    pts = np.asarray(polyline, dtype=np.float64)
    p = np.asarray(point, dtype=np.float64)
    starts, ends = pts[:-1], pts[1:]
    seg = ends - starts
    seg_len = np.linalg.norm(seg, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.clip(((p - starts) * seg).sum(axis=1) / (seg_len**2), 0.0, 1.0)
    t = np.nan_to_num(t)
    nearest = starts + seg * t[:, None]
    dist = np.linalg.norm(nearest - p, axis=1)
    i = int(np.argmin(dist))
    along = float(seg_len[:i].sum() + seg_len[i] * t[i])
    return TrackPoint(position_m=along, distance_m=float(dist[i]))


def point_at_position(polyline: Sequence[Point], position_m: float) -> tuple[Point, Point]:
    """Floor point at arc length ``position_m`` and the unit direction of the track there.

    Positions beyond either end are extrapolated along the end segment.
    """
    pts = np.asarray(polyline, dtype=np.float64)
    seg = np.diff(pts, axis=0)
    seg_len = np.linalg.norm(seg, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    i = int(np.clip(np.searchsorted(cum, position_m, side="right") - 1, 0, len(seg) - 1))
    direction = seg[i] / seg_len[i]
    xy = pts[i] + direction * (position_m - cum[i])
    return (float(xy[0]), float(xy[1])), (float(direction[0]), float(direction[1]))


def pinhole_floor_homography(
    position: Sequence[float],
    look_at: Sequence[float],
    hfov_deg: float,
    width: int,
    height: int,
) -> FloatArray:
    """Floor(z=0, metres) -> pixel homography of an ideal pinhole camera.

    The camera stands at ``position`` (x, y, z metres), looks at ``look_at`` with the world z
    axis up, and has horizontal field of view ``hfov_deg`` over ``width`` pixels.
    """
    k, r, t = pinhole_extrinsics(position, look_at, hfov_deg, width, height)
    h = k @ np.c_[r[:, 0], r[:, 1], t]
    return np.asarray(h / h[2, 2])


def pinhole_extrinsics(
    position: Sequence[float],
    look_at: Sequence[float],
    hfov_deg: float,
    width: int,
    height: int,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Intrinsics K, rotation R (world -> camera) and translation t of a pinhole camera.

    Camera axes: x right, y down, z forward (OpenCV convention).
    """
    c = np.asarray(position, dtype=np.float64)
    forward = np.asarray(look_at, dtype=np.float64) - c
    norm = np.linalg.norm(forward)
    if norm < 1e-9:
        raise ValueError("camera position and look_at coincide")
    forward /= norm
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    if np.linalg.norm(right) < 1e-6:
        raise ValueError("camera looks straight up or down; tilt it slightly")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    r = np.vstack([right, down, forward])
    fx = (width / 2.0) / np.tan(np.radians(hfov_deg) / 2.0)
    k = np.array([[fx, 0.0, width / 2.0], [0.0, fx, height / 2.0], [0.0, 0.0, 1.0]])
    return k, r, -r @ c


def stretches(
    positions: Sequence[float] | FloatArray, mask: Sequence[bool] | NDArray[np.bool_], step_m: float
) -> list[tuple[float, float]]:
    """(first, last) position of every run of consecutive samples where ``mask`` holds.

    ``positions`` are samples ``step_m`` apart along a track; a run ends one step before the
    first sample where the mask fails (the last sample closes an open run).
    """
    out: list[tuple[float, float]] = []
    start: float | None = None
    for pos, hit in zip(positions, mask, strict=True):
        if hit and start is None:
            start = float(pos)
        elif not hit and start is not None:
            out.append((start, float(pos) - step_m))
            start = None
    if start is not None and len(positions):
        out.append((start, float(positions[-1])))
    return out
