"""Tracking metrics over locomotive identities in time: IDF1 and HOTA on 1-D intervals.

A frame holds, for the truth and for the tracker, ``id -> (track_id, lo_m, hi_m)``. Two
intervals are as similar as their IoU along the track, and not at all on different tracks.
:func:`hota` follows Luiten et al. 2020 (IJCV, "HOTA: A Higher Order Metric for Evaluating
Multi-Object Tracking") as TrackEval implements it, averaged over alpha = 0.05 .. 0.95;
:func:`idf1` uses motmetrics (pairs count as matches at IoU >= 0.5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from schemas.geometry import FloatArray

Span = tuple[str, float, float]
"""(track_id, low, high) metres along the track."""


@dataclass(frozen=True)
class TrackingFrame:
    """Who is where at one instant, in the truth and in the tracker's output."""

    truth: Mapping[str, Span]
    tracker: Mapping[str, Span]


ALPHAS = np.arange(0.05, 0.99, 0.05)
"""Localisation thresholds HOTA is averaged over."""
IDF1_MIN_IOU = 0.5


def span_iou(a: Span, b: Span) -> float:
    """IoU of two intervals on the same track; 0 on different tracks."""
    if a[0] != b[0]:
        return 0.0
    lo_a, hi_a = sorted(a[1:])
    lo_b, hi_b = sorted(b[1:])
    inter = max(0.0, min(hi_a, hi_b) - max(lo_a, lo_b))
    union = max(hi_a, hi_b) - min(lo_a, lo_b)
    return inter / union if union > 0 else 0.0


def _similarity(frame: TrackingFrame) -> tuple[list[str], list[str], FloatArray]:
    gt, tr = sorted(frame.truth), sorted(frame.tracker)
    sim = np.array([[span_iou(frame.truth[g], frame.tracker[t]) for t in tr] for g in gt])
    return gt, tr, sim.reshape(len(gt), len(tr))


@dataclass(frozen=True)
class Hota:
    """HOTA and its parts, each averaged over the alphas."""

    hota: float
    det_a: float
    ass_a: float


def hota(frames: Sequence[TrackingFrame]) -> Hota:
    """HOTA of a sequence (Luiten et al. 2020), as TrackEval computes it."""
    gt_ids = sorted({g for f in frames for g in f.truth})
    tr_ids = sorted({t for f in frames for t in f.tracker})
    gi = {g: i for i, g in enumerate(gt_ids)}
    ti = {t: i for i, t in enumerate(tr_ids)}
    sims = []
    potential = np.zeros((len(gt_ids), len(tr_ids)))
    gt_count = np.zeros((len(gt_ids), 1))
    tr_count = np.zeros((1, len(tr_ids)))
    # Pass 1: how strongly each truth id and tracker id overlap over the whole sequence.
    for frame in frames:
        gt, tr, sim = _similarity(frame)
        g_idx = np.array([gi[g] for g in gt], dtype=int)
        t_idx = np.array([ti[t] for t in tr], dtype=int)
        sims.append((g_idx, t_idx, sim))
        if len(g_idx) and len(t_idx):
            denom = sim.sum(0)[None, :] + sim.sum(1)[:, None] - sim
            iou = np.divide(sim, denom, out=np.zeros_like(sim), where=denom > np.finfo(float).eps)
            potential[g_idx[:, None], t_idx[None, :]] += iou
        gt_count[g_idx] += 1
        tr_count[0, t_idx] += 1
    with np.errstate(divide="ignore", invalid="ignore"):
        alignment = np.nan_to_num(potential / (gt_count + tr_count - potential))
    tp = np.zeros(len(ALPHAS))
    fn = np.zeros(len(ALPHAS))
    fp = np.zeros(len(ALPHAS))
    matches = np.zeros((len(ALPHAS), len(gt_ids), len(tr_ids)))
    # Pass 2: per frame, match to maximise alignment-weighted similarity; count per alpha.
    for g_idx, t_idx, sim in sims:
        if len(g_idx) == 0 or len(t_idx) == 0:
            fn += len(g_idx)
            fp += len(t_idx)
            continue
        score = alignment[g_idx[:, None], t_idx[None, :]] * sim
        rows, cols = linear_sum_assignment(-score)
        for a, alpha in enumerate(ALPHAS):
            ok = sim[rows, cols] >= alpha - np.finfo(float).eps
            n = int(ok.sum())
            tp[a] += n
            fn[a] += len(g_idx) - n
            fp[a] += len(t_idx) - n
            matches[a, g_idx[rows[ok]], t_idx[cols[ok]]] += 1
    ass = np.zeros(len(ALPHAS))
    for a in range(len(ALPHAS)):
        m = matches[a]
        ass_iou = m / np.maximum(1, gt_count + tr_count - m)
        ass[a] = float((m * ass_iou).sum() / max(1.0, tp[a]))
    det = tp / np.maximum(1, tp + fn + fp)
    return Hota(float(np.sqrt(det * ass).mean()), float(det.mean()), float(ass.mean()))


def idf1(frames: Sequence[TrackingFrame]) -> float | None:
    """IDF1 (Ristani et al. 2016) by motmetrics; None when there is nothing to score."""
    import motmetrics as mm  # the `eval` extra: only the suite needs it

    acc = mm.MOTAccumulator(auto_id=True)
    any_object = False
    # motmetrics wants numeric ids.
    numbers: dict[str, int] = {}
    for frame in frames:
        gt, tr, sim = _similarity(frame)
        any_object |= bool(gt or tr)
        dist = np.where(sim >= IDF1_MIN_IOU, 1.0 - sim, np.nan)
        gt_n = [numbers.setdefault("gt:" + g, len(numbers)) for g in gt]
        tr_n = [numbers.setdefault("tr:" + t, len(numbers)) for t in tr]
        acc.update(gt_n, tr_n, dist)
    if not any_object:
        return None
    summary = mm.metrics.create().compute(acc, metrics=["idf1"], name="case")
    return float(summary["idf1"].iloc[0])
