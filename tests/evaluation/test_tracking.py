"""IDF1 and 1-D HOTA on tiny hand-made sequences, and HOTA against TrackEval."""

from __future__ import annotations

import numpy as np
import pytest

from services.evaluation.tracking import TrackingFrame, hota, idf1, span_iou

A = ("T1", 0.0, 10.0)
B = ("T1", 20.0, 30.0)


def test_span_iou() -> None:
    assert span_iou(A, A) == 1.0
    assert span_iou(A, ("T1", 5.0, 15.0)) == pytest.approx(5 / 15)
    assert span_iou(A, ("T2", 0.0, 10.0)) == 0.0
    assert span_iou(A, ("T1", 10.0, 0.0)) == 1.0  # head/tail order does not matter


def test_perfect_tracking_scores_one() -> None:
    frames = [TrackingFrame({"a": A, "b": B}, {"x": A, "y": B})] * 4
    assert hota(frames).hota == pytest.approx(1.0)
    assert idf1(frames) == pytest.approx(1.0)


def test_an_identity_switch_halves_association() -> None:
    # One truth object, tracked as x for two frames and as y for two more.
    frames = [TrackingFrame({"a": A}, {"x": A})] * 2 + [TrackingFrame({"a": A}, {"y": A})] * 2
    result = hota(frames)
    assert result.det_a == pytest.approx(1.0)
    assert result.ass_a == pytest.approx(0.5)
    assert result.hota == pytest.approx(np.sqrt(0.5))
    assert idf1(frames) == pytest.approx(0.5)


def test_a_missed_object_costs_detection() -> None:
    frames = [TrackingFrame({"a": A, "b": B}, {"x": A})] * 3
    result = hota(frames)
    assert result.det_a == pytest.approx(0.5)
    assert result.ass_a == pytest.approx(1.0)
    assert idf1(frames) == pytest.approx(2 * 3 / (6 + 3))


def test_hota_agrees_with_trackeval() -> None:
    trackeval = pytest.importorskip("trackeval")
    rng = np.random.default_rng(3)
    frames = []
    for t in range(12):
        truth = {"a": ("T1", t * 0.5, t * 0.5 + 17.0), "b": ("T1", 30.0, 48.0)}
        tracker = {"x": ("T1", t * 0.5 + rng.normal(0, 2), t * 0.5 + 17.0)}
        tracker["y" if t < 6 else "z"] = ("T1", 30.0 + rng.normal(0, 3), 48.0)
        if t % 4 == 0:
            tracker["ghost"] = ("T2", 0.0, 10.0)
        frames.append(TrackingFrame(truth, tracker))
    gt_ids = sorted({g for f in frames for g in f.truth})
    tr_ids = sorted({t for f in frames for t in f.tracker})
    data = {
        "num_timesteps": len(frames),
        "num_gt_ids": len(gt_ids),
        "num_tracker_ids": len(tr_ids),
        "num_gt_dets": sum(len(f.truth) for f in frames),
        "num_tracker_dets": sum(len(f.tracker) for f in frames),
        "gt_ids": [np.array([gt_ids.index(g) for g in sorted(f.truth)]) for f in frames],
        "tracker_ids": [np.array([tr_ids.index(t) for t in sorted(f.tracker)]) for f in frames],
        "similarity_scores": [
            np.array(
                [
                    [span_iou(f.truth[g], f.tracker[t]) for t in sorted(f.tracker)]
                    for g in sorted(f.truth)
                ]
            )
            for f in frames
        ],
    }
    reference = trackeval.metrics.HOTA().eval_sequence(data)
    ours = hota(frames)
    assert ours.hota == pytest.approx(float(reference["HOTA"].mean()), abs=1e-9)
    assert ours.ass_a == pytest.approx(float(reference["AssA"].mean()), abs=1e-9)
    assert ours.det_a == pytest.approx(float(reference["DetA"].mean()), abs=1e-9)
