"""The visual check: a locomotive model from the body colour around its number plate (pure).

Every model has its own livery (``livery`` in the facility config, RGB). Lighting scales all
channels alike, so colours are compared as chromaticity (each channel's share of the sum),
which does not change when the depot gets darker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from schemas.estimates import BoundingBox
from schemas.facility import LocomotiveModel
from services.runtime.frames import Image

MIN_PIXELS = 24
"""Fewer body pixels than this beside the plate: too little to judge a colour."""
MAX_CHROMA_DISTANCE = 0.15
"""A body colour farther than this from every livery is not any model's livery."""
MIN_SATURATION = 0.08
"""Grey (unsaturated) pixels are floor, roof or shadow, not a livery."""


@dataclass(frozen=True)
class LiveryMatch:
    """The model whose livery the body colour is closest to."""

    model: str
    confidence: float
    body_rgb: tuple[int, int, int]


def chromaticity(rgb: Sequence[float]) -> np.ndarray:
    """(r, g, b) / (r + g + b): the colour without its brightness."""
    arr = np.asarray(rgb, dtype=np.float64)
    return arr / max(float(arr.sum()), 1e-6)


def body_colour(image: Image, plate: BoundingBox) -> tuple[int, int, int] | None:
    """Median RGB of the body beside the plate (strips left and right of it, same rows).

    The plate sits in the middle of the cab side, with livery paint on both sides at its height.
    Returns None when too few coloured pixels are in view.
    """
    h, w = image.shape[:2]
    bw, bh = plate.x2 - plate.x1, plate.y2 - plate.y1
    y0, y1 = int(plate.y1 + 0.2 * bh), int(np.ceil(plate.y2 - 0.2 * bh))
    strips = []
    for x0, x1 in (
        (plate.x1 - 0.45 * bw, plate.x1 - 0.1 * bw),
        (plate.x2 + 0.1 * bw, plate.x2 + 0.45 * bw),
    ):
        xa, xb = max(0, int(x0)), min(w, int(np.ceil(x1)))
        if xb > xa and y1 > y0:
            strips.append(image[max(0, y0) : min(h, y1), xa:xb].reshape(-1, 3))
    if not strips:
        return None
    bgr = np.concatenate(strips).astype(np.float64)
    # Keep coloured pixels only: the window glass, roof and floor are greys.
    mx, mn = bgr.max(axis=1), bgr.min(axis=1)
    saturated = bgr[(mx - mn) / np.maximum(mx, 1.0) >= MIN_SATURATION]
    if len(saturated) < MIN_PIXELS:
        return None
    b, g, r = np.median(saturated, axis=0)
    return int(r), int(g), int(b)


def nearest_livery(
    rgb: tuple[int, int, int], models: Sequence[LocomotiveModel]
) -> LiveryMatch | None:
    """The model with the closest livery chromaticity, or None if no livery is close."""
    if not models:
        return None
    c = chromaticity(rgb)
    dist = sorted((float(np.linalg.norm(c - chromaticity(m.livery))), m.name) for m in models)
    best, name = dist[0]
    if best > MAX_CHROMA_DISTANCE:
        return None
    second = dist[1][0] if len(dist) > 1 else 1.0
    # Confidence: how much closer the best livery is than the runner-up.
    confidence = float(np.clip(1.0 - best / max(second, 1e-6), 0.0, 1.0))
    return LiveryMatch(model=name, confidence=round(confidence, 3), body_rgb=rgb)


def livery_model(
    image: Image, plate: BoundingBox, models: Sequence[LocomotiveModel]
) -> LiveryMatch | None:
    """The model whose livery surrounds this plate, if the colour is clear enough."""
    rgb = body_colour(image, plate)
    return None if rgb is None else nearest_livery(rgb, models)
