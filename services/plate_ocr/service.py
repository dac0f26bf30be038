"""Adapters of the plate reader: the loop over the flow's position estimates around the pure
handler (frames are fetched only where a plate box is)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.estimates import PositionEstimate
from services.plate_ocr.config import ESTIMATOR_VERSION, PlateOcrConfig
from services.plate_ocr.identity import IdentityEstimator, TextRecogniser
from services.runtime.facility_watch import FacilityWatch
from services.runtime.frame_stream import FrameStream, connect_frame_stream
from services.runtime.settings import Settings


def plate_stream(
    settings: Settings,
    config: PlateOcrConfig,
    watch: FacilityWatch,
    recogniser: TextRecogniser,
    consumer_overrides: Mapping[str, Any] | None = None,
) -> FrameStream[PositionEstimate]:
    """The loop of a flow's plate reader, wired to the broker and object store."""
    handler = IdentityEstimator(
        facility=watch.current,
        recogniser=recogniser,
        flow=config.flow,
        estimator=ESTIMATOR_VERSION,
        min_plate_confidence=config.min_plate_confidence,
        reread_after_s=config.reread_after_s,
    )
    return connect_frame_stream(
        settings,
        config.stream(),
        config.source(handler.needs_frame),
        handler,
        consumer_overrides,
        handler.self_test,
    )
