"""Settings of one plate reader process: the flow's plate settings, detector and process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from schemas.facility import FacilityConfig
from schemas.frames import FrameRef
from services.runtime.estimator_service import EstimatorConfigError, flow_spec, resolve_weights
from services.runtime.frame_stream import FrameStreamConfig, Mode
from services.runtime.settings import Settings

SERVICE = "plate-ocr"
ESTIMATOR_VERSION = f"{SERVICE}/0.1"


@dataclass(frozen=True)
class PlateOcrConfig:
    """Everything the plate reader needs besides the facility itself."""

    flow: str
    weights: Path
    imgsz: int
    detector_confidence: float
    min_plate_confidence: float
    max_batch: int
    max_wait_ms: int
    device: str
    mode: Mode
    frames_topic: str = FrameRef.TOPIC

    def stream(self) -> FrameStreamConfig:
        """Frame loop settings."""
        return FrameStreamConfig(
            service=SERVICE,
            flow=self.flow,
            mode=self.mode,
            max_batch=self.max_batch,
            max_wait_ms=self.max_wait_ms,
            frames_topic=self.frames_topic,
        )


def plate_ocr_config(
    facility: FacilityConfig,
    config_path: Path,
    flow: str,
    settings: Settings,
    mode: Mode = "live",
    max_batch: int | None = None,
    weights: Path | None = None,
    frames_topic: str = FrameRef.TOPIC,
) -> PlateOcrConfig:
    """The config of ``flow``'s plate reader.

    Plates are found by the flow's detector (its ``position_estimator`` weights, plate class),
    so a flow that reads plates needs detector weights too.
    """
    spec = flow_spec(facility, config_path, flow)
    if spec.plate_ocr is None:
        raise EstimatorConfigError(
            f"{config_path}: flows.{flow}.plate_ocr is not set; add it "
            "(e.g. plate_ocr: {min_plate_confidence: 0.6}) to read plates for this flow"
        )
    detector = spec.position_estimator
    if detector is None and weights is None:
        raise EstimatorConfigError(
            f"{config_path}: flows.{flow}.position_estimator is not set, so there are no "
            "detector weights to find plates with; add it or pass --weights"
        )
    if weights is None:
        assert detector is not None  # checked above
        weights = resolve_weights(detector.weights, config_path)
    return PlateOcrConfig(
        flow=flow,
        weights=weights,
        imgsz=detector.imgsz if detector else 640,
        detector_confidence=detector.confidence if detector else 0.35,
        min_plate_confidence=spec.plate_ocr.min_plate_confidence,
        max_batch=max_batch or (detector.max_batch if detector else 8),
        max_wait_ms=detector.max_wait_ms if detector else 50,
        device=settings.device,
        mode=mode,
        frames_topic=frames_topic,
    )
