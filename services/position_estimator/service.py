"""Adapters of the position estimator: the frame loop around the pure handler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.facility import FacilityConfig
from services.position_estimator.config import ESTIMATOR_VERSION, PositionEstimatorConfig
from services.position_estimator.estimator import BatchDetector, PositionEstimator
from services.runtime.facility_watch import FacilityWatch
from services.runtime.frame_stream import FrameStream, connect_frame_stream
from services.runtime.settings import Settings


def current_facility(watch: FacilityWatch) -> FacilityConfig:
    """The facility config, re-read if the file changed (new cameras join without a restart)."""
    watch.refresh()
    return watch.config


def position_stream(
    settings: Settings,
    config: PositionEstimatorConfig,
    watch: FacilityWatch,
    detector: BatchDetector,
    consumer_overrides: Mapping[str, Any] | None = None,
) -> FrameStream:
    """The frame loop of a flow's position estimator, wired to the broker and object store."""
    handler = PositionEstimator(
        facility=lambda: current_facility(watch),
        detector=detector,
        flow=config.flow,
        estimator=ESTIMATOR_VERSION,
        model_version=config.model_version,
    )
    return connect_frame_stream(settings, config.stream(), handler, consumer_overrides)
