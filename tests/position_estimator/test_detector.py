"""Weights loading errors and the ultralytics -> Detection adapter."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from services.position_estimator.detector import WeightsError, YoloDetector, from_ultralytics


def test_missing_weights_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"nowhere\.pt not found; train them with"):
        YoloDetector(tmp_path / "nowhere.pt")


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = tmp_path / "model.h5"
    path.write_bytes(b"\0")
    with pytest.raises(WeightsError, match=r"unsupported file type \.h5; give a YOLO \.pt"):
        YoloDetector(path)


def test_corrupt_weights(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match=r"could not be loaded .* re-export or re-train"):
        YoloDetector(path)


@pytest.mark.slow
def test_weights_without_head_and_tail_classes(tmp_path: Path) -> None:
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml", task="detect")  # generic class names, not ours
    path = tmp_path / "generic.pt"
    model.save(str(path))
    with pytest.raises(WeightsError, match=r"lack \['head', 'tail'\]"):
        YoloDetector(path)


@pytest.mark.slow
def test_detector_runs_a_batch(dev_weights: Path) -> None:
    detector = YoloDetector(dev_weights, imgsz=320, confidence=0.5)
    images = [np.zeros((720, 1280, 3), np.uint8), np.full((360, 640, 3), 90, np.uint8)]
    out = detector.detect(images)
    assert len(out) == 2
    assert set(detector.class_names.values()) >= {"head", "tail"}
    assert detector.backend == "torch"


def test_from_ultralytics_clips_boxes_and_drops_unknown_classes() -> None:
    import torch

    boxes = SimpleNamespace(
        xyxy=torch.tensor([[-5.0, 10.0, 50.0, 800.0], [10, 10, 20, 20], [30, 30, 40, 40]]),
        conf=torch.tensor([0.9, 0.8, 1.2]),
        cls=torch.tensor([0, 7, 2]),
    )
    result = SimpleNamespace(boxes=Boxes(boxes), orig_shape=(720, 1280))
    dets = from_ultralytics(result, {0: "head", 1: "tail", 2: "plate", 7: "truck"})
    assert [d.cls for d in dets] == ["head", "plate"]
    assert (dets[0].bbox.x1, dets[0].bbox.y2) == (0.0, 720.0)
    assert dets[1].confidence == 1.0


class Boxes:
    """A stand-in for ultralytics' Boxes: tensors and a length."""

    def __init__(self, ns: SimpleNamespace) -> None:
        self.xyxy, self.conf, self.cls = ns.xyxy, ns.conf, ns.cls

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])
