"""Scoring of the estimators against simulator labels, and the eval command end to end."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from schemas.estimates import BoundingBox, Detection, IdentityEstimate, TrackObservation
from schemas.frames import FrameRef
from services.evaluation.estimator_accuracy import (
    EstimatorScore,
    TrueObject,
    match,
    reason_category,
    verdicts,
)
from services.runtime.matching import iou

ROOT = Path(__file__).resolve().parents[2]
REF = FrameRef(
    camera_id="cam-s1",
    seq=1,
    captured_at=datetime(2026, 11, 21, tzinfo=UTC),
    bucket="frames",
    key="k",
    width=1280,
    height=720,
    size=1,
    sha256="0" * 64,
)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (5, 0, 15, 10), 1 / 3),
        ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),
    ],
)
def test_iou(a: tuple, b: tuple, expected: float) -> None:  # type: ignore[type-arg]
    assert iou(a, b) == pytest.approx(expected)


def test_match_is_one_to_one_best_first() -> None:
    truths = [(0, 0, 10, 10), (100, 0, 110, 10)]
    preds = [(1, 0, 11, 10), (0, 0, 10, 10), (300, 0, 310, 10)]
    assert match(truths, preds) == {0: 1}


def end(cls: str, box: tuple[float, float, float, float], track: str, pos: float) -> TrueObject:
    return TrueObject(cls, box, track, "TEM2-0001", "TEM2", 1.0, pos)


def det(cls: str, box: tuple[float, float, float, float]) -> Detection:
    return Detection(
        cls=cls,  # type: ignore[arg-type]
        bbox=BoundingBox(x1=box[0], y1=box[1], x2=box[2], y2=box[3]),
        confidence=0.9,
    )


def obs(track: str | None, pos: float | None) -> TrackObservation:
    return TrackObservation(
        kind="head", floor_x_m=0, floor_y_m=0, track_id=track, position_m=pos, confidence=0.9
    )


def test_position_figures() -> None:
    score = EstimatorScore()
    truth = [
        end("head", (0, 0, 50, 50), "T1", 10.0),
        end("tail", (200, 0, 250, 50), "T1", 27.0),
        end("head", (400, 0, 450, 50), "T2", 5.0),
    ]
    ends = [
        (det("head", (1, 0, 51, 50)), obs("T1", 10.4)),  # right track, 0.4 m off
        (det("tail", (200, 0, 250, 50)), obs("T1", 26.0)),  # 1.0 m off
        (det("head", (400, 0, 450, 50)), obs("T3", 5.0)),  # wrong track
        (det("tail", (600, 0, 650, 50)), obs(None, None)),  # nothing there
    ]
    score.add_positions(truth, ends)
    f = score.figures()
    assert f["end_recall"] == 1.0
    assert f["end_false_detections"] == 1
    assert f["track_accuracy"] == pytest.approx(2 / 3, abs=1e-3)
    assert f["position_median_m"] == pytest.approx(0.7)
    ok = verdicts(f)
    assert ok["track_accuracy"] is False
    assert ok["position_median_m"] is False
    assert ok["plate_exact"] is None  # no plates: nothing measured, not a pass


def identity(text: str | None, model: str | None, box: tuple) -> IdentityEstimate:  # type: ignore[type-arg]
    return IdentityEstimate(
        flow="prod",
        camera_id="cam-s1",
        frame=REF,
        estimator="t",
        estimated_at=REF.captured_at,
        plate_text=text,
        unreadable_reason=None if text else "text 'X' matches no plate pattern of the fleet",
        locomotive_model=model,
        plate_box=det("plate", box),
    )


def test_plate_figures() -> None:
    score = EstimatorScore()
    truth = [
        TrueObject("plate", (0, 0, 100, 30), "T1", "TEM2-0001", "TEM2", 1.0),
        TrueObject("plate", (200, 0, 300, 30), "T2", "ChME3-0002", "ChME3", 1.0),
        TrueObject("plate", (400, 0, 500, 30), "T2", "TE33A-0003", "TE33A", 1.0),
        TrueObject("plate", (1200, 0, 1280, 30), "T2", "TE33A-0004", "TE33A", 0.5),
    ]
    read = [
        identity("TEM2-0001", "TEM2", (0, 0, 100, 30)),
        identity("ChME3-0009", "ChME3", (200, 0, 300, 30)),  # wrong text, right model
        identity(None, "TE33A", (400, 0, 500, 30)),  # unreadable, livery model
    ]
    score.add_identities(truth, read)
    f = score.figures()
    assert f["plates_whole"] == 3
    assert f["plate_exact"] == pytest.approx(1 / 3, abs=1e-3)
    assert f["plate_exact_all"] == 0.25
    assert f["plate_wrong"] == pytest.approx(1 / 3, abs=1e-3)
    assert f["model_accuracy"] == 0.75
    assert f["unreadable_reasons"] == {"no plate pattern": 1}


def test_reason_category() -> None:
    assert reason_category("plate cut off by the image edge (read 'A-97')") == "cut off"
    assert reason_category("plate too small to read (8 px high, need 12)") == "too small"
    assert reason_category("something new") == "something new"


@pytest.mark.slow
def test_eval_estimators_with_true_boxes_meets_the_goals(tmp_path: Path) -> None:
    """The geometry and OCR behind the detector meet every goal when the boxes are right."""
    from services.evaluation.cli import evaluate

    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        evaluate,
        [
            "estimators",
            "--config",
            str(ROOT / "facility.yaml"),
            "--oracle",
            "--scenario",
            "test-busy",
            "--seeds",
            "1",
            "--ticks",
            "2",
            "--json-out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["frames"] == 16
    assert figures["end_recall"] == 1.0
    assert figures["track_accuracy"] == 1.0
    assert figures["position_p95_m"] <= 2.0
    assert "track_accuracy" in result.output


def test_detecting_nothing_misses_the_goals_instead_of_skipping_them() -> None:
    score = EstimatorScore()
    score.add_positions([end("head", (0, 0, 50, 50), "T1", 10.0)], [])
    f = score.figures()
    assert f["end_recall"] == 0.0
    assert f["track_accuracy"] is None
    assert verdicts(f)["track_accuracy"] is False
    assert verdicts(f)["position_median_m"] is False
    assert verdicts(f)["plate_exact"] is None  # no plates in view: nothing to measure
