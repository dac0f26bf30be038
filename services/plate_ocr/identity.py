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

import threading
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
from services.runtime.matching import iou, xyxy

MIN_PLATE_HEIGHT_PX = 12
"""Plates fewer pixels high than this are not sent to OCR: the glyphs are not resolved."""
CROP_PAD = 0.08
"""Margin added around a plate box before recognition, as a share of its height."""
CORRECTION_PENALTY = 0.9
"""Plate confidence is multiplied by this per look-alike correction the text needed."""
LIVERY_DISAGREES = 0.6
"""Model confidence is multiplied by this when the livery says another model than the plate."""
MAX_PROMISED = 4096
"""Readings kept for frames not fetched, until they are handled (skipped ones fall out)."""
SAME_PLATE_IOU = 0.7
"""A plate box overlapping a box read before by at least this much (IoU) is the same plate
standing still: boxes of a standing plate jitter by a pixel or two, a plate that moved half its
width has IoU 0.33."""


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


@dataclass(frozen=True)
class _Reading:
    box: tuple[float, float, float, float]
    decision: PlateDecision
    at: datetime


class ReadingMemory:
    """Plates each camera read recently, so that a standing plate is not read again every frame.

    A plate box at the same place (IoU >= ``SAME_PLATE_IOU``) as a plate the same camera read
    at most ``reread_after_s`` earlier (by capture time) takes that reading; its frame is then
    not fetched. Only confident readings are kept, and a reading is not renewed by reuse: every
    plate in view is read again at least every ``reread_after_s``. 0 turns the memory off.
    """

    def __init__(self, reread_after_s: float) -> None:
        self.reread_after_s = reread_after_s
        self._read: dict[str, list[_Reading]] = {}

    def recall(self, camera_id: str, det: Detection, at: datetime) -> PlateDecision | None:
        """The reading of the same plate, if this camera read it recently enough."""
        box = xyxy(det.bbox)
        for reading in self._read.get(camera_id, ()):
            age = (at - reading.at).total_seconds()
            if 0 <= age <= self.reread_after_s and iou(box, reading.box) >= SAME_PLATE_IOU:
                return reading.decision
        return None

    def remember(
        self, camera_id: str, det: Detection, decision: PlateDecision, at: datetime
    ) -> None:
        """Keep a confident reading (others are read again on the next frame)."""
        if self.reread_after_s <= 0 or decision.plate_text is None:
            return
        box = xyxy(det.bbox)
        kept = [
            r
            for r in self._read.get(camera_id, ())
            if (at - r.at).total_seconds() <= self.reread_after_s  # newer ones stay too
            and iou(box, r.box) < SAME_PLATE_IOU
        ]
        self._read[camera_id] = [*kept, _Reading(box, decision, at)]


class IdentityEstimator:
    """Reads the plates a batch of position estimates found and decides locomotive models.

    With ``reread_after_s`` > 0 a standing plate is read once per that many seconds per camera
    (:class:`ReadingMemory`); :meth:`needs_frame` then says which frames must be fetched.
    """

    def __init__(
        self,
        facility: Callable[[], FacilityConfig],
        recogniser: TextRecogniser,
        flow: str,
        estimator: str,
        min_plate_confidence: float,
        clock: Callable[[], datetime] = utc_now,
        reread_after_s: float = 0.0,
    ) -> None:
        self._facility = facility
        self.memory = ReadingMemory(reread_after_s)
        # Frames not fetched because every plate box in them was recalled: the recalled
        # readings, kept for __call__ (the memory may have moved on by then). Written by the
        # fetch threads, read by the loop.
        self._promised: dict[tuple[str, int, datetime], list[PlateDecision]] = {}
        self._promised_lock = threading.Lock()
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

    def needs_frame(self, estimate: PositionEstimate) -> bool:
        """Whether the frame must be fetched: a plate box in it that was not read recently.

        When every plate box is recalled, those readings are what :meth:`__call__` will use
        for the frame (the decision made here binds, whatever the memory learns meanwhile).
        """
        boxes = [d for d in estimate.detections if d.cls == "plate"]
        if not boxes:
            return False
        ref = estimate.frame
        recalled = [self.memory.recall(ref.camera_id, d, ref.captured_at) for d in boxes]
        known = [r for r in recalled if r is not None]
        if len(known) < len(recalled):
            return True
        with self._promised_lock:
            self._promised[(ref.camera_id, ref.seq, ref.captured_at)] = known
            while len(self._promised) > MAX_PROMISED:  # frames skipped after the decision
                self._promised.pop(next(iter(self._promised)))
        return False

    def _recalled(
        self, estimate: PositionEstimate, boxes: Sequence[Detection], fetched: bool
    ) -> list[PlateDecision | None]:
        """Each plate box's recent reading: the one promised at fetch time for a frame that
        was not fetched, else what the memory holds now."""
        ref = estimate.frame
        with self._promised_lock:
            promised = self._promised.pop((ref.camera_id, ref.seq, ref.captured_at), None)
        if not fetched and promised is not None and len(promised) == len(boxes):
            return list(promised)
        return [self.memory.recall(ref.camera_id, b, ref.captured_at) for b in boxes]

    def __call__(self, work: Sequence[PlateWork]) -> list[FrameOutcome]:
        """One outcome per estimate: an IdentityEstimate per plate box (or one saying none is
        seen), or Rejected for an unknown camera or a plate box without its frame."""
        facility = self._facility()
        cameras = {c.id: c for c in facility.cameras}
        # Each plate box in the pixels of the frame (published) and of its decoded image (read,
        # None without the frame), and the recent reading of that plate, if any. Every recall
        # is made before any reading is remembered: as when the frames were fetched.
        plates: list[list[tuple[Detection, Detection | None, PlateDecision | None]]] = []
        for estimate, frame in work:
            ref = estimate.frame
            boxes = [d for d in estimate.detections if d.cls == "plate"]
            on_image = (
                to_image_pixels(boxes, frame.scale) if frame is not None else [None] * len(boxes)
            )
            recalled = self._recalled(estimate, boxes, frame is not None)
            plates.append(list(zip(boxes, on_image, recalled, strict=True)))
        # All plates of the batch go to the recogniser at once (it batches internally).
        jobs: list[tuple[Image, Detection]] = []
        for (estimate, frame), found in zip(work, plates, strict=True):
            if frame is None or estimate.frame.camera_id not in cameras:
                continue
            for _, det, known in found:
                if known is None and det is not None and readable_size(det, frame.image):
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
            if frame is None and any(known is None for _, _, known in found):
                outcomes.append(Rejected("the frame of a plate box was not fetched"))
                continue
            if not found:
                outcomes.append([self._estimate(ref, _NO_PLATE, None, None)])
                continue
            estimates = []
            # Boxes are in the frame's pixels; the camera's calibration may be at another size.
            scale = (camera.width / ref.width, camera.height / ref.height)
            for box, det, known in found:
                decision = known
                if decision is None:
                    assert frame is not None  # rejected above otherwise
                    assert det is not None
                    decision = self._decide(frame, det, read.get(id(det)), normaliser, facility)
                    self.memory.remember(ref.camera_id, box, decision, ref.captured_at)
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
