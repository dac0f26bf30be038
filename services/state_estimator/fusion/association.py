"""Which detected end is which tracked end: optimal assignment with gating.

Each detection may explain at most one target (a locomotive's head or tail, or an unexplained
end) and each target at most one detection of a frame, so two tails 0.6 m apart in one view
stay two. The total cost (distance, plus a penalty for a head/tail label swap) is minimised
with the Hungarian method; a pair costing more than its target's gate is no match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from services.state_estimator.fusion.state import EndKind

_INFEASIBLE = 1e9


@dataclass(frozen=True)
class Detection:
    """An end one camera placed on a track in one frame."""

    kind: EndKind
    position_m: float
    confidence: float


@dataclass(frozen=True)
class Target:
    """Where an end the tracker knows is predicted (detector convention: label offset in)."""

    kind: EndKind
    position_m: float
    gate_m: float
    bias_m: float = 0.0
    """Added cost: makes a target the second choice (unexplained ends after locomotives)."""
    ahead_m: float = 0.0
    """Extra gate on the side the target moves to (``heading``): a body unseen while moving
    may be further along than its faded speed predicts, not less far than it stopped."""
    heading: float = 0.0
    """+1 or -1: the direction the target moves along the track (0: standing)."""

    def reach_m(self, offset_m: float) -> float:
        """The gate for a detection ``offset_m`` from the prediction."""
        return self.gate_m + (self.ahead_m if offset_m * self.heading > 0 else 0.0)


def match_cost(detection: Detection, target: Target, swap_cost_m: float) -> float | None:
    """Cost of explaining ``detection`` by ``target``, or None beyond the target's gate."""
    offset = detection.position_m - target.position_m
    cost = abs(offset) + target.bias_m
    if detection.kind != target.kind:
        cost += swap_cost_m
    return cost if cost <= target.reach_m(offset) else None


def assign(
    detections: Sequence[Detection], targets: Sequence[Target], swap_cost_m: float
) -> dict[int, int]:
    """detection index -> target index of the cheapest consistent assignment."""
    if not detections or not targets:
        return {}
    n, m = len(detections), len(targets)
    cost = np.full((n, m + n), _INFEASIBLE)
    for i, det in enumerate(detections):
        for j, tgt in enumerate(targets):
            c = match_cost(det, tgt, swap_cost_m)
            if c is not None:
                cost[i, j] = c
        # "No match" for detection i costs its nearest gate, so any feasible match is taken
        # when it is cheaper than leaving the detection unexplained.
        cost[i, m + i] = max((t.gate_m + t.ahead_m for t in targets), default=0.0) + 1.0
    rows, cols = linear_sum_assignment(cost)
    return {
        int(r): int(c)
        for r, c in zip(rows, cols, strict=True)
        if c < m and cost[r, c] < _INFEASIBLE
    }


def keep_order(
    matches: dict[int, int],
    detections: Sequence[Detection],
    contacts: Sequence[tuple[int, int]],
) -> dict[int, int]:
    """Bodies keep their order along the track: repair crossed matches at contacts.

    ``contacts`` pairs the target index of a body's upper end with that of the next body's
    lower end. Two locomotives coupled with no gap show two ends side by side; matched the
    other way round, each end is placed inside the neighbour and the crossing is
    self-consistent from frame to frame (the tracker predicts the ends where it put them).
    When the detection matched to the lower body lies above the one matched to the upper
    body, the two are swapped.
    """
    out = dict(matches)
    owner = {j: i for i, j in out.items()}
    for lower, upper in contacts:
        i, k = owner.get(lower), owner.get(upper)
        if i is None or k is None or detections[i].position_m <= detections[k].position_m:
            continue
        out[i], out[k] = upper, lower
        owner[lower], owner[upper] = k, i
    return out
