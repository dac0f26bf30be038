"""Adapters of the plate reader: the frame loop around the pure handler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.plate_ocr.config import ESTIMATOR_VERSION, PlateOcrConfig
from services.plate_ocr.identity import IdentityEstimator, TextRecogniser
from services.runtime.facility_watch import FacilityWatch
from services.runtime.frame_stream import FrameStream, connect_frame_stream
from services.runtime.ports import BatchDetector
from services.runtime.settings import Settings


def plate_stream(
    settings: Settings,
    config: PlateOcrConfig,
    watch: FacilityWatch,
    detector: BatchDetector,
    recogniser: TextRecogniser,
    consumer_overrides: Mapping[str, Any] | None = None,
) -> FrameStream:
    """The frame loop of a flow's plate reader, wired to the broker and object store."""
    handler = IdentityEstimator(
        facility=watch.current,
        detector=detector,
        recogniser=recogniser,
        flow=config.flow,
        estimator=ESTIMATOR_VERSION,
        min_plate_confidence=config.min_plate_confidence,
    )
    return connect_frame_stream(settings, config.stream(), handler, consumer_overrides)
