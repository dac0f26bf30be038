"""The position estimator as a pure batch handler: decoded frames -> PositionEstimates.

The detector is passed in (any :class:`~services.runtime.ports.BatchDetector`), so
tests drive this with hand-made detections and the service with YOLO.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import numpy as np

from schemas.base import utc_now
from schemas.facility import FacilityConfig
from services.position_estimator.track_position import position_estimate
from services.runtime.frames import DecodedFrame, FrameOutcome, Rejected, to_frame_pixels
from services.runtime.ports import BatchDetector


class PositionEstimator:
    """Detects heads/tails in a batch of frames and places them on the facility's tracks."""

    def __init__(
        self,
        facility: Callable[[], FacilityConfig],
        detector: BatchDetector,
        flow: str,
        estimator: str,
        model_version: str,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._facility = facility
        self.detector = detector
        self.flow = flow
        self.estimator = estimator
        self.model_version = model_version
        self._clock = clock

    def self_test(self) -> None:
        """Detect on a known-good (blank) image: raises when the detector is broken, so a
        failure on one frame can be told from a broken estimator."""
        self.detector.detect([np.zeros((64, 64, 3), np.uint8)])

    def __call__(self, frames: Sequence[DecodedFrame]) -> list[FrameOutcome]:
        """One outcome per frame: a PositionEstimate, or Rejected for an unknown camera."""
        facility = self._facility()
        cameras = {c.id: c for c in facility.cameras}
        known = [f for f in frames if f.ref.camera_id in cameras]
        detections = iter(self.detector.detect([f.image for f in known]) if known else [])
        outcomes: list[FrameOutcome] = []
        for frame in frames:
            camera = cameras.get(frame.ref.camera_id)
            if camera is None:
                outcomes.append(
                    Rejected(
                        f"camera {frame.ref.camera_id!r} is not in the facility config; add it "
                        "(with calibration) so its frames can be placed on tracks"
                    )
                )
                continue
            estimate = position_estimate(
                flow=self.flow,
                frame=frame.ref,
                camera=camera,
                tracks=facility.tracks,
                detections=to_frame_pixels(next(detections), frame.scale),
                estimator=self.estimator,
                model_version=self.model_version,
                estimated_at=self._clock(),
            )
            outcomes.append([estimate])
        return outcomes
