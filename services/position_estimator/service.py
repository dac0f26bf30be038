"""Adapters of the position estimator: the frame loop around the pure handler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.frames import FrameRef
from services.position_estimator.config import ESTIMATOR_VERSION, PositionEstimatorConfig
from services.position_estimator.estimator import PositionEstimator
from services.runtime.facility_watch import FacilityWatch
from services.runtime.frame_stream import FrameStream, connect_frame_stream, on_images
from services.runtime.ports import BatchDetector
from services.runtime.settings import Settings


def position_stream(
    settings: Settings,
    config: PositionEstimatorConfig,
    watch: FacilityWatch,
    detector: BatchDetector,
    consumer_overrides: Mapping[str, Any] | None = None,
) -> FrameStream[FrameRef]:
    """The frame loop of a flow's position estimator, wired to the broker and object store."""
    handler = PositionEstimator(
        facility=watch.current,
        detector=detector,
        flow=config.flow,
        estimator=ESTIMATOR_VERSION,
        model_version=config.model_version,
    )
    return connect_frame_stream(
        settings,
        config.stream(),
        config.source(),
        on_images(handler),
        consumer_overrides,
        handler.self_test,
    )
