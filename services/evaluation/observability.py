"""What a camera can physically see: sight lines blocked by locomotive bodies (pure numpy).

The modelled detector (``fusion_eval``) asks this before it reports an end or a plate: a
locomotive is a box (``BODY_WIDTH_M`` wide, ``BODY_HEIGHT_M`` tall) standing on its track,
and a point is hidden from a camera when the straight line from the camera to the point
passes through another locomotive's box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from schemas.geometry import FloatArray

BODY_WIDTH_M = 3.0
BODY_HEIGHT_M = 4.5


def locomotive_box(
    end_a: Sequence[float],
    end_b: Sequence[float],
    width_m: float = BODY_WIDTH_M,
    height_m: float = BODY_HEIGHT_M,
) -> FloatArray:
    """A locomotive body between the floor points of its two ends, as one row of
    ``(centre x, centre y, axis x, axis y, half length, half width, height)``.

    On a curved track the body is the chord between its ends (a few cm off on gentle curves).
    """
    a = np.asarray(end_a, dtype=np.float64)
    b = np.asarray(end_b, dtype=np.float64)
    length = float(np.linalg.norm(b - a))
    axis = (b - a) / length if length > 1e-9 else np.array([1.0, 0.0])
    centre = (a + b) / 2
    return np.array([centre[0], centre[1], axis[0], axis[1], length / 2, width_m / 2, height_m])


def sightlines_blocked(
    camera: Sequence[float],
    targets: Sequence[Sequence[float]] | FloatArray,
    boxes: Sequence[FloatArray] | FloatArray,
    ignore: NDArray[np.bool_] | None = None,
) -> NDArray[np.bool_]:
    """For each 3-D target point, whether the segment from ``camera`` to it crosses a box.

    ``boxes`` are rows made by :func:`locomotive_box`; ``ignore[i, j]`` leaves box ``j`` out
    for target ``i`` (the locomotive the target belongs to). Slab test in each box's frame.
    """
    pts = np.asarray(targets, dtype=np.float64).reshape(-1, 3)
    bx = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    if len(pts) == 0 or len(bx) == 0:
        return np.zeros(len(pts), dtype=bool)
    c = np.asarray(camera, dtype=np.float64)
    d = pts - c  # (T, 3): segment direction, parameter s in [0, 1]
    axis = bx[:, 2:4]
    normal = np.c_[-axis[:, 1], axis[:, 0]]
    rel = c[:2] - bx[:, 0:2]  # (B, 2)
    # Origin and direction of every segment in every box's frame: (T, B) each.
    origins = [
        (rel * axis).sum(1)[None, :],
        (rel * normal).sum(1)[None, :],
        np.full((1, len(bx)), c[2]),
    ]
    dirs = [d[:, :2] @ axis.T, d[:, :2] @ normal.T, np.repeat(d[:, 2:3], len(bx), axis=1)]
    lows = [-bx[:, 4], -bx[:, 5], np.zeros(len(bx))]
    highs = [bx[:, 4], bx[:, 5], bx[:, 6]]
    enter = np.zeros((len(pts), len(bx)))
    leave = np.ones((len(pts), len(bx)))
    for o, v, lo, hi in zip(origins, dirs, lows, highs, strict=True):
        flat = np.abs(v) < 1e-12
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (lo[None, :] - o) / v
            t2 = (hi[None, :] - o) / v
        near = np.where(flat, -np.inf, np.minimum(t1, t2))
        far = np.where(flat, np.inf, np.maximum(t1, t2))
        # A segment parallel to a slab is inside it everywhere or nowhere.
        outside = flat & ((o < lo[None, :]) | (o > hi[None, :]))
        near = np.where(outside, np.inf, near)
        enter = np.maximum(enter, near)
        leave = np.minimum(leave, far)
    hit = enter < leave
    if ignore is not None:
        hit &= ~ignore
    return np.asarray(hit.any(axis=1))
