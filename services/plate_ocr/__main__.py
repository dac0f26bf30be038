"""``depotwatch plate-ocr --flow NAME``: number plates and locomotive models from frames."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import click

from services.plate_ocr.config import SERVICE, plate_ocr_config
from services.plate_ocr.ocr_engine import RapidTextRecogniser
from services.plate_ocr.service import plate_stream
from services.position_estimator.detector import YoloDetector
from services.runtime.estimator_service import estimator_options, run_estimator
from services.runtime.facility_watch import FacilityWatch
from services.runtime.frame_stream import FrameStream, Mode
from services.runtime.settings import Settings

log = logging.getLogger(__name__)


@click.command("plate-ocr")
@estimator_options
def plate_ocr_command(
    flow: str,
    config_path: Path | None,
    mode: str,
    weights: Path | None,
    frames_topic: str,
    max_batch: int | None,
) -> None:
    """Read plates in frames.v1, decide locomotive models, publish identities.<flow>.v1."""

    def build(settings: Settings, watch: FacilityWatch, path: Path) -> FrameStream:
        config = plate_ocr_config(
            watch.config, path, flow, settings, cast(Mode, mode), max_batch, weights, frames_topic
        )
        detector = YoloDetector(
            config.weights,
            config.imgsz,
            config.detector_confidence,
            config.device,
            config.max_batch,
        )
        recogniser = RapidTextRecogniser()
        log.info("starting", extra={"flow": flow, "mode": mode, "weights": str(config.weights)})
        detector.prepare()
        return plate_stream(settings, config, watch, detector, recogniser)

    run_estimator(SERVICE, flow, config_path, build)
