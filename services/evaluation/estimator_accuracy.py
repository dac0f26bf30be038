"""Scoring of the position estimator and plate reader against simulator labels (pure).

Per frame, predicted boxes are matched one-to-one to the true labels of the same class by
intersection over union (greedy, best first). A matched head/tail scores track assignment
and, on the right track, the error of ``position_m`` against the true end position. A true
plate scores exact text and model; a plate the reader could not match or read counts as a
miss (unreadable is honest, but it is not a read).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.estimates import Detection, IdentityEstimate, TrackObservation
from services.runtime.matching import iou, optimal_pairs, xyxy
from services.runtime.stats import percentile

MIN_IOU = 0.3
"""A prediction overlapping a true box less than this is not the same object."""
WHOLE_PLATE = 0.95
"""Plates at least this visible are the ones the plate exact-match goal is about."""

GOALS: dict[str, tuple[str, float]] = {
    "position_median_m": ("<=", 0.5),
    "position_p95_m": ("<=", 2.0),
    "track_accuracy": (">=", 0.99),
    "plate_exact": (">=", 0.95),
    "model_accuracy": (">=", 0.98),
}


@dataclass(frozen=True)
class TrueObject:
    """A labelled object of a frame (from the simulator's renderer)."""

    cls: str
    box: tuple[float, float, float, float]
    track_id: str
    plate: str
    model: str
    visible_fraction: float
    end_position_m: float | None = None


REASON_CATEGORIES = (
    "no plate pattern",
    "ambiguous",
    "below min_plate_confidence",
    "cut off",
    "too small",
    "no text",
)


def reason_category(reason: str) -> str:
    """A short category of an unreadable reason (the reasons quote the text read)."""
    for category in REASON_CATEGORIES:
        if category in reason:
            return category
    return reason.split(" (")[0][:40] or "unknown"


def match(
    truths: Sequence[tuple[float, float, float, float]],
    predictions: Sequence[tuple[float, float, float, float]],
    min_iou: float = MIN_IOU,
) -> dict[int, int]:
    """One-to-one matching by IoU (at least ``min_iou``): truth index -> prediction index.

    The project's one assignment (:func:`services.runtime.matching.optimal_pairs`): the most
    pairs, then the largest total IoU.
    """
    cost = np.full((len(truths), len(predictions)), np.inf)
    for ti, t in enumerate(truths):
        for pi, p in enumerate(predictions):
            score = iou(t, p)
            if score >= min_iou:
                cost[ti, pi] = -score
    return dict(optimal_pairs(cost))


@dataclass
class EstimatorScore:
    """Running totals over many frames."""

    frames: int = 0
    ends_true: int = 0
    ends_matched: int = 0
    ends_false: int = 0
    track_correct: int = 0
    errors_m: list[float] = field(default_factory=list)
    plates_true: int = 0
    plates_whole: int = 0
    plates_matched: int = 0
    plates_exact: int = 0
    plates_whole_exact: int = 0
    plates_wrong: int = 0
    plates_unreadable: int = 0
    models_correct: int = 0
    unreadable_reasons: dict[str, int] = field(default_factory=dict)

    def add_positions(
        self,
        truth: Sequence[TrueObject],
        ends: Sequence[tuple[Detection, TrackObservation | None]],
    ) -> None:
        """Score the head/tail detections of one frame and where they were placed."""
        self.frames += 1
        for cls in ("head", "tail"):
            true = [t for t in truth if t.cls == cls]
            pairs = [(d, o) for d, o in ends if d.cls == cls]
            matched = match([t.box for t in true], [xyxy(d.bbox) for d, _ in pairs])
            self.ends_true += len(true)
            self.ends_matched += len(matched)
            self.ends_false += len(pairs) - len(matched)
            for ti, pi in matched.items():
                t, obs = true[ti], pairs[pi][1]
                if obs is None or obs.track_id != t.track_id or obs.position_m is None:
                    continue
                self.track_correct += 1
                assert t.end_position_m is not None
                self.errors_m.append(abs(obs.position_m - t.end_position_m))

    def add_identities(
        self, truth: Sequence[TrueObject], estimates: Sequence[IdentityEstimate]
    ) -> None:
        """Score the plate readings of one frame."""
        true = [t for t in truth if t.cls == "plate"]
        read = [e for e in estimates if e.plate_box is not None]
        matched = match(
            [t.box for t in true],
            [xyxy(e.plate_box.bbox) for e in read if e.plate_box is not None],
        )
        self.plates_true += len(true)
        self.plates_whole += sum(1 for t in true if t.visible_fraction >= WHOLE_PLATE)
        for ti, pi in matched.items():
            t, est = true[ti], read[pi]
            self.plates_matched += 1
            whole = t.visible_fraction >= WHOLE_PLATE
            if est.plate_text is None:
                self.plates_unreadable += 1
                reason = reason_category(est.unreadable_reason or "")
                self.unreadable_reasons[reason] = self.unreadable_reasons.get(reason, 0) + 1
            elif est.plate_text == t.plate:
                self.plates_exact += 1
                self.plates_whole_exact += int(whole)
            else:
                self.plates_wrong += 1
            if est.locomotive_model == t.model:
                self.models_correct += 1

    def figures(self) -> dict[str, Any]:
        """The headline figures (None where there was nothing to measure)."""

        def ratio(a: int, b: int) -> float | None:
            return round(a / b, 4) if b else None

        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "frames": self.frames,
            "ends_true": self.ends_true,
            "end_recall": ratio(self.ends_matched, self.ends_true),
            "end_false_detections": self.ends_false,
            "track_accuracy": ratio(self.track_correct, self.ends_matched),
            "position_median_m": rounded(percentile(self.errors_m, 0.5)),
            "position_p95_m": rounded(percentile(self.errors_m, 0.95)),
            "plates_true": self.plates_true,
            "plates_whole": self.plates_whole,
            "plate_exact": ratio(self.plates_whole_exact, self.plates_whole),
            "plate_exact_all": ratio(self.plates_exact, self.plates_true),
            "plate_wrong": ratio(self.plates_wrong, self.plates_matched),
            "plate_unreadable": ratio(self.plates_unreadable, self.plates_matched),
            "model_accuracy": ratio(self.models_correct, self.plates_true),
            "unreadable_reasons": dict(sorted(self.unreadable_reasons.items())),
        }


