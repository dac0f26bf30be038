"""The estimation chain without Kafka, S3 and RTSP: JPEG frames in, estimates out.

Frames are decoded as the position estimator decodes them (reduced for the detector, full for
plates), run through the flow's detector, the position core and the plate reader core. Used
by ``eval fusion --detector yolo`` on rendered frames and by ``video`` jobs on recorded video,
so both measure the same chain the live services run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from schemas.estimates import IdentityEstimate, PositionEstimate
from schemas.facility import FacilityConfig
from schemas.frames import FrameRef
from services.evaluation.estimators import FixedDetections
from services.plate_ocr.identity import IdentityEstimator, TextRecogniser, plate_work
from services.position_estimator.estimator import PositionEstimator
from services.runtime.frames import (
    REDUCED_DECODE,
    DecodedFrame,
    FrameOutcome,
    Rejected,
    decode_reduction,
    to_frame_pixels,
)
from services.runtime.ports import BatchDetector
from services.runtime.settings import Settings

Estimate = PositionEstimate | IdentityEstimate


class EstimationChain:
    """One flow's detector, position core and plate reader over batches of JPEG frames."""

    def __init__(
        self,
        facility: FacilityConfig,
        flow: str,
        detector: BatchDetector,
        recogniser: TextRecogniser,
        service: str = "evaluation",
    ) -> None:
        stages = facility.flows[flow]
        self.facility = facility
        self.flow = flow
        self.detector = detector
        self.recogniser = recogniser
        self.service = service
        self.imgsz = stages.position_estimator.imgsz if stages.position_estimator else None
        self.plate_settings = stages.plate_ocr

    def __call__(self, frames: Sequence[tuple[FrameRef, bytes]]) -> list[Estimate]:
        """Estimates of ``frames`` (one batch: usually every camera at one time)."""
        small: list[DecodedFrame] = []
        full: list[DecodedFrame] = []
        for ref, jpeg in frames:
            data = np.frombuffer(jpeg, np.uint8)
            reduction = decode_reduction(ref.width, ref.height, self.imgsz)
            small.append(
                DecodedFrame(ref, np.asarray(cv2.imdecode(data, REDUCED_DECODE[reduction])))
            )
            full.append(DecodedFrame(ref, np.asarray(cv2.imdecode(data, cv2.IMREAD_COLOR))))
        if not small:
            return []
        detections = [
            to_frame_pixels(d, f.scale)
            for d, f in zip(self.detector.detect([f.image for f in small]), small, strict=True)
        ]
        facility = self.facility
        positions = PositionEstimator(
            lambda: facility, FixedDetections(detections), self.flow, self.service, self.service
        )
        outcomes: list[FrameOutcome] = list(positions(full))
        if self.plate_settings is not None:
            # The plate reader reads the plate boxes of the position estimates, as live.
            reader = IdentityEstimator(
                lambda: facility,
                self.recogniser,
                self.flow,
                self.service,
                self.plate_settings.min_plate_confidence,
            )
            outcomes += reader(plate_work(outcomes, full))
        out: list[Estimate] = []
        for outcome in outcomes:
            if isinstance(outcome, Rejected):
                continue
            for est in outcome:
                assert isinstance(est, PositionEstimate | IdentityEstimate)
                out.append(est)
        return out


def real_estimators(
    facility: FacilityConfig, config_path: Path, flow: str, settings: Settings
) -> tuple[BatchDetector, TextRecogniser]:
    """The flow's YOLO detector (its weights, input size, confidence, device) and the offline
    OCR engine. Raises EstimatorConfigError or WeightsError with what to fix."""
    from services.plate_ocr.ocr_engine import RapidTextRecogniser
    from services.position_estimator.config import position_estimator_config
    from services.position_estimator.detector import YoloDetector

    pos = position_estimator_config(facility, config_path, flow, settings)
    detector = YoloDetector(pos.weights, pos.imgsz, pos.confidence, pos.device, pos.max_batch)
    return detector, RapidTextRecogniser()
