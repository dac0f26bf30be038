"""Settings of one position estimator process: the flow's detector settings + process settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from schemas.facility import FacilityConfig
from schemas.frames import FrameRef
from services.runtime.estimator_service import EstimatorConfigError, flow_spec, resolve_weights
from services.runtime.frame_stream import FrameSource, FrameStreamConfig, Mode, frame_refs
from services.runtime.settings import Settings

SERVICE = "position-estimator"
ESTIMATOR_VERSION = f"{SERVICE}/0.1"


@dataclass(frozen=True)
class PositionEstimatorConfig:
    """Everything the position estimator needs besides the facility itself."""

    flow: str
    weights: Path
    model_version: str
    imgsz: int
    confidence: float
    max_batch: int
    max_wait_ms: int
    device: str
    mode: Mode
    frames_topic: str = FrameRef.TOPIC

    def source(self) -> FrameSource[FrameRef]:
        """The frame refs this estimator consumes."""
        return frame_refs(self.frames_topic)

    def stream(self) -> FrameStreamConfig:
        """Frame loop settings."""
        return FrameStreamConfig(
            service=SERVICE,
            flow=self.flow,
            mode=self.mode,
            max_batch=self.max_batch,
            max_wait_ms=self.max_wait_ms,
            detector_input_px=self.imgsz,
        )


def position_estimator_config(
    facility: FacilityConfig,
    config_path: Path,
    flow: str,
    settings: Settings,
    mode: Mode = "live",
    max_batch: int | None = None,
    weights: Path | None = None,
    frames_topic: str = FrameRef.TOPIC,
) -> PositionEstimatorConfig:
    """The config of ``flow``'s position estimator; one-line errors for a flow that has none."""
    stage = flow_spec(facility, config_path, flow).position_estimator
    if stage is None:
        raise EstimatorConfigError(
            f"{config_path}: flows.{flow}.position_estimator is not set; add it (weights, "
            "model_version) to run a position estimator for this flow"
        )
    return PositionEstimatorConfig(
        flow=flow,
        weights=weights or resolve_weights(stage.weights, config_path),
        model_version=stage.model_version,
        imgsz=stage.imgsz,
        confidence=stage.confidence,
        max_batch=max_batch or stage.max_batch,
        max_wait_ms=stage.max_wait_ms,
        device=settings.device,
        mode=mode,
        frames_topic=frames_topic,
    )
