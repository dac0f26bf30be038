"""Pure core of the plate reader: position estimates + plate crops -> IdentityEstimates.

The plate reader runs no detector of its own: the flow's position estimator already found the
plate boxes and publishes them with its estimate of each frame (``PositionEstimate.detections``,
in the frame's full-size pixels). For each plate box: crop it from the full-resolution frame
(fetched only for frames with a plate box, :func:`needs_frame`), recognise the text
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
from schemas.estimates import Detection, IdentityEstimate, PositionEstimate, TrackObservation
from schemas.facility import FacilityConfig
from schemas.frames import FrameRef
from services.plate_ocr.livery import LiveryMatch, livery_model
from services.plate_ocr.plate_position import plate_observation
from services.plate_ocr.plate_text import PlateNormaliser, PlateReading
from services.runtime.frames import DecodedFrame, FrameOutcome, Image, Rejected, to_image_pixels

MIN_PLATE_HEIGHT_PX = 12
"""Plates fewer pixels high than this are not sent to OCR: the glyphs are not resolved."""
CROP_PAD = 0.08
"""Margin added around a plate box before recognition, as a share of its height."""
CORRECTION_PENALTY = 0.9
"""Plate confidence is multiplied by this per look-alike correction the text needed."""
LIVERY_DISAGREES = 0.6
"""Model confidence is multiplied by this when the livery says another model than the plate."""


PlateWork = tuple[PositionEstimate, DecodedFrame | None]
"""A frame's position estimate and the frame (None where it has no plate box to read)."""


def needs_frame(estimate: PositionEstimate) -> bool:
    """Whether the frame's pixels are needed: a plate box is in it (to read the plate, or, when
    it is too small, to judge the livery around it). Other frames are not fetched."""
    return any(d.cls == "plate" for d in estimate.detections)


def plate_work(
    positions: Sequence[FrameOutcome], frames: Sequence[DecodedFrame]
) -> list[PlateWork]:
    """The plate reader's input where the position estimator's outcomes of the same frames are
    at hand (evaluation, replay): each frame's position estimate with the frame."""
    work: list[PlateWork] = []
    for outcome, frame in zip(positions, frames, strict=True):
        if isinstance(outcome, Rejected):
            continue
        for estimate in outcome:
            if isinstance(estimate, PositionEstimate):
                work.append((estimate, frame))
    return work


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


def readable_size(det: Detection, image: Image) -> bool:
    """Whether the box is tall enough to read and lies (at least in part) in the image; a box
    outside it (a bad estimate) would give the recogniser an empty crop."""
    h, w = image.shape[:2]
    b = det.bbox
    inside = b.x2 > 0 and b.y2 > 0 and b.x1 < w - 1 and b.y1 < h - 1
    return inside and b.y2 - b.y1 >= MIN_PLATE_HEIGHT_PX


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
    """Reads the plates a batch of position estimates found and decides locomotive models."""

    def __init__(
        self,
        facility: Callable[[], FacilityConfig],
        recogniser: TextRecogniser,
        flow: str,
        estimator: str,
        min_plate_confidence: float,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._facility = facility
        self.recogniser = recogniser
        self.flow = flow
        self.estimator = estimator
        self.min_plate_confidence = min_plate_confidence
        self._clock = clock
        self._normaliser: tuple[int, PlateNormaliser] | None = None

    def self_test(self) -> None:
        """Read a known-good crop (a blank plate): raises when the OCR engine is broken, so a
        failure on one message can be told from a broken reader."""
        self.recogniser.recognise([np.full((32, 128, 3), 230, np.uint8)])

    def normaliser(self, facility: FacilityConfig) -> PlateNormaliser:
        """The plate normaliser for the current fleet (rebuilt when the config changes)."""
        key = id(facility)
        if self._normaliser is None or self._normaliser[0] != key:
            self._normaliser = (key, PlateNormaliser(facility.locomotive_models))
        return self._normaliser[1]

    def __call__(self, work: Sequence[PlateWork]) -> list[FrameOutcome]:
        """One outcome per estimate: an IdentityEstimate per plate box (or one saying none is
        seen), or Rejected for an unknown camera or a plate box without its frame."""
        facility = self._facility()
        cameras = {c.id: c for c in facility.cameras}
        # Each plate box in the pixels of the frame (published) and of its decoded image (read).
        plates: list[list[tuple[Detection, Detection]]] = []
        for estimate, frame in work:
            boxes = [d for d in estimate.detections if d.cls == "plate"]
            on_image = to_image_pixels(boxes, frame.scale) if frame is not None else []
            plates.append(list(zip(boxes, on_image, strict=False)))
        # All plates of the batch go to the recogniser at once (it batches internally).
        jobs: list[tuple[Image, Detection]] = []
        for (estimate, frame), found in zip(work, plates, strict=True):
            if frame is None or estimate.frame.camera_id not in cameras:
                continue
            for _, det in found:
                if readable_size(det, frame.image):
                    jobs.append((frame.image, det))
        texts = self.recogniser.recognise([plate_crop(i, d) for i, d in jobs]) if jobs else []
        read = {id(d): t for (_, d), t in zip(jobs, texts, strict=True)}
        normaliser = self.normaliser(facility)
        outcomes: list[FrameOutcome] = []
        for (estimate, frame), found in zip(work, plates, strict=True):
            ref = estimate.frame
            camera = cameras.get(ref.camera_id)
            if camera is None:
                outcomes.append(
                    Rejected(
                        f"camera {ref.camera_id!r} is not in the facility config; add it "
                        "so its frames can be read"
                    )
                )
                continue
            if not found and needs_frame(estimate):
                outcomes.append(Rejected("the frame of a plate box was not fetched"))
                continue
            if not found:
                outcomes.append([self._estimate(ref, _NO_PLATE, None, None)])
                continue
            assert frame is not None  # found is empty without it
            estimates = []
            # Boxes are in the frame's pixels; the camera's calibration may be at another size.
            scale = (camera.width / ref.width, camera.height / ref.height)
            for box, det in found:
                decision = self._decide(frame, det, read.get(id(det)), normaliser, facility)
                obs = plate_observation(box, camera, facility.tracks, scale)
                estimates.append(self._estimate(ref, decision, box, obs))
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
            reason = (
                f"plate too small to read ({px:.0f} px high, need {MIN_PLATE_HEIGHT_PX})"
                if px < MIN_PLATE_HEIGHT_PX
                else "plate box lies outside the frame (a bad position estimate)"
            )
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
