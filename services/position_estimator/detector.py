"""Ultralytics YOLO at the edge: weights loading and results -> ``schemas.Detection``.

The only module of the position estimator that imports ultralytics (and, through it, torch).
Loading is explicit and fails with one line naming the file and the fix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np

from schemas.estimates import BoundingBox, Detection, DetectionClass
from services.runtime.estimator_service import EstimatorStartError
from services.runtime.frames import Image

log = logging.getLogger(__name__)

KNOWN_CLASSES: tuple[str, ...] = get_args(DetectionClass)
REQUIRED_CLASSES = ("head", "tail")
WEIGHT_SUFFIXES = (".pt", ".onnx")


class WeightsError(EstimatorStartError):
    """The detector weights are missing or not a usable head/tail/plate YOLO model."""


def from_ultralytics(result: Any, class_names: dict[int, str]) -> list[Detection]:
    """Detections of one ultralytics ``Results`` (like supervision's ``from_ultralytics``).

    Classes the schema does not know are dropped; boxes are clipped to the image.
    """
    boxes = result.boxes
    if boxes is None or len(boxes) == 0:
        return []
    xyxy = np.asarray(boxes.xyxy.cpu().numpy(), dtype=np.float64)
    conf = np.asarray(boxes.conf.cpu().numpy(), dtype=np.float64)
    cls = np.asarray(boxes.cls.cpu().numpy(), dtype=np.int64)
    height, width = result.orig_shape[:2]
    out = []
    for (x1, y1, x2, y2), c, k in zip(xyxy, conf, cls, strict=True):
        name = class_names.get(int(k))
        if name not in KNOWN_CLASSES:
            continue
        box = BoundingBox(
            x1=float(np.clip(x1, 0, width)),
            y1=float(np.clip(y1, 0, height)),
            x2=float(np.clip(x2, 0, width)),
            y2=float(np.clip(y2, 0, height)),
        )
        out.append(Detection(cls=name, bbox=box, confidence=float(np.clip(c, 0.0, 1.0))))
    return out


class YoloDetector:
    """A YOLO detection model (PyTorch .pt or ONNX .onnx) with fixed input size and threshold."""

    def __init__(
        self,
        weights: Path,
        imgsz: int = 640,
        confidence: float = 0.35,
        device: str = "cpu",
        max_batch: int = 8,
    ) -> None:
        self.weights = weights
        self.imgsz = imgsz
        self.confidence = confidence
        self.device = device
        self.max_batch = max_batch
        self._model = _load_model(weights, device)
        names = dict(getattr(self._model, "names", {}) or {})
        missing = [c for c in REQUIRED_CLASSES if c not in names.values()]
        if missing:
            raise WeightsError(
                f"detector weights {weights}: classes {sorted(names.values())} lack "
                f"{missing}; use weights trained by `depotwatch train` (classes head, tail, plate)"
            )
        self.class_names: dict[int, str] = {int(k): str(v) for k, v in names.items()}

    @property
    def trained_imgsz(self) -> int | None:
        """Input size the weights were trained at, if the checkpoint records it."""
        args = (getattr(self._model, "ckpt", None) or {}).get("train_args") or {}
        size = args.get("imgsz") if isinstance(args, dict) else None
        return int(size) if isinstance(size, int) else None

    @property
    def backend(self) -> str:
        """``torch`` or ``onnx``."""
        return "onnx" if self.weights.suffix == ".onnx" else "torch"

    def predict_raw(self, images: Sequence[Image]) -> list[Any]:
        """Ultralytics ``Results`` of the images (benchmarks compare against this)."""
        if not images:
            return []
        # ONNX files are exported with a fixed batch of 1; torch models take the whole batch.
        if self.backend == "onnx":
            return [r for img in images for r in self._predict([img])]
        return self._predict(list(images))

    def _predict(self, images: list[Image]) -> list[Any]:
        return list(
            self._model.predict(
                images,
                imgsz=self.imgsz,
                conf=self.confidence,
                device=self.device,
                verbose=False,
                batch=len(images),
            )
        )

    def detect(self, images: Sequence[Image]) -> list[list[Detection]]:
        """Detections of each image, in input order."""
        return [from_ultralytics(r, self.class_names) for r in self.predict_raw(images)]

    def warm_up(self, width: int = 1280, height: int = 720) -> float:
        """Run one blank image through the model (first call pays for setup); returns seconds."""
        t0 = time.perf_counter()
        self.detect([np.zeros((height, width, 3), dtype=np.uint8)])
        return time.perf_counter() - t0

    def prepare(self) -> None:
        """Before serving: warn when the inference size is not the training size, warm up."""
        if self.trained_imgsz and self.trained_imgsz != self.imgsz:
            log.warning(
                "inference size differs from the training size; accuracy and speed will differ "
                "from the model card (set the flow's imgsz)",
                extra={"imgsz": self.imgsz, "trained_imgsz": self.trained_imgsz},
            )
        self.warm_up()


def _load_model(weights: Path, device: str) -> Any:
    if weights.suffix not in WEIGHT_SUFFIXES:
        raise WeightsError(
            f"detector weights {weights}: unsupported file type {weights.suffix or '(none)'}; "
            "give a YOLO .pt file or its .onnx export"
        )
    if not weights.is_file():
        raise WeightsError(
            f"detector weights {weights} not found; train them with `depotwatch train` or set "
            "the flow's position_estimator.weights in the facility config"
        )
    try:
        from ultralytics import YOLO
    except ImportError as exc:
        raise WeightsError(
            f"the detector needs ultralytics ({exc}); install depotwatch[detect]"
        ) from None
    try:
        model = YOLO(str(weights), task="detect")
    except Exception as exc:
        raise WeightsError(
            f"detector weights {weights} could not be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); the file is corrupt or not a "
            "YOLO model: re-export or re-train it"
        ) from None
    task = getattr(model, "task", "detect")
    if task != "detect":
        raise WeightsError(
            f"detector weights {weights} are a {task!r} model; the position estimator needs a "
            "detection model (task 'detect')"
        )
    if weights.suffix == ".pt" and device != "cpu":
        model.to(device)
    log.info("detector loaded", extra={"weights": str(weights), "device": device})
    return model