def verdicts(figures: dict[str, Any]) -> dict[str, bool | None]:
    """Goal met (True/False) per goal; None when there was nothing to measure.

    A figure that is missing because nothing was detected, although there was something to
    detect, is a miss, not "nothing to measure".
    """
    out: dict[str, bool | None] = {}
    for name, (op, goal) in GOALS.items():
        value = figures.get(name)
        if value is None:
            truth = (
                figures["plates_true"]
                if name.startswith(("plate", "model"))
                else (figures["ends_true"])
            )
            out[name] = False if truth else None
        else:
            out[name] = value <= goal if op == "<=" else value >= goal
    return out


def report_lines(figures: dict[str, Any]) -> list[str]:
    """Human-readable report, one figure a line, goals marked."""
    ok = verdicts(figures)
    lines = [
        f"frames {figures['frames']}, true ends {figures['ends_true']}, end recall "
        f"{figures['end_recall']}, false end detections {figures['end_false_detections']}",
    ]
    for name, (op, goal) in GOALS.items():
        verdict = {True: "ok", False: "MISSED", None: "n/a"}[ok[name]]
        lines.append(f"{name:20} {figures[name]!s:>8}   goal {op} {goal:<5} {verdict}")
    lines.append(
        f"plates: {figures['plates_whole']} whole of {figures['plates_true']} visible, exact "
        f"over all visible {figures['plate_exact_all']}, wrong {figures['plate_wrong']}, "
        f"unreadable {figures['plate_unreadable']} of matched"
    )
    if figures["unreadable_reasons"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in figures["unreadable_reasons"].items())
        lines.append(f"unreadable reasons: {reasons}")
    return lines
