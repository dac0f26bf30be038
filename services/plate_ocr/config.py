"""Settings of one plate reader process: the flow's plate settings, its input and batching."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from schemas.estimates import PositionEstimate
from schemas.facility import FacilityConfig
from services.plate_ocr.identity import needs_frame
from services.runtime.estimator_service import EstimatorConfigError, flow_spec
from services.runtime.frame_stream import FrameSource, FrameStreamConfig, Mode

SERVICE = "plate-ocr"
ESTIMATOR_VERSION = f"{SERVICE}/0.2"


@dataclass(frozen=True)
class PlateOcrConfig:
    """Everything the plate reader needs besides the facility itself."""

    flow: str
    min_plate_confidence: float
    reread_after_s: float
    """A standing plate is read again this often (the reading is reused in between)."""
    max_batch: int
    max_wait_ms: int
    mode: Mode
    positions_topic: str
    """The flow's position estimates (their plate boxes are what is read)."""

    def source(
        self, needs_image: Callable[[PositionEstimate], bool] = needs_frame
    ) -> FrameSource[PositionEstimate]:
        """Position estimates in; a frame is fetched only where a plate box is (that was not
        read recently: the handler's ``needs_frame``)."""
        return FrameSource(
            self.positions_topic, PositionEstimate, lambda e: e.frame, needs_image=needs_image
        )

    def stream(self) -> FrameStreamConfig:
        """Loop settings (frames decoded at full resolution: plates are small)."""
        return FrameStreamConfig(
            service=SERVICE,
            flow=self.flow,
            mode=self.mode,
            max_batch=self.max_batch,
            max_wait_ms=self.max_wait_ms,
        )


def plate_ocr_config(
    facility: FacilityConfig,
    config_path: Path,
    flow: str,
    mode: Mode = "live",
    max_batch: int | None = None,
    positions_topic: str | None = None,
) -> PlateOcrConfig:
    """The config of ``flow``'s plate reader.

    Plates are read where a position estimator found plate boxes: the flow's own, or that of
    the flow its ``positions_from`` names (a new plate reader tried on prod's detections).
    """
    spec = flow_spec(facility, config_path, flow)
    if spec.plate_ocr is None:
        raise EstimatorConfigError(
            f"{config_path}: flows.{flow}.plate_ocr is not set; add it "
            "(e.g. plate_ocr: {min_plate_confidence: 0.6}) to read plates for this flow"
        )
    boxes_from = spec.positions_from or flow
    detector = facility.flows[boxes_from].position_estimator
    if detector is None:
        raise EstimatorConfigError(
            f"{config_path}: flows.{flow}.position_estimator is not set; the plate reader reads "
            "the plate boxes a position estimator finds, so add one to this flow (or read "
            "another flow's with positions_from)"
        )
    return PlateOcrConfig(
        flow=flow,
        min_plate_confidence=spec.plate_ocr.min_plate_confidence,
        reread_after_s=spec.plate_ocr.reread_after_s,
        max_batch=max_batch or detector.max_batch,
        max_wait_ms=detector.max_wait_ms,
        mode=mode,
        positions_topic=positions_topic or PositionEstimate.topic_name(boxes_from),
    )
