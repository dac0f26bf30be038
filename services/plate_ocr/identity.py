"""Pure core of the plate reader: detections + plate crops -> IdentityEstimates.

For each plate the detector found: crop it from the full-resolution frame, recognise the text
(the engine is passed in), normalise it against the fleet's plate patterns, and decide the
locomotive model from the plate series. When the plate cannot be read, the model still comes
from the visual check (livery colour around the plate), and the estimate says why the plate is
unreadable instead of guessing it. The plate itself is placed on the floor and the nearest track
(``plate_position``), so the reading can be attached to the locomotive standing there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np

from schemas.base import utc_now
from schemas.estimates import Detection, IdentityEstimate, TrackObservation
from schemas.facility import FacilityConfig
from schemas.frames import FrameRef
from services.plate_ocr.livery import LiveryMatch, livery_model
from services.plate_ocr.plate_position import plate_observation
from services.plate_ocr.plate_text import PlateNormaliser, PlateReading
from services.runtime.frames import DecodedFrame, FrameOutcome, Image, Rejected
from services.runtime.ports import BatchDetector

MIN_PLATE_HEIGHT_PX = 12
"""Plates fewer pixels high than this are not sent to OCR: the glyphs are not resolved."""
CROP_PAD = 0.08
"""Margin added around a plate box before recognition, as a share of its height."""
CORRECTION_PENALTY = 0.9
"""Plate confidence is multiplied by this per look-alike correction the text needed."""
LIVERY_DISAGREES = 0.6
"""Model confidence is multiplied by this when the livery says another model than the plate."""


class TextRecogniser(Protocol):
    """Reads one line of text from each crop: (text, confidence) per crop, in order."""

    def recognise(self, crops: Sequence[Image]) -> list[tuple[str, float]]:
        """Text and confidence of each crop."""
        ...


@dataclass(frozen=True)
class PlateDecision:
    """What was concluded about one plate (the fields of an IdentityEstimate)."""

    plate_text: str | None
    plate_confidence: float
    unreadable_reason: str | None
    locomotive_model: str | None
    model_confidence: float


def plate_crop(image: Image, det: Detection) -> Image:
    """The plate from the full-resolution frame, with a small margin."""
    h, w = image.shape[:2]
    box = det.bbox
    pad = CROP_PAD * (box.y2 - box.y1)
    x0, y0 = max(0, int(box.x1 - pad)), max(0, int(box.y1 - pad))
    x1, y1 = min(w, int(np.ceil(box.x2 + pad))), min(h, int(np.ceil(box.y2 + pad)))
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def cut_off(det: Detection, width: int, height: int, margin: float = 1.0) -> bool:
    """Whether the box touches the image border (the plate may continue outside)."""
    b = det.bbox
    return b.x1 <= margin or b.y1 <= margin or b.x2 >= width - margin or b.y2 >= height - margin


def decide(
    text: str | None,
    ocr_confidence: float,
    reading: PlateReading | str,
    livery: LiveryMatch | None,
    min_plate_confidence: float,
) -> PlateDecision:
    """Combine the OCR reading and the livery check into one decision.

    ``reading`` is the normalised plate, or why there is none. ``text`` is None when the plate
    was not sent to OCR at all.
    """
    if isinstance(reading, PlateReading):
        confidence = ocr_confidence * CORRECTION_PENALTY**reading.corrections
        if confidence >= min_plate_confidence:
            model_conf = confidence
            if livery is not None and livery.model != reading.model:
                model_conf *= LIVERY_DISAGREES
            return PlateDecision(
                plate_text=reading.text,
                plate_confidence=round(confidence, 4),
                unreadable_reason=None,
                locomotive_model=reading.model,
                model_confidence=round(model_conf, 4),
            )
        reason = (
            f"OCR confidence {confidence:.2f} for {reading.text!r} is below "
            f"min_plate_confidence {min_plate_confidence:.2f}"
        )
    else:
        reason = reading
    return PlateDecision(
        plate_text=None,
        plate_confidence=round(ocr_confidence, 4) if text is not None else 0.0,
        unreadable_reason=reason,
        locomotive_model=livery.model if livery is not None else None,
        model_confidence=livery.confidence if livery is not None else 0.0,
    )


class IdentityEstimator:
    """Reads plates and decides locomotive models for a batch of frames."""

    def __init__(
        self,
        facility: Callable[[], FacilityConfig],
        detector: BatchDetector,
        recogniser: TextRecogniser,
        flow: str,
        estimator: str,
        min_plate_confidence: float,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._facility = facility
        self.detector = detector
        self.recogniser = recogniser
        self.flow = flow
        self.estimator = estimator
        self.min_plate_confidence = min_plate_confidence
        self._clock = clock
        self._normaliser: tuple[int, PlateNormaliser] | None = None

    def normaliser(self, facility: FacilityConfig) -> PlateNormaliser:
        """The plate normaliser for the current fleet (rebuilt when the config changes)."""
        key = id(facility)
        if self._normaliser is None or self._normaliser[0] != key:
            self._normaliser = (key, PlateNormaliser(facility.locomotive_models))
        return self._normaliser[1]

    def __call__(self, frames: Sequence[DecodedFrame]) -> list[FrameOutcome]:
        """One outcome per frame: an IdentityEstimate per plate (or one saying none is seen)."""
        facility = self._facility()
        cameras = {c.id: c for c in facility.cameras}
        known = [f for f in frames if f.ref.camera_id in cameras]
        detected = self.detector.detect([f.image for f in known]) if known else []
        by_frame = dict(zip((id(f) for f in known), detected, strict=True))
        # All plates of the batch go to the recogniser at once (it batches internally).
        jobs: list[tuple[DecodedFrame, Detection]] = []
        for frame in known:
            for det in by_frame[id(frame)]:
                if det.cls == "plate" and det.bbox.y2 - det.bbox.y1 >= MIN_PLATE_HEIGHT_PX:
                    jobs.append((frame, det))
        texts = self.recogniser.recognise([plate_crop(f.image, d) for f, d in jobs]) if jobs else []
        read = {(id(f), id(d)): t for (f, d), t in zip(jobs, texts, strict=True)}
        normaliser = self.normaliser(facility)
        outcomes: list[FrameOutcome] = []
        for frame in frames:
            camera = cameras.get(frame.ref.camera_id)
            if camera is None:
                outcomes.append(
                    Rejected(
                        f"camera {frame.ref.camera_id!r} is not in the facility config; add it "
                        "so its frames can be read"
                    )
                )
                continue
            dets = by_frame[id(frame)]
            plates = [d for d in dets if d.cls == "plate"]
            if not plates:
                outcomes.append([self._estimate(frame.ref, _NO_PLATE, None, None)])
                continue
            estimates = []
            # Plates are read at full resolution; the scale only matters for odd frame sizes.
            sx, sy = frame.scale
            scale = (sx * camera.width / frame.ref.width, sy * camera.height / frame.ref.height)
            for det in plates:
                decision = self._decide(
                    frame, det, read.get((id(frame), id(det))), normaliser, facility
                )
                obs = plate_observation(det, camera, facility.tracks, scale)
                estimates.append(self._estimate(frame.ref, decision, det, obs))
            outcomes.append(estimates)
        return outcomes

    def _decide(
        self,
        frame: DecodedFrame,
        det: Detection,
        ocr: tuple[str, float] | None,
        normaliser: PlateNormaliser,
        facility: FacilityConfig,
    ) -> PlateDecision:
        livery = livery_model(frame.image, det.bbox, facility.locomotive_models)
        h, w = frame.image.shape[:2]
        if ocr is None:
            px = det.bbox.y2 - det.bbox.y1
            reason = f"plate too small to read ({px:.0f} px high, need {MIN_PLATE_HEIGHT_PX})"
            return decide(None, 0.0, reason, livery, self.min_plate_confidence)
        text, confidence = ocr
        result = normaliser.normalise(text)
        reading: PlateReading | str
        if isinstance(result, PlateReading):
            reading = result
        elif cut_off(det, w, h):
            reading = f"plate cut off by the image edge (read {text!r})"
        else:
            reading = result.reason
        return decide(text, confidence, reading, livery, self.min_plate_confidence)

    def _estimate(
        self,
        ref: FrameRef,
        decision: PlateDecision,
        det: Detection | None,
        obs: TrackObservation | None,
    ) -> IdentityEstimate:
        return IdentityEstimate(
            flow=self.flow,
            camera_id=ref.camera_id,
            frame=ref,
            estimator=self.estimator,
            estimated_at=self._clock(),
            plate_text=decision.plate_text,
            plate_confidence=decision.plate_confidence,
            unreadable_reason=decision.unreadable_reason,
            locomotive_model=decision.locomotive_model,
            model_confidence=decision.model_confidence,
            plate_box=det,
            observation=obs,
        )


_NO_PLATE = PlateDecision(
    plate_text=None,
    plate_confidence=0.0,
    unreadable_reason="no plate in view",
    locomotive_model=None,
    model_confidence=0.0,
)
