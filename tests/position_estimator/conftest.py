"""Fixtures of the estimator tests."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def dev_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Detector weights for service-mechanics tests: the trained model if it is there, else an
    untrained YOLOv8n with the head/tail/plate classes (its detections are noise, its speed and
    file format are real)."""
    trained = ROOT / "models" / "depot-yolo.pt"
    if trained.is_file():
        return trained
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml", task="detect")
    model.model.names = {0: "head", 1: "tail", 2: "plate"}  # type: ignore[union-attr]
    path = tmp_path_factory.mktemp("weights") / "untrained-yolov8n.pt"
    model.save(str(path))
    return path
