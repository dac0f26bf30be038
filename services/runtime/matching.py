"""Which locomotive is which: the one matcher for every comparison of two sets of them.

The dashboard's dev-vs-prod and ground-truth panels, ``eval pipeline``, ``compare`` and the
evaluation suite all pair locomotives with :func:`match_locomotives`, so they agree on the same
data. Two locomotives can be the same one when they stand on the same track with centres at
most ``gate_m`` apart; among those, the pairs are chosen by optimal assignment (Hungarian
method, ``scipy.optimize.linear_sum_assignment``): as many pairs as possible, then the smallest
total centre distance. A greedy nearest-first pass can take the one pair that leaves a
neighbour without a partner; the assignment cannot.

:func:`optimal_pairs` is the assignment itself, for other costs (image boxes by :func:`iou`).
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from schemas.estimates import BoundingBox
from schemas.geometry import FloatArray

SAME_LOCOMOTIVE_M = 4.0
"""Largest distance between the centres of two locomotives taken for the same one: about a
quarter of the shortest model's length, so two coupled locomotives are never confused."""

LocoSpan = tuple[str, float, float]
"""(track_id, one end, other end) in metres along the track; the order of the ends is free."""


def xyxy(box: BoundingBox) -> tuple[float, float, float, float]:
    """A box as the (x1, y1, x2, y2) tuple :func:`iou` takes."""
    return (box.x1, box.y1, box.x2, box.y2)


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def optimal_pairs(cost: FloatArray) -> list[tuple[int, int]]:
    """(row, column) pairs of the cheapest one-to-one assignment among finite entries.

    ``cost`` is rows x columns; ``inf`` (or nan) marks pairs that may not be made. The most
    pairs possible are made, and among assignments with that many, the cheapest.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be a 2-D matrix, got shape {cost.shape}")
    if cost.size == 0:
        return []
    feasible = np.isfinite(cost)
    if not feasible.any():
        return []
    # A forbidden pair costs more than every allowed pair together, so the solver makes as many
    # allowed pairs as it can before it minimises their cost; forbidden ones are dropped after.
    finite = np.abs(cost[feasible])
    big = float(finite.sum()) * 2.0 + 1.0
    rows, cols = linear_sum_assignment(np.where(feasible, cost, big))
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if feasible[r, c]]


@dataclass(frozen=True)
class Matching:
    """Index pairs (left, right), and the indices each side has left over."""

    pairs: list[tuple[int, int]]
    only_left: list[int]
    only_right: list[int]


def _centre(span: LocoSpan) -> float:
    return (span[1] + span[2]) / 2


def match_locomotives(
    left: Sequence[LocoSpan], right: Sequence[LocoSpan], gate_m: float = SAME_LOCOMOTIVE_M
) -> Matching:
    """Pair the locomotives of ``left`` with those of ``right`` (see the module docstring)."""
    if gate_m < 0:
        raise ValueError(f"gate_m must be >= 0, got {gate_m}")
    cost = np.full((len(left), len(right)), np.inf)
    for i, a in enumerate(left):
        for j, b in enumerate(right):
            d = abs(_centre(a) - _centre(b))
            if a[0] == b[0] and d <= gate_m:
                cost[i, j] = d
    pairs = sorted(optimal_pairs(cost))
    used_l = {i for i, _ in pairs}
    used_r = {j for _, j in pairs}
    return Matching(
        pairs,
        [i for i in range(len(left)) if i not in used_l],
        [j for j in range(len(right)) if j not in used_r],
    )
