"""RapidOCR (PP-OCR ONNX models shipped in its wheel, offline) as a text recogniser.

Recognition only: the detector already found the plate, so RapidOCR's own text detection
(~0.6 s a frame on CPU) is not run; recognising a plate crop costs milliseconds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from services.runtime.estimator_service import EstimatorStartError
from services.runtime.frames import Image

log = logging.getLogger(__name__)


class OcrUnavailableError(EstimatorStartError):
    """The OCR engine cannot be loaded."""


class RapidTextRecogniser:
    """Line recognition with rapidocr-onnxruntime, batched over crops."""

    def __init__(self) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise OcrUnavailableError(
                f"the plate reader needs rapidocr-onnxruntime ({exc}); install depotwatch[ocr]"
            ) from None
        self._engine: Any = RapidOCR()

    @property
    def engine(self) -> Any:
        """The RapidOCR object (benchmarks call it directly as the bare baseline)."""
        return self._engine

    def recognise(self, crops: Sequence[Image]) -> list[tuple[str, float]]:
        """Text and confidence of each crop, in order."""
        crops = [c for c in crops]
        if not crops:
            return []
        results, _ = self._engine.text_rec(crops)
        return [(str(text), float(score)) for text, score in results]
